"""inetd mode with real legacy programs: /bin/cat, shell scripts, missing programs."""
import os
import socket
import threading

from harness import (CorralTest, children_of, connect, read_text, recv_all, recv_until, wait_until,
                     pid_alive)
from test_listen import ipv6_loopback

ENV_SCRIPT = """#!/bin/sh
echo "PROTO=$PROTO"
echo "REMOTE_ADDR=$REMOTE_ADDR"
echo "REMOTE_PORT=$REMOTE_PORT"
echo "TCPREMOTEIP=$TCPREMOTEIP"
echo "TCPREMOTEPORT=$TCPREMOTEPORT"
echo "TCPLOCALIP=$TCPLOCALIP"
echo "TCPLOCALPORT=$TCPLOCALPORT"
echo "LISTEN_FDS=${LISTEN_FDS:-unset} CORRAL_LOCK_FD=${CORRAL_LOCK_FD:-unset}"
printf "FDS="
# exec: the shell's own fds go; ls adds one of its own (the directory it reads).
exec ls /proc/self/fd
"""


class InetdTest(CorralTest):
    def start(self, command, listen=("127.0.0.1:0",), workers="{ start: 2, min_spare: 1, max_spare: 4, max: 8 }",
              extra="", name="legacy"):
        return self.start_job(name, command, listen, workers, extra, mode="inetd")

    def env_of(self, text):
        return dict(line.split("=", 1) for line in text.decode().splitlines() if "=" in line and " " not in line.split("=", 1)[0])

    def test_cat_is_an_echo_service(self):
        c = self.start('["/bin/cat"]')
        port = c.port(self.sbdir, "legacy")
        for _ in range(5):
            with connect(port) as s:
                s.sendall(b"line one\nline two\n")
                s.shutdown(socket.SHUT_WR)
                self.assertEqual(recv_all(s), b"line one\nline two\n")
        self.assertEqual(c.stop(), 0)

    def test_environment_and_fds_ipv4_ipv6_unix(self):
        script = self.write("env.sh", ENV_SCRIPT, 0o755)
        listens = ["127.0.0.1:0", f"unix:{self.tmp}/legacy.sock"] + (["[::1]:0"] if ipv6_loopback() else [])
        c = self.start(f'["{script}"]', listen=listens)
        port = c.port(self.sbdir, "legacy", 0)
        with connect(port) as s:
            local_port = s.getsockname()[1]
            out = recv_all(s)
        env = self.env_of(out)
        self.assertEqual(env["PROTO"], "TCP")
        self.assertEqual(env["REMOTE_ADDR"], "127.0.0.1")
        self.assertEqual(env["REMOTE_PORT"], str(local_port))
        self.assertEqual(env["TCPREMOTEIP"], "127.0.0.1")
        self.assertEqual(env["TCPREMOTEPORT"], str(local_port))
        self.assertEqual(env["TCPLOCALIP"], "127.0.0.1")
        self.assertEqual(env["TCPLOCALPORT"], str(port))
        # The connection on 0 and 1, stderr on 2, nothing else (the shell's own fd for
        # `ls` aside, which is the highest).
        fds = sorted(int(f) for f in out.decode().split("\nFDS=")[1].split())
        self.assertEqual(fds, [0, 1, 2, 3], out)
        self.assertIn(b"LISTEN_FDS=unset CORRAL_LOCK_FD=unset", out)
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(f"{self.tmp}/legacy.sock")
            env = self.env_of(recv_all(s))
        self.assertEqual(env["PROTO"], "UNIX")
        self.assertEqual(env.get("REMOTE_ADDR", ""), "")
        if len(listens) == 3:
            with connect(c.port(self.sbdir, "legacy", 2), "::1") as s:
                env = self.env_of(recv_all(s))
            self.assertEqual(env["PROTO"], "TCP")
            self.assertEqual(env["REMOTE_ADDR"], "::1")
            self.assertEqual(env["TCPLOCALIP"], "::1")
        self.assertEqual(c.stop(), 0)

    def test_each_program_leads_its_own_session_as_under_xinetd(self):
        # xinetd's children and systemd's Accept=yes instances each start a session; so
        # does corral's inetd program. With kernel.sched_autogroup_enabled (Debian's
        # default) a session is also its own CPU autogroup: programs sharing corral's
        # session would share one CPU share against the rest of a busy machine (3.8x
        # fewer connections/s than xinetd, docs/BENCHMARKS.md section 14).
        script = self.write("session.sh", """#!/bin/sh
read -r _ <&0
set -- $(sed 's/^.*) //' /proc/$$/stat)
echo "pid $$ pgid $3 sid $4 autogroup $(cat /proc/$$/autogroup 2>/dev/null | cut -d' ' -f1)"
""", 0o755)
        c = self.start(f'["{script}"]')
        port = c.port(self.sbdir, "legacy")
        with open(f"/proc/{c.pid}/stat") as f:
            corral_sid = int(f.read().rsplit(")", 1)[1].split()[3])
        # The autogroup file is empty for a process in the default autogroup (one whose
        # session line never called setsid(), as in some CI runners; /proc/1/autogroup
        # is empty too) and absent without CONFIG_SCHED_AUTOGROUP: the session check stands.
        corral_group = (read_text(f"/proc/{c.pid}/autogroup") or "").split()
        seen = set()
        for _ in range(3):
            with connect(port) as s:
                s.sendall(b"go\n")
                line = recv_all(s).decode()
            fields = line.split()
            pid, pgid, sid = int(fields[1]), int(fields[3]), int(fields[5])
            self.assertEqual((pgid, sid), (pid, pid), line)
            self.assertNotEqual(sid, corral_sid, line)
            if corral_group and len(fields) > 7:
                self.assertNotEqual(fields[7], corral_group[0], line)
            seen.add(sid)
        self.assertEqual(len(seen), 3)
        self.assertEqual(c.stop(), 0)

    def test_program_that_exits_without_reading(self):
        c = self.start('["/bin/true"]')
        port = c.port(self.sbdir, "legacy")
        for _ in range(10):
            with connect(port) as s:
                self.assertEqual(recv_all(s), b"")
        self.assertIsNone(c.proc.poll())
        self.assertEqual(c.stop(), 0)

    def test_missing_program_is_logged_backed_off_and_closes_cleanly(self):
        script = self.write("vanishing.sh", "#!/bin/sh\necho hi\n", 0o755)
        c = self.start(f'["{script}"]', workers="{ start: 1, min_spare: 1, max_spare: 2, max: 4 }",
                       extra="    restart: { backoff_max: 1s, max_failures: 0 }\n")
        port = c.port(self.sbdir, "legacy")
        os.unlink(script)
        for _ in range(3):
            with connect(port) as s:
                # Closed cleanly: an orderly EOF, not a reset.
                self.assertEqual(recv_all(s), b"")
        c.wait_log(r"cannot execute .*vanishing\.sh: No such file or directory", count=3, timeout=15)
        log = c.log_text()
        self.assertEqual(log.count("cannot execute"), 3, log)
        self.assertIn("backing off", log)
        self.assertEqual(c.stop(), 0)

    def test_many_parallel_clients_never_above_max(self):
        c = self.start('["/bin/cat"]', workers="{ start: 2, min_spare: 2, max_spare: 4, max: 6 }")
        port = c.port(self.sbdir, "legacy")
        results = []
        peak = [0]
        stop = threading.Event()

        def watch():
            # A sampler of the peak, every 5 ms until the clients are done.
            while not stop.wait(0.005):
                peak[0] = max(peak[0], len(children_of(c.pid)))

        def client(i):
            with connect(port, timeout=20) as s:
                msg = f"client {i}\n".encode()
                s.sendall(msg)
                s.shutdown(socket.SHUT_WR)
                results.append(recv_all(s) == msg)

        watcher = threading.Thread(target=watch)
        watcher.start()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        stop.set()
        watcher.join(timeout=5)
        self.assertEqual(results.count(True), 40)
        self.assertLessEqual(peak[0], 6)
        self.assertEqual(c.stop(), 0)

    def test_max_bounds_programs_and_extra_connections_wait(self):
        c = self.start('["/bin/cat"]', workers="{ start: 2, min_spare: 1, max_spare: 2, max: 2 }")
        port = c.port(self.sbdir, "legacy")
        held = [connect(port) for _ in range(2)]
        for s in held:
            s.sendall(b"held\n")
            self.assertEqual(recv_until(s), b"held\n")
        wait_until(lambda: c.job(self.sbdir, "legacy")["busy"] == 2, log=c)
        waiting = connect(port)  # accepted by the kernel into the backlog, not refused
        waiting.sendall(b"waited\n")
        waiting.settimeout(0.5)
        with self.assertRaises(socket.timeout):
            waiting.recv(10)
        held[0].close()
        waiting.settimeout(10)
        self.assertEqual(recv_until(waiting), b"waited\n")
        waiting.close()
        held[1].close()
        self.assertEqual(c.stop(), 0)

    def test_max_per_source_refuses_and_logs(self):
        c = self.start('["/bin/cat"]', workers="{ start: 3, min_spare: 2, max_spare: 4, max: 8 }",
                       extra="    max_per_source: 2\n")
        port = c.port(self.sbdir, "legacy")
        held = [connect(port) for _ in range(2)]
        for s in held:
            s.sendall(b"x\n")
            self.assertEqual(recv_until(s), b"x\n")
        with connect(port) as third:
            self.assertEqual(recv_all(third), b"")
        c.wait_log(r"refused 127\.0\.0\.1:\d+: 2 connections from that address already \(max_per_source 2\)")
        held[0].close()
        wait_until(lambda: c.job(self.sbdir, "legacy")["busy"] <= 1, log=c)
        with connect(port) as again:
            again.sendall(b"z\n")
            self.assertEqual(recv_until(again), b"z\n")
        held[1].close()
        self.assertEqual(c.stop(), 0)

    def test_client_that_disconnects_early(self):
        c = self.start('["/bin/cat"]')
        port = c.port(self.sbdir, "legacy")
        for _ in range(20):
            s = connect(port)
            s.close()
        with connect(port) as s:
            s.sendall(b"still here\n")
            self.assertEqual(recv_until(s), b"still here\n", c.log_text())
        self.assertEqual(c.stop(), 0)

    def test_acceptors_are_small_named_processes(self):
        # An idle acceptor is corral's small static acceptor, named after its job in ps,
        # not a copy of the supervisor; the program replaces it in the same pid.
        c = self.start('["/bin/cat"]', workers="{ start: 3, min_spare: 1, max_spare: 4, max: 8 }")
        job = wait_until(lambda: (lambda j: j if j["idle"] >= 3 else None)(c.job(self.sbdir, "legacy")),
                         what="3 idle acceptors", log=c)
        for w in job["workers"]:
            with open(f"/proc/{w['pid']}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            self.assertEqual(argv[0], b"corral-inetd: legacy")
            with open(f"/proc/{w['pid']}/status") as f:
                rss_kb = int(next(line for line in f if line.startswith("VmRSS:")).split()[1])
            self.assertLess(rss_kb, 1024, "an acceptor should be far smaller than the supervisor")
        with connect(c.port(self.sbdir, "legacy")) as s:
            s.sendall(b"x\n")
            self.assertEqual(recv_until(s), b"x\n")
            busy = wait_until(lambda: [w for w in c.job(self.sbdir, "legacy")["workers"] if w["state"] == "busy"] or None,
                              what="a busy slot", log=c)
            self.assertEqual(os.readlink(f"/proc/{busy[0]['pid']}/exe"), os.path.realpath("/bin/cat"))
        self.assertEqual(c.stop(), 0)

    def test_command_line_inetd(self):
        c = self.corral(["run", "--inetd", "--listen", "127.0.0.1:0", "--scoreboard-dir", self.sbdir, "--", "/bin/cat"])
        c.wait_idle(self.sbdir, "cat", 1)
        with connect(c.port(self.sbdir, "cat")) as s:
            s.sendall(b"cli\n")
            self.assertEqual(recv_until(s), b"cli\n")
        self.assertEqual(c.stop(), 0)
