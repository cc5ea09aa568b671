"""Drop-in compatibility (issue 19): programs written for other launchers run unchanged
under corral. Real programs from Debian's packages, driven by real clients: starman
(Server::Starter's SERVER_STARTER_PORT), a libfcgi responder (fastcgi: true) queried by
cgi-fcgi and by lighttpd's mod_fastcgi, an einhorn-style worker (EINHORN_FD_*), uvicorn
through --fd $(corral.sockets.NAME). Each test skips, naming the Debian package, when the
package is missing; scripts/deps.sh installs them. Also: the environment exactly as each
convention writes it, `corral check` messages, and every corral snippet of
docs/MIGRATING.md passing `corral check`."""
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import unittest

from harness import (BUILD, CorralTest, HERE, PROBE, PYTHON, SOURCE, connect, pid_alive,
                     recv_all, wait_until)

FCGI_HELLO = os.path.join(BUILD, "tests", "fcgi-hello")
EINHORN_WORKER = os.path.join(HERE, "einhorn_worker.py")
SD_LAUNCHER = os.path.join(HERE, "sd_launcher.py")
MIGRATING = os.path.join(SOURCE, "docs", "MIGRATING.md")


def program(test, name, package):
    """The path of `name` in PATH (or absolute), or skips the test naming the package."""
    path = name if os.path.isabs(name) else shutil.which(name)
    if not path or not os.access(path, os.X_OK):
        test.skipTest(f"{name} not found: install Debian's {package} (scripts/deps.sh)")
    return path


def http_get(port, path="/", host="127.0.0.1", timeout=10):
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class CompatTest(CorralTest):
    def run_job(self, name, body):
        """Runs one job (YAML under `jobs:`, indented four spaces) and returns the Corral."""
        config = f"scoreboard_dir: {self.sbdir}\njobs:\n  {name}:\n{body}"
        return self.corral(["run", "{config}"], config=config)

    def listeners(self, c, name):
        job = wait_until(lambda: c.job(self.sbdir, name), what="status", log=c)
        return job["listeners"]

    def running(self, c, name, count):
        """Waits for `count` running copies; returns their pids."""
        def ready():
            job = c.job(self.sbdir, name)
            if not job:
                return None
            pids = [w["pid"] for w in job["workers"] if w["state"] == "running"]
            return pids if len(pids) >= count else None
        return wait_until(ready, timeout=20, what=f"{count} running copies of {name}", log=c)

    def probe_reports(self, probe_dir, count, c):
        return wait_until(lambda: (lambda r: r if len(r) >= count else None)(self.probes(probe_dir)),
                          timeout=20, what=f"{count} probe reports", log=c)

    def probe_dir(self):
        d = os.path.join(self.tmp, "probes")
        os.makedirs(d, exist_ok=True)
        return d


class EnvironmentTest(CompatTest):
    """The variables exactly as einhorn and Server::Starter write them."""

    def test_all_conventions_describe_the_same_fds(self):
        probes = self.probe_dir()
        v6 = ipv6_loopback()
        sock = os.path.join(self.tmp, "app.sock")
        listen = ['"127.0.0.1:0"'] + (['"[::1]:0"'] if v6 else []) + ['":0"', f'"unix:{sock}"']
        c = self.run_job("probe", f"""    command: ["{PYTHON}", "{PROBE}"]
    mode: plain
    listen: [{", ".join(listen)}]
    workers: {{ start: 2 }}
    env_conventions: [systemd, einhorn, server_starter]
    env: {{ PROBE_DIR: "{probes}" }}
""")
        reports = self.probe_reports(probes, 2, c)
        shown = self.listeners(c, "probe")
        ports = [int(a.rsplit(":", 1)[1]) for a in shown if not a.startswith("unix:")]
        expected = [f"127.0.0.1:{ports[0]}=3"]
        if v6:
            expected.append(f"[::1]:{ports[1]}=4")
        expected += [f"{ports[-1]}={len(expected) + 3}", f"{sock}={len(expected) + 4}"]
        n = len(listen)
        slots = set()
        for report in reports.values():
            env = report["env"]
            self.assertEqual(env["SERVER_STARTER_PORT"], ";".join(expected))
            self.assertEqual(env["SERVER_STARTER_GENERATION"], "1")
            self.assertEqual(env["EINHORN_FD_COUNT"], str(n))
            for i in range(n):
                self.assertEqual(env[f"EINHORN_FD_{i}"], str(3 + i))
            self.assertNotIn("EINHORN_MASTER_PID", env)
            # The list only adds: systemd's variables stay.
            self.assertEqual(env["LISTEN_FDS"], str(n))
            self.assertEqual(env["LISTEN_PID"], str(report["pid"]))
            self.assertEqual(sorted(int(f) for f in report["fds"]), list(range(3 + n)))
            slots.add(env["EINHORN_CHILD_INDEX"])
        self.assertEqual(slots, {"0", "1"})
        self.assertEqual(c.stop(), 0)

    def test_default_is_systemd_alone(self):
        probes = self.probe_dir()
        c = self.run_job("probe", f"""    command: ["{PYTHON}", "{PROBE}"]
    mode: plain
    listen: ["127.0.0.1:0"]
    workers: {{ start: 1 }}
    env: {{ PROBE_DIR: "{probes}" }}
""")
        env = list(self.probe_reports(probes, 1, c).values())[0]["env"]
        self.assertEqual(env["LISTEN_FDS"], "1")
        self.assertFalse([k for k in env if k.startswith(("EINHORN_", "SERVER_STARTER_"))])
        self.assertEqual(c.stop(), 0)

    def test_fastcgi_puts_the_listener_on_fd_0_and_nothing_else(self):
        probes = self.probe_dir()
        c = self.run_job("probe", f"""    command: ["{PYTHON}", "{PROBE}"]
    mode: plain
    listen: ["127.0.0.1:0"]
    workers: {{ start: 1 }}
    fastcgi: true
    env: {{ PROBE_DIR: "{probes}" }}
""")
        report = list(self.probe_reports(probes, 1, c).values())[0]
        self.assertEqual(sorted(report["fds"]), ["0", "1", "2"])
        self.assertTrue(report["fds"]["0"].startswith("socket:"), report["fds"])
        self.assertFalse([k for k in report["env"] if k.startswith("LISTEN_")])
        self.assertEqual(c.stop(), 0)

    def test_substitution_gives_the_fd_of_the_named_listener(self):
        probes = self.probe_dir()
        sock = os.path.join(self.tmp, "admin.sock")
        c = self.run_job("probe", f"""    command: ["{PYTHON}", "{PROBE}", "--fd", "$(corral.sockets.web)",
              "--admin=$(corral.sockets.admin)", "$HOME", "$(date)"]
    mode: plain
    listen: [{{ address: "unix:{sock}", name: admin }}, {{ address: "127.0.0.1:0", name: web }}]
    workers: {{ start: 1 }}
    env: {{ PROBE_DIR: "{probes}" }}
""")
        report = list(self.probe_reports(probes, 1, c).values())[0]
        self.assertEqual(report["argv"][1:], ["--fd", "4", "--admin=3", "$HOME", "$(date)"])
        self.assertEqual(c.stop(), 0)


class StarmanTest(CompatTest):
    """starman (Debian starman) takes SERVER_STARTER_PORT through Net::Server::SS::PreFork."""

    def test_starman_serves_a_psgi_app_on_corrals_sockets(self):
        starman = program(self, "starman", "starman")
        app = self.write("app.psgi", """my $app = sub {
    return [200, ['Content-Type' => 'text/plain'],
            ["hello from starman $$ port $ENV{SERVER_STARTER_PORT}\\n"]];
};
""")
        c = self.run_job("psgi", f"""    command: ["{starman}", "--workers", "2", "{app}"]
    mode: plain
    listen: ["127.0.0.1:0", "127.0.0.2:0"]
    workers: {{ start: 1 }}
    env_conventions: [server_starter]
""")
        shown = self.listeners(c, "psgi")
        ports = [int(a.rsplit(":", 1)[1]) for a in shown]
        self.running(c, "psgi", 1)
        # Net::Server::SS::PreFork unpacks every socket as IPv4 (sockaddr_in), so starman
        # gets IPv4 listeners here; docs/MIGRATING.md says so.
        for host, port in zip(("127.0.0.1", "127.0.0.2"), ports):
            result = wait_until(lambda: self.try_get(port, host), timeout=30,
                                what=f"starman on port {port}", log=c)
            self.assertEqual(result[0], 200)
            self.assertIn(f"port 127.0.0.1:{ports[0]}=3;127.0.0.2:{ports[1]}=4", result[1])
        self.assertEqual(c.stop(), 0)

    @staticmethod
    def try_get(port, host="127.0.0.1"):
        try:
            return http_get(port, host=host)
        except OSError:
            return None


class FastCgiTest(CompatTest):
    """A libfcgi responder (Debian libfcgi-dev) with `fastcgi: true`, queried by
    cgi-fcgi (libfcgi-bin) and by lighttpd's mod_fastcgi (lighttpd)."""

    def start_responder(self, address, copies=2):
        if not os.access(FCGI_HELLO, os.X_OK):
            self.skipTest("build/tests/fcgi-hello not built: install Debian's libfcgi-dev "
                          "(scripts/deps.sh) and reconfigure")
        c = self.run_job("fcgi", f"""    command: ["{FCGI_HELLO}"]
    mode: plain
    listen: ["{address}"]
    workers: {{ start: {copies} }}
    fastcgi: true
""")
        self.running(c, "fcgi", copies)
        return c

    def cgi_fcgi(self, target, query):
        env = dict(os.environ, REQUEST_METHOD="GET", QUERY_STRING=query, SCRIPT_NAME="/hello",
                   SERVER_PROTOCOL="HTTP/1.1", GATEWAY_INTERFACE="CGI/1.1")
        return subprocess.run([program(self, "cgi-fcgi", "libfcgi-bin"), "-bind", "-connect", target],
                              capture_output=True, text=True, timeout=20, env=env,
                              stdin=subprocess.DEVNULL)

    def check_body(self, body, query):
        self.assertIn("hello from fastcgi\n", body)
        self.assertIn(f"query={query}\n", body)
        # What the responder saw at start: fds 0, 1, 2 only, fd 0 blocking, no LISTEN_*.
        self.assertIn("fds=0,1,2\n", body)
        self.assertIn("fd0_nonblock=0\n", body)
        self.assertIn("listen_fds=unset\n", body)

    def test_cgi_fcgi_over_tcp_and_unix(self):
        program(self, "cgi-fcgi", "libfcgi-bin")
        c = self.start_responder("127.0.0.1:0")
        port = int(self.listeners(c, "fcgi")[0].rsplit(":", 1)[1])
        for i in range(6):
            out = self.cgi_fcgi(f"127.0.0.1:{port}", f"n={i}")
            self.assertEqual(out.returncode, 0, out.stderr + c.log_text())
            self.assertIn("Content-Type: text/plain", out.stdout)
            self.check_body(out.stdout, f"n={i}")
        self.assertEqual(c.stop(), 0)
        sock = os.path.join(self.tmp, "fcgi.sock")
        c = self.start_responder(f"unix:{sock}", copies=1)
        out = self.cgi_fcgi(sock, "over=unix")
        self.assertEqual(out.returncode, 0, out.stderr + c.log_text())
        self.check_body(out.stdout, "over=unix")
        self.assertEqual(c.stop(), 0)

    def test_lighttpd_mod_fastcgi_in_front(self):
        lighttpd = program(self, "/usr/sbin/lighttpd", "lighttpd")
        sock = os.path.join(self.tmp, "fcgi.sock")
        c = self.start_responder(f"unix:{sock}")
        # lighttpd takes its HTTP socket from us the systemd way (sd_launcher), so that
        # its port is one the kernel chose.
        http_sock, port = self.loopback_listener(64)
        docroot = os.path.join(self.tmp, "www")
        os.makedirs(docroot)
        conf = self.write("lighttpd.conf", f"""server.document-root = "{docroot}"
server.bind = "127.0.0.1"
server.port = {port}
server.systemd-socket-activation = "enable"
server.errorlog = "{self.tmp}/lighttpd.err"
server.modules = ("mod_fastcgi")
fastcgi.server = ("/app" => (("socket" => "{sock}", "check-local" => "disable")))
""")
        proc = subprocess.Popen([PYTHON, SD_LAUNCHER, "--fds", str(http_sock.fileno()), "--",
                                 lighttpd, "-D", "-f", conf], pass_fds=[http_sock.fileno()],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.STDOUT)
        self.track_pid(proc.pid)
        self.addCleanup(proc.wait, 10)
        first = wait_until(lambda: self.get(port, "/app?via=lighttpd"),
                           timeout=20, what="lighttpd answering", log=c)
        self.assertEqual(first[0], 200, first[1])
        self.check_body(first[1], "via=lighttpd")
        pids = set()
        for i in range(20):
            status, body = self.get(port, f"/app?i={i}")
            self.assertEqual(status, 200, body)
            pids.add(re.search(r"pid=(\d+)", body).group(1))
        self.assertLessEqual(len(pids), 2)
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
        self.assertEqual(c.stop(), 0)

    @staticmethod
    def get(port, path):
        try:
            return http_get(port, path)
        except OSError:
            return None


class EinhornTest(CompatTest):
    """An einhorn-style worker reading EINHORN_FD_0 (einhorn itself is not in Debian),
    under a SIGUSR2 binary upgrade too."""

    def ask(self, port):
        with connect(port) as s:
            return recv_all(s).decode()

    def test_einhorn_worker_serves_and_survives_an_upgrade(self):
        c = self.run_job("ein", f"""    command: ["{PYTHON}", "{EINHORN_WORKER}"]
    mode: plain
    listen: ["127.0.0.1:0"]
    workers: {{ start: 2 }}
    env_conventions: [einhorn]
""")
        port = int(self.listeners(c, "ein")[0].rsplit(":", 1)[1])
        pids = set(self.running(c, "ein", 2))
        seen = {}

        def both_children():
            line = self.ask(port)
            m = re.match(r"einhorn child (\d+) pid (\d+) fds 3 master unset\n$", line)
            self.assertTrue(m, line)
            seen[m.group(1)] = int(m.group(2))
            return set(seen) == {"0", "1"}
        wait_until(both_children, timeout=20, what="answers from both copies", log=c)
        self.assertEqual(set(seen.values()), pids)

        c.signal(signal.SIGUSR2)
        c.wait_log(r"binary upgrade: took over 1 job\(s\) and 1 listener\(s\)")
        for _ in range(10):
            self.assertIn("einhorn child", self.ask(port))
        self.assertEqual(set(self.running(c, "ein", 2)), pids)  # the same copies serve
        # The upgraded image starts a replacement with the same variables.
        victim = seen["0"]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: not pid_alive(victim), what="the copy gone")
        new = wait_until(lambda: (lambda p: p if p and victim not in p else None)(
            set(self.running(c, "ein", 2))), timeout=20, what="a replacement copy", log=c)
        replacement = (new - pids).pop()
        wait_until(lambda: f"einhorn child 0 pid {replacement} fds 3 master unset" in self.ask(port),
                   timeout=20, what="the replacement answering as child 0", log=c)
        self.assertEqual(c.stop(), 0)


class UvicornTest(CompatTest):
    """uvicorn (Debian uvicorn) given its socket as `--fd $(corral.sockets.NAME)`."""

    def test_uvicorn_with_fd_substitution(self):
        uvicorn = program(self, "uvicorn", "uvicorn")
        self.write("app.py", """async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello from uvicorn\\n"})
""")
        admin = os.path.join(self.tmp, "admin.sock")
        c = self.run_job("asgi", f"""    command: ["{uvicorn}", "--app-dir", "{self.tmp}", "--fd", "$(corral.sockets.web)", "app:app"]
    mode: plain
    listen: [{{ address: "unix:{admin}", name: admin }}, {{ address: "127.0.0.1:0", name: web }}]
    workers: {{ start: 1 }}
""")
        port = int(self.listeners(c, "asgi")[1].rsplit(":", 1)[1])
        result = wait_until(lambda: FastCgiTest.get(port, "/"), timeout=30, what="uvicorn", log=c)
        self.assertEqual(result, (200, "hello from uvicorn\n"))
        with open(f"/proc/{self.running(c, 'asgi', 1)[0]}/cmdline") as f:
            self.assertIn("--fd\x004\x00app:app", f.read())
        self.assertEqual(c.stop(), 0)


class CheckTest(CompatTest):
    """What `corral check` says about the new keys."""

    def check(self, body):
        path = self.write("check.yaml", f"jobs:\n  web:\n{body}")
        return path, self.run_cli(["check", path])

    def test_errors_name_file_line_column_and_exit_2(self):
        path, out = self.check("""    command: ["/bin/cat", "--fd", "$(corral.sockets.nope)"]
    mode: plain
    listen: ["127.0.0.1:0", "127.0.0.1:0"]
    fastcgi: true
""")
        self.assertEqual(out.returncode, 2, out.stdout + out.stderr)
        self.assertIn(f'{path}:3:35: job "web": $(corral.sockets.nope): the job has no listener '
                      f'named "nope" (its listeners: web)', out.stderr)
        self.assertIn(f'{path}:6:14: job "web": fastcgi: true needs exactly one listener (it goes '
                      f'on fd 0), not 2', out.stderr)
        path, out = self.check("""    command: ["/bin/cat", "$(corral.sockets.web)"]
    listen: ["127.0.0.1:0", "127.0.0.1:0"]
""")
        self.assertEqual(out.returncode, 2)
        self.assertIn(f'{path}:3:27: job "web": $(corral.sockets.web) stands for 2 listeners',
                      out.stderr)
        path, out = self.check("""    command: ["/bin/sh", "-c", "echo $HOME"]
    mode: plain
    listen: ["127.0.0.1:0"]
    env_conventions: [systemd, einhorn, server_starter]
""")
        self.assertEqual(out.returncode, 0, out.stderr)

    def test_systemd_name_with_several_sockets_is_refused_at_run(self):
        # Under a socket unit corral reads its file while LISTEN_FDNAMES is still set, so
        # a systemd:NAME standing for two sockets is refused before anything starts.
        a, _ = self.loopback_listener(8)
        b, _ = self.loopback_listener(8)
        config = f"""scoreboard_dir: {self.sbdir}
jobs:
  web:
    command: ["{PYTHON}", "{PROBE}", "--fd", "$(corral.sockets.web)"]
    mode: plain
    listen: ["systemd:web"]
"""
        c = self.corral(["run", "{config}"], config=config,
                        launcher=[PYTHON, SD_LAUNCHER, "--fds", f"{a.fileno()},{b.fileno()}",
                                  "--names", "web:web", "--"],
                        pass_fds=[a.fileno(), b.fileno()])
        self.assertEqual(c.wait_exit(), 2)
        line = config.splitlines()[3]
        column = line.index('"$(corral.sockets.web)"') + 1
        self.assertIn(f'{c.config_path}:4:{column}: job "web": $(corral.sockets.web) stands for 2 sockets '
                      f'systemd passed as "web" (LISTEN_FDNAMES)', c.log_text())

    def test_every_snippet_of_migrating_md_passes_check(self):
        with open(MIGRATING) as f:
            text = f.read()
        snippets = re.findall(r"```yaml\n(.*?)```", text, re.S)
        self.assertGreaterEqual(len(snippets), 8)
        for i, snippet in enumerate(snippets):
            with self.subTest(snippet=i, first_line=snippet.splitlines()[0]):
                d = os.path.join(self.tmp, f"snippet{i}")
                os.makedirs(d)
                # Programs the guide names by a relative path are the user's own: stand-ins.
                for prog in set(re.findall(r'command: \["?(\./[^",\] ]+)', snippet)):
                    stub = os.path.join(d, prog)
                    os.makedirs(os.path.dirname(stub), exist_ok=True)
                    with open(stub, "w") as f:
                        f.write("#!/bin/sh\nexit 0\n")
                    os.chmod(stub, 0o755)
                path = os.path.join(d, "corral.yaml")
                with open(path, "w") as f:
                    f.write(snippet)
                out = self.run_cli(["check", path])
                self.assertEqual(out.returncode, 0, f"snippet {i}:\n{snippet}\n{out.stderr}")


if __name__ == "__main__":
    unittest.main()
