"""Metrics and health (docs/METRICS.md): the endpoint on the supervisor's loop, the
names of PRODUCT.md checked by the real promtool, listen-queue depth for TCP and unix
listeners, the textfile, `status --check`, /readyz and /healthz, counters across
SIGHUP and SIGUSR2, hostile scrapers, and a real Prometheus server scraping corral."""
import json
import os
import re
import resource
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.parse

from harness import BUILD, CorralTest, PROBE, PYTHON, connect, recv_until, wait_until

ECHO = os.path.join(BUILD, "examples", "echo")
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")


def http(address, path, method="GET", timeout=10.0):
    """One request to the metrics listener (a port on 127.0.0.1, or a unix socket path):
    (status, headers dict, body bytes)."""
    if isinstance(address, int):
        s = socket.create_connection(("127.0.0.1", address), timeout=timeout)
    else:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(address)
    with s:
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: corral\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
    return status, headers, body


def samples(text):
    """{(name, frozenset(labels)): value} of an exposition."""
    out = {}
    rx = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = rx.match(line)
        assert m, line
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def value(text, name, **labels):
    return samples(text).get((name, frozenset(labels.items())))


class MetricsTest(CorralTest):
    def start(self, extra_top="", job_extra="", listen=('127.0.0.1:0',), workers="{ start: 2, min_spare: 1, max_spare: 4, max: 4 }",
              metrics_listen="127.0.0.1:0", command=None, name="web"):
        command = command or f'["{ECHO}"]'
        listen_yaml = ", ".join(f'"{a}"' for a in listen)
        metrics = f'metrics: {{ listen: "{metrics_listen}" }}\n' if metrics_listen else ""
        config = f"""
scoreboard_dir: {self.sbdir}
{metrics}{extra_top}
jobs:
  {name}:
    command: {command}
    listen: [{listen_yaml}]
    workers: {workers}
{job_extra}"""
        c = self.corral(["run", "{config}"], config=config)
        return c

    def metrics_address(self, c, count=1):
        c.wait_log(r"metrics: serving /metrics, /healthz and /readyz on ", count=count)
        found = re.findall(r"metrics: serving /metrics, /healthz and /readyz on (\S+)", c.log_text())
        addr = found[-1]
        if addr.startswith("unix:"):
            return addr[5:]
        return int(addr.rsplit(":", 1)[1])

    def scrape(self, address):
        status, headers, body = http(address, "/metrics")
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], "text/plain; version=0.0.4; charset=utf-8")
        return body.decode()

    def promtool_check(self, text):
        self.assertIsNotNone(PROMTOOL, "promtool is missing: run scripts/deps.sh")
        out = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                             text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertEqual(out.stdout + out.stderr, "", "promtool warnings")

    # ------------------------------------------------------------------ endpoint

    def test_endpoint_serves_promtool_clean_metrics_and_probes(self):
        c = self.start(listen=("127.0.0.1:0", f"unix:{self.tmp}/web.sock"))
        port = self.metrics_address(c)
        c.wait_idle(self.sbdir, "web", 2)
        job = c.job(self.sbdir, "web")
        tcp, unix = job["listeners"]
        # Serve two connections so the totals move.
        for _ in range(2):
            s = connect(int(tcp.rsplit(":", 1)[1]))
            s.sendall(b"hi\n")
            self.assertEqual(recv_until(s), b"hi\n")
            s.close()
        text = wait_until(lambda: (lambda t: t if value(t, "corral_pool_connections_accepted_total", pool="web") == 2 else None)(
            self.scrape(port)), what="2 accepted connections")
        self.promtool_check(text)
        self.assertEqual(value(text, "corral_build_info", version="0.1.0",
                               commit=re.search(r'commit="([^"]*)"', text).group(1)), 1)
        self.assertEqual(value(text, "corral_generation"), 1)
        self.assertEqual(value(text, "corral_pool_min_spare", pool="web"), 1)
        self.assertEqual(value(text, "corral_pool_max_spare", pool="web"), 4)
        self.assertEqual(value(text, "corral_pool_max_workers", pool="web"), 4)
        self.assertEqual(value(text, "corral_pool_backoff_active", pool="web"), 0)
        self.assertGreaterEqual(value(text, "corral_worker_spawns_total", pool="web"), 2)
        self.assertGreaterEqual(value(text, "corral_workers", pool="web", state="idle"), 1)
        for listener in (tcp, unix):
            self.assertEqual(value(text, "corral_listener_queue_length", pool="web", listener=listener), 0)
            self.assertEqual(value(text, "corral_listener_queue_capacity", pool="web", listener=listener), 1024)
        self.assertEqual(sum(v for (n, l), v in samples(text).items() if n == "corral_slot_requests_total"), 2)
        rss = [v for (n, l), v in samples(text).items() if n == "corral_slot_resident_memory_bytes"]
        workers = sum(v for (n, l), v in samples(text).items() if n == "corral_workers")
        self.assertGreaterEqual(workers, 2)
        self.assertEqual(len(rss), workers)  # one per live worker's slot
        self.assertTrue(any(v > 0 for v in rss))  # (a worker exiting just now reads 0)
        for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
                     "process_max_fds", "process_start_time_seconds", "process_virtual_memory_bytes"):
            self.assertIn(f"\n{name} ", text)
        self.assertNotIn("job=", text)
        self.assertNotIn("instance=", text)
        self.assertNotIn("pid", re.sub(r"^#.*$", "", text, flags=re.M))

        self.assertEqual(http(port, "/healthz")[0:3:2], (200, b"ok\n"))
        self.assertEqual(http(port, "/readyz")[0:3:2], (200, b"ready\n"))
        self.assertEqual(http(port, "/nope")[0], 404)
        self.assertEqual(http(port, "/metrics", method="POST")[0], 405)
        status, headers, body = http(port, "/metrics", method="HEAD")
        self.assertEqual((status, body), (200, b""))
        self.assertGreater(int(headers["content-length"]), 1000)
        out = self.run_cli(["status", "--scoreboard-dir", self.sbdir, "--check"])
        self.assertEqual((out.returncode, out.stdout), (0, ""), out.stderr)
        self.assertEqual(c.stop(), 0)

    def test_metrics_on_a_unix_socket_removed_at_exit(self):
        path = os.path.join(self.tmp, "metrics.sock")
        c = self.start(metrics_listen=f"unix:{path}")
        self.assertEqual(self.metrics_address(c), path)
        self.promtool_check(self.scrape(path))
        self.assertEqual(http(path, "/healthz")[0], 200)
        self.assertEqual(c.stop(), 0)
        self.assertFalse(os.path.exists(path))

    def test_metrics_address_in_use_fails_the_start_with_exit_1(self):
        sock, port = self.loopback_listener(8)
        c = self.start(metrics_listen=f"127.0.0.1:{port}")
        self.assertEqual(c.wait_exit(), 1)
        self.assertIn(f"bind 127.0.0.1:{port}: Address already in use", c.log_text())
        self.assertEqual(os.listdir(self.sbdir) if os.path.isdir(self.sbdir) else [], [])

    def test_a_reload_moves_the_endpoint_or_fails_keeping_it(self):
        c = self.start()
        port = self.metrics_address(c)
        c.wait_idle(self.sbdir, "web", 2)
        with open(c.config_path) as f:
            text = f.read()
        # An address in use: the reload fails, and the running endpoint stays.
        busy, busy_port = self.loopback_listener(8)
        with open(c.config_path, "w") as f:
            f.write(text.replace('listen: "127.0.0.1:0"', f'listen: "127.0.0.1:{busy_port}"', 1))
        c.signal(signal.SIGHUP)
        c.wait_log(rf"reload failed: bind 127.0.0.1:{busy_port}: Address already in use")
        after = self.scrape(port)
        self.assertEqual(value(after, "corral_reloads_total", result="failed"), 1)
        self.assertEqual(value(after, "corral_generation"), 1)
        # A new address: bound, and the old one closed.
        path = os.path.join(self.tmp, "moved.sock")
        with open(c.config_path, "w") as f:
            f.write(text.replace('listen: "127.0.0.1:0"', f'listen: "unix:{path}"', 1))
        c.signal(signal.SIGHUP)
        c.wait_log(r"reload done: generation 2")
        self.assertEqual(self.metrics_address(c, count=2), path)
        moved = self.scrape(path)
        self.assertEqual(value(moved, "corral_reloads_total", result="ok"), 1)
        self.assertEqual(value(moved, "corral_reloads_total", result="failed"), 1)
        with self.assertRaises(ConnectionRefusedError):
            http(port, "/metrics")
        self.assertEqual(c.stop(), 0)
        self.assertFalse(os.path.exists(path))

    def test_check_reports_metrics_key_errors_at_their_position(self):
        path = self.write("bad.yaml", f'metrics: {{ listen: "127.0.0.1:9101", textfle: x }}\njobs:\n  web:\n'
                                      f'    command: ["{ECHO}"]\n    listen: ["127.0.0.1:0"]\n')
        out = self.run_cli(["check", path])
        self.assertEqual(out.returncode, 2)
        self.assertIn(f'{path}:1:38: unknown key "textfle" in metrics; did you mean "textfile"?', out.stderr)

    # ------------------------------------------------------------------ queues

    def test_queue_depth_of_tcp_and_unix_listeners_rises_while_clients_wait(self):
        # One worker: while it holds a connection, every other client waits in a backlog.
        c = self.start(listen=("127.0.0.1:0", f"unix:{self.tmp}/q.sock"),
                       workers="{ start: 1, min_spare: 1, max_spare: 1, max: 1 }")
        port = self.metrics_address(c)
        c.wait_idle(self.sbdir, "web", 1)
        tcp, unix = c.job(self.sbdir, "web")["listeners"]
        holder = connect(int(tcp.rsplit(":", 1)[1]))
        holder.sendall(b"x\n")
        self.assertEqual(recv_until(holder), b"x\n")
        waiting = []
        for _ in range(5):
            waiting.append(connect(int(tcp.rsplit(":", 1)[1])))
        for _ in range(3):
            u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            u.settimeout(5)
            u.connect(unix[5:])
            waiting.append(u)
        text = wait_until(lambda: (lambda t: t if value(t, "corral_listener_queue_length", pool="web", listener=tcp) == 5 and
                                   value(t, "corral_listener_queue_length", pool="web", listener=unix) == 3 else None)(self.scrape(port)),
                          what="queues of 5 (TCP) and 3 (unix)", log=c)
        self.assertGreaterEqual(value(text, "corral_listener_queue_peak", pool="web", listener=tcp), 5)
        self.assertGreaterEqual(value(text, "corral_listener_queue_peak", pool="web", listener=unix), 3)
        self.assertEqual(value(text, "corral_workers", pool="web", state="busy"), 1)
        self.assertGreaterEqual(value(text, "corral_pool_max_reached_total", pool="web"), 1)
        # Saturated is ready, and --check says so.
        self.assertEqual(http(port, "/readyz")[0], 200)
        out = self.run_cli(["status", "--scoreboard-dir", self.sbdir, "--check"])
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertIn("job web: saturated: all 1 workers busy at workers.max 1", out.stdout)
        # The clients go away: the queues empty; the peak was reset by the last scrape
        # and says what was seen since.
        for w in waiting:
            w.close()
        holder.close()
        wait_until(lambda: value(self.scrape(port), "corral_listener_queue_length", pool="web", listener=tcp) == 0,
                   what="TCP queue back to 0", timeout=30, log=c)
        text = wait_until(lambda: (lambda t: t if value(t, "corral_listener_queue_peak", pool="web", listener=unix) == 0
                                   and value(t, "corral_listener_queue_length", pool="web", listener=unix) == 0 else None)(
            self.scrape(port)), what="unix queue and peak back to 0", timeout=30, log=c)
        self.assertEqual(c.stop(), 0)

    # ------------------------------------------------------------------ counters

    def test_exit_reasons_reloads_and_upgrades_survive_sigusr2(self):
        c = self.start(workers="{ start: 2, min_spare: 2, max_spare: 4, max: 4, max_requests: 1 }")
        port = self.metrics_address(c)
        c.wait_idle(self.sbdir, "web", 2)
        job = c.job(self.sbdir, "web")
        tcp_port = int(job["listeners"][0].rsplit(":", 1)[1])
        # One connection: its worker leaves at its quota (max_requests).
        s = connect(tcp_port)
        s.sendall(b"a\n")
        self.assertEqual(recv_until(s), b"a\n")
        s.close()
        wait_until(lambda: value(self.scrape(port), "corral_worker_exits_total", pool="web", reason="max_requests") == 1,
                   what="an exit at max_requests", log=c)
        # A worker killed by someone else: "signal".
        victim = c.wait_idle(self.sbdir, "web", 2)["workers"][0]["pid"]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: value(self.scrape(port), "corral_worker_exits_total", pool="web", reason="signal") == 1,
                   what="an exit by signal", log=c)
        # A reload that applies, then one that is rejected.
        c.signal(signal.SIGHUP)
        c.wait_log(r"reload done: generation 2")
        with open(c.config_path) as f:
            good = f.read()
        with open(c.config_path, "w") as f:
            f.write(good + "    bogus_key: 1\n")
        c.signal(signal.SIGHUP)
        c.wait_log(r"reload rejected")
        with open(c.config_path, "w") as f:
            f.write(good)
        before = wait_until(lambda: (lambda t: t if value(t, "corral_reloads_total", result="rejected") == 1 else None)(
            self.scrape(port)), what="the rejected reload counted", log=c)
        self.assertEqual(value(before, "corral_reloads_total", result="ok"), 1)
        self.assertEqual(value(before, "corral_generation"), 2)
        self.assertEqual(value(before, "corral_upgrades_total", result="ok"), 0)
        spawns = value(before, "corral_worker_spawns_total", pool="web")
        accepted = value(before, "corral_pool_connections_accepted_total", pool="web")
        self.assertGreaterEqual(spawns, 4)
        self.assertEqual(accepted, 1)
        # SIGUSR2: the same socket keeps serving, and nothing is reset.
        c.signal(signal.SIGUSR2)
        c.wait_log(r"binary upgrade: took over 1 job\(s\)")
        self.assertEqual(self.metrics_address(c, count=2), port)
        after = self.scrape(port)
        self.promtool_check(after)
        self.assertEqual(value(after, "corral_upgrades_total", result="ok"), 1)
        self.assertEqual(value(after, "corral_reloads_total", result="ok"), 1)
        self.assertEqual(value(after, "corral_reloads_total", result="rejected"), 1)
        self.assertEqual(value(after, "corral_generation"), 2)
        self.assertGreaterEqual(value(after, "corral_worker_spawns_total", pool="web"), spawns)
        self.assertEqual(value(after, "corral_worker_exits_total", pool="web", reason="max_requests"), 1)
        self.assertEqual(value(after, "corral_worker_exits_total", pool="web", reason="signal"), 1)
        self.assertEqual(value(after, "corral_pool_connections_accepted_total", pool="web"), 1)
        self.assertEqual(c.stop(), 0)

    def test_a_crash_loop_shows_in_metrics_check_and_readyz_but_not_healthz(self):
        probe_dir = os.path.join(self.tmp, "probes")
        os.makedirs(probe_dir)
        c = self.start(command=f'["{PYTHON}", "{PROBE}"]',
                       workers="{ start: 1, min_spare: 1, max_spare: 2, max: 4 }",
                       job_extra=f'    env: {{ PROBE_DIR: "{probe_dir}", PROBE_EXIT: "1" }}\n'
                                 "    restart: { backoff_max: 30s, max_failures: 0 }\n")
        port = self.metrics_address(c)
        c.wait_log(r"next try in 800ms", timeout=30)
        text = wait_until(lambda: (lambda t: t if value(t, "corral_pool_backoff_active", pool="web") == 1 else None)(
            self.scrape(port)), what="backoff active", log=c)
        self.assertGreaterEqual(value(text, "corral_worker_exits_total", pool="web", reason="crash"), 4)
        status, _, body = http(port, "/readyz")
        self.assertEqual(status, 503)
        self.assertIn(b"job web: backing off after failures (next try in", body)
        self.assertEqual(http(port, "/healthz")[0], 200)
        out = self.run_cli(["status", c.config_path, "--check"])
        self.assertEqual(out.returncode, 1, out.stdout + out.stderr)
        self.assertRegex(out.stdout, r"^job web: backing off after failures \(next try in \d+\.\ds\)\n$")
        self.assertEqual(c.stop(), 0)
        out = self.run_cli(["status", c.config_path, "--check"])
        self.assertEqual(out.returncode, 3)
        self.assertIn("no supervisor is running", out.stderr)

    # ------------------------------------------------------------------ textfile

    def test_textfile_is_replaced_atomically_and_promtool_clean(self):
        prom_dir = os.path.join(self.tmp, "textfile")
        os.makedirs(prom_dir)
        path = os.path.join(prom_dir, "corral.prom")
        c = self.start(metrics_listen=None, extra_top=f"metrics: {{ textfile: {path}, interval: 200ms }}\n")
        c.wait_idle(self.sbdir, "web", 2)
        wait_until(lambda: os.path.exists(path), what="the textfile", log=c)
        first = os.stat(path).st_ino
        wait_until(lambda: os.stat(path).st_ino != first, what="the textfile rewritten", log=c)
        with open(path) as f:
            text = f.read()
        self.promtool_check(text)
        self.assertEqual(value(text, "corral_workers", pool="web", state="idle"), 2)
        self.assertNotIn("process_", text)  # node_exporter has its own
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o644)
        # Only the file itself ends in .prom; no temporary file is left in between.
        self.assertEqual([n for n in os.listdir(prom_dir) if n.endswith(".prom")], ["corral.prom"])
        self.assertIn("corral.prom", os.listdir(prom_dir))
        self.assertEqual(c.stop(), 0)

    # ------------------------------------------------------------------ hostile scrapers

    def test_hostile_scrapers_never_stall_supervision(self):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        c = self.start(workers="{ start: 2, min_spare: 2, max_spare: 4, max: 4 }")
        port = self.metrics_address(c)
        c.wait_idle(self.sbdir, "web", 2)
        tcp_port = int(c.job(self.sbdir, "web")["listeners"][0].rsplit(":", 1)[1])
        attackers = []
        self.addCleanup(lambda: [a.close() for a in attackers])
        # A huge request, 1000 connections that send nothing, and slowloris clients.
        attack_start = time.monotonic()
        huge = socket.socket()
        huge.settimeout(5)
        attackers.append(huge)
        huge.connect(("127.0.0.1", port))
        huge.setblocking(False)
        try:
            huge.send(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 200000)
        except OSError:
            pass
        for _ in range(1000):
            a = socket.socket()
            a.setblocking(False)
            try:
                a.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            attackers.append(a)
        slow = []
        for _ in range(5):
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            slow.append(s)
            attackers.append(s)
        # Supervision goes on: a killed worker is replaced, a reload completes, the
        # job serves, status answers; all within bounds far below the scrapers' timeouts.
        start = time.monotonic()
        victim = c.job(self.sbdir, "web")["workers"][0]["pid"]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: (lambda j: j and j["idle"] >= 2 and victim not in [w["pid"] for w in j["workers"]])(
            c.job(self.sbdir, "web")), timeout=5, what="the worker replaced", log=c)
        for s in slow:
            try:
                s.send(b"G")
            except OSError:
                pass
        c.signal(signal.SIGHUP)
        c.wait_log(r"reload done: generation 2", timeout=5)
        s = connect(tcp_port)
        s.sendall(b"still\n")
        self.assertEqual(recv_until(s), b"still\n")
        s.close()
        self.assertLess(time.monotonic() - start, 5.0)
        # Connections waiting behind a full endpoint do not spin the loop (the listener
        # is off it while full), nor do slowloris bytes. Over the quiet seconds until the
        # first idle attacker is cut off at its read deadline, corral sleeps in epoll:
        # it neither burns CPU (a spin, on an idle machine) nor gets preempted (a spin,
        # on a busy one: ~100 involuntary switches in 3 s where a sleeper has none).
        for s in slow:
            try:
                s.send(b"E")
            except OSError:
                pass
        quiet_start = time.monotonic()
        cpu_start, preempted_start = self._cpu_seconds(c.pid), self._preempted(c.pid)
        watch = select.poll()
        for a in attackers[1:1001]:
            watch.register(a, select.POLLIN | select.POLLHUP)
        wait_until(lambda: watch.poll(0), timeout=20, what="an idle attacker cut off", log=c)
        self.assertGreater(time.monotonic() - attack_start, 4.5)  # the 5 s read deadline
        quiet = time.monotonic() - quiet_start
        cpu = self._cpu_seconds(c.pid) - cpu_start
        preempted = self._preempted(c.pid) - preempted_start
        self.assertLess(cpu, 0.3 * quiet, f"corral used {cpu:.2f}s of CPU in {quiet:.2f}s")
        self.assertLess(preempted, 10 + 3 * quiet, f"corral was preempted {preempted} times in {quiet:.2f}s")
        # corral's own fds stay bounded: kMaxClients clients at most.
        fds = len(os.listdir(f"/proc/{c.pid}/fd"))
        self.assertLess(fds, 100)
        # The attackers are cut off at the read deadline, and a scrape gets through again.
        for a in attackers:
            a.close()
        attackers.clear()
        text = wait_until(lambda: self._try_scrape(port), timeout=20, what="a scrape after the attack", log=c)
        self.promtool_check(text)
        self.assertEqual(c.stop(), 0)

    @staticmethod
    def _cpu_seconds(pid):
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _preempted(pid):
        with open(f"/proc/{pid}/status") as f:
            return int(re.search(r"nonvoluntary_ctxt_switches:\s+(\d+)", f.read()).group(1))

    def _try_scrape(self, port):
        try:
            return self.scrape(port)
        except OSError:
            return None

    # ------------------------------------------------------------------ docs

    def test_the_documented_scrape_config_and_alert_rules_pass_promtool(self):
        self.assertIsNotNone(PROMTOOL, "promtool is missing: run scripts/deps.sh")
        from harness import SOURCE
        with open(os.path.join(SOURCE, "docs", "METRICS.md")) as f:
            doc = f.read()
        blocks = re.findall(r"```yaml\n(.*?)```", doc, flags=re.S)
        rules = [b for b in blocks if b.startswith("# corral-alerts.yml")]
        scrape = [b for b in blocks if b.startswith("# prometheus.yml")]
        self.assertEqual((len(rules), len(scrape)), (1, 1))
        for kind, text in (("rules", rules[0]), ("config", scrape[0])):
            path = self.write(f"{kind}.yml", text)
            out = subprocess.run([PROMTOOL, "check", kind, path], capture_output=True, text=True, timeout=60)
            self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        # Every metric the endpoint serves is documented.
        c = self.start()
        names = {n for (n, _) in samples(self.scrape(self.metrics_address(c)))}
        for name in names:
            self.assertIn(f"`{name}`", doc)
        self.assertEqual(c.stop(), 0)

    # ------------------------------------------------------------------ Prometheus

    def test_a_real_prometheus_scrapes_corral(self):
        self.assertIsNotNone(PROMETHEUS, "prometheus is missing: run scripts/deps.sh")
        c = self.start(workers="{ start: 1, min_spare: 1, max_spare: 1, max: 1 }")
        port = self.metrics_address(c)
        c.wait_idle(self.sbdir, "web", 1)
        tcp = c.job(self.sbdir, "web")["listeners"][0]
        tcp_port = int(tcp.rsplit(":", 1)[1])
        # Prometheus cannot be told to bind port 0: take a free port and hand it over.
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        prom_port = probe.getsockname()[1]
        probe.close()
        data = os.path.join(self.tmp, "prom-data")
        cfg = self.write("prometheus.yml", f"""
global: {{ scrape_interval: 1s, scrape_timeout: 1s }}
scrape_configs:
  - job_name: corral
    static_configs: [{{ targets: ["127.0.0.1:{port}"] }}]
""")
        log = open(os.path.join(self.tmp, "prometheus.log"), "wb")
        self.addCleanup(log.close)
        prom = subprocess.Popen([PROMETHEUS, f"--config.file={cfg}", f"--storage.tsdb.path={data}",
                                 f"--web.listen-address=127.0.0.1:{prom_port}",
                                 "--storage.tsdb.retention.time=1h", "--log.level=warn"],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

        def stop_prometheus():
            if prom.poll() is None:
                prom.terminate()
                try:
                    prom.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    prom.kill()
                    prom.wait(timeout=10)
        self.addCleanup(stop_prometheus)

        def query(q):
            try:
                url = f"/api/v1/query?query={urllib.parse.quote(q)}"
                status, _, body = http(prom_port, url, timeout=5)
            except OSError:
                return None
            if status != 200:
                return None
            result = json.loads(body)["data"]["result"]
            return [float(r["value"][1]) for r in result]

        plog = type("L", (), {"log_text": lambda _self: open(os.path.join(self.tmp, "prometheus.log")).read()})()
        wait_until(lambda: query("up") == [1.0], timeout=90, interval=0.5, what="up == 1", log=plog)
        # A full pool: one connection held, eight waiting in the backlog.
        holder = connect(tcp_port)
        holder.sendall(b"x\n")
        self.assertEqual(recv_until(holder), b"x\n")
        waiting = [connect(tcp_port) for _ in range(8)]
        q = f'corral_listener_queue_length{{pool="web",listener="{tcp}"}}'
        wait_until(lambda: (lambda r: r and r[0] >= 8)(query(q)), timeout=60, interval=0.5,
                   what="Prometheus sees the queue rise", log=plog)
        self.assertEqual(query(f'max_over_time({q}[5m])')[0], 8.0)
        self.assertEqual(query('corral_workers{pool="web",state="busy"}'), [1.0])
        for w in waiting:
            w.close()
        holder.close()
        stop_prometheus()
        self.assertEqual(prom.returncode, 0)
        self.assertEqual(c.stop(), 0)


if __name__ == "__main__":
    unittest.main()
