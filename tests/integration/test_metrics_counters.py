"""The grown scoreboard's counters (docs/PROTOCOL.md 5.1, 5.2; docs/METRICS.md): accepts
per listener, refusals, exits by reason and OOM kills per slot, in `corral status --json`
and on /metrics, surviving the workers' exits and SIGUSR2; workers that know only the
first layout, and a worker that lies in its counters."""
import os
import signal
import socket
import subprocess
import json

from harness import BUILD, HERE, PYTHON, CorralTest, connect, recv_until, wait_until
from test_metrics import PROMTOOL, http, samples, value

ECHO = os.path.join(BUILD, "examples", "echo")
OLD_WORKER = os.path.join(HERE, "old_protocol_worker.py")
LIAR = os.path.join(HERE, "lying_counters_worker.py")
REASONS = {"normal", "max_requests", "max_lifetime", "busy_timeout", "start_timeout", "memory",
           "oom", "signal", "crash", "failed_start", "stuck_lock"}


class CountersTest(CorralTest):
    def start(self, command, listen=("127.0.0.1:0",), workers="{ start: 2, min_spare: 1, max_spare: 4, max: 4 }",
              mode="prefork", job_extra=""):
        listen_yaml = ", ".join(f'"{a}"' for a in listen)
        config = f"""
scoreboard_dir: {self.sbdir}
metrics: {{ listen: "127.0.0.1:0" }}
jobs:
  web:
    command: {command}
    mode: {mode}
    listen: [{listen_yaml}]
    workers: {workers}
{job_extra}"""
        c = self.corral(["run", "{config}"], config=config)
        c.wait_idle(self.sbdir, "web", 1)
        return c

    def metrics_port(self, c, count=1):
        c.wait_log(r"metrics: serving /metrics, /healthz and /readyz on ", count=count)
        return int(c.log_text().rsplit("metrics: serving /metrics, /healthz and /readyz on ", 1)[1]
                   .split()[0].rsplit(":", 1)[1])

    def scrape(self, port):
        status, _, body = http(port, "/metrics")
        self.assertEqual(status, 200)
        return body.decode()

    def promtool_check(self, text):
        self.assertIsNotNone(PROMTOOL, "promtool is missing: run scripts/deps.sh")
        out = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                             text=True, timeout=60)
        self.assertEqual((out.returncode, out.stdout + out.stderr), (0, ""))

    def status_json(self):
        out = self.run_cli(["status", "--scoreboard-dir", self.sbdir, "--json"])
        self.assertEqual(out.returncode, 0, out.stderr)
        return json.loads(out.stdout)

    def job(self):
        return self.status_json()["jobs"][0]

    def echo_once(self, port, line=b"hi\n"):
        s = connect(port)
        with s:
            s.sendall(line)
            self.assertEqual(recv_until(s), line)

    def listener_series(self, text):
        return {dict(labels)["listener"]: v for (name, labels), v in samples(text).items()
                if name == "corral_listener_connections_accepted_total"}

    # ------------------------------------------------------------------ per listener

    def test_per_listener_counts_survive_worker_exits_and_sigusr2(self):
        # max_requests: 1: every worker leaves after one connection, so every count below
        # has been folded at a reap by the time it is checked.
        c = self.start(f'["{ECHO}"]', listen=("127.0.0.1:0", "127.0.0.1:0"),
                       workers="{ start: 2, min_spare: 1, max_spare: 4, max: 4, max_requests: 1 }")
        mport = self.metrics_port(c)
        first, second = c.job(self.sbdir, "web")["listeners"]
        ports = [int(first.rsplit(":", 1)[1]), int(second.rsplit(":", 1)[1])]
        for _ in range(5):
            self.echo_once(ports[0])
            self.echo_once(ports[1])
        want = {first: 5, second: 5}
        job = wait_until(lambda: (lambda j: j if j.get("accepted") == want and
                                  j["exits"]["max_requests"] >= 10 else None)(self.job()),
                         what="5 + 5 accepted and 10 recycled", log=c)
        self.assertEqual(set(job["exits"]), REASONS)
        self.assertEqual(job["refused"], 0)
        for w in job["workers"]:
            self.assertIn("rss_bytes", w)
            self.assertEqual(w["oom_kills"], 0)
        self.assertTrue(any(isinstance(w["rss_bytes"], int) and w["rss_bytes"] > 0
                            for w in job["workers"]), job["workers"])
        text = self.scrape(mport)
        self.promtool_check(text)
        self.assertEqual(self.listener_series(text), {first: 5.0, second: 5.0})
        self.assertEqual(value(text, "corral_pool_connections_accepted_total", pool="web"), 10)
        self.assertEqual(value(text, "corral_pool_connections_refused_total", pool="web"), 0)
        self.assertGreaterEqual(value(text, "corral_worker_exits_total", pool="web", reason="max_requests"), 10)
        oom = [v for (n, l), v in samples(text).items() if n == "corral_slot_oom_kills_total"]
        self.assertTrue(oom and all(v == 0 for v in oom), oom)

        # SIGUSR2: the new image goes on from the same counts (they are in the hand-over).
        c.signal(signal.SIGUSR2)
        c.wait_log(r"binary upgrade: took over 1 job\(s\)")
        self.assertEqual(self.metrics_port(c, count=2), mport)
        after = self.scrape(mport)
        self.promtool_check(after)
        self.assertEqual(self.listener_series(after), {first: 5.0, second: 5.0})
        self.assertEqual(self.job()["accepted"], want)
        self.echo_once(ports[1])
        want = {first: 5, second: 6}
        wait_until(lambda: self.job().get("accepted") == want, what="5 + 6 accepted", log=c)
        wait_until(lambda: self.listener_series(self.scrape(mport)) == {first: 5.0, second: 6.0},
                   what="5 + 6 on /metrics", log=c)
        self.assertEqual(c.stop(), 0)

    def test_a_listener_moved_by_a_reload_keeps_its_count(self):
        a, b = os.path.join(self.tmp, "a.sock"), os.path.join(self.tmp, "b.sock")

        def echo_unix(path):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            with s:
                s.connect(path)
                s.sendall(b"u\n")
                self.assertEqual(recv_until(s), b"u\n")

        c = self.start(f'["{ECHO}"]', listen=(f"unix:{a}",),
                       workers="{ start: 1, min_spare: 1, max_spare: 2, max: 2, max_requests: 1 }")
        for _ in range(2):
            echo_unix(a)
        wait_until(lambda: self.job().get("accepted") == {f"unix:{a}": 2}, what="2 on a", log=c)
        # a moves to the second place; b comes first.
        with open(c.config_path) as f:
            text = f.read()
        with open(c.config_path, "w") as f:
            f.write(text.replace(f'listen: ["unix:{a}"]', f'listen: ["unix:{b}", "unix:{a}"]'))
        c.signal(signal.SIGHUP)
        c.wait_log(r"reload done: generation 2")
        c.wait_idle(self.sbdir, "web", 1)
        echo_unix(a)
        echo_unix(b)
        want = {f"unix:{a}": 3, f"unix:{b}": 1}
        wait_until(lambda: self.job().get("accepted") == want, what="3 on a, 1 on b", log=c)
        text = self.scrape(self.metrics_port(c))
        self.assertEqual(self.listener_series(text), {k: float(v) for k, v in want.items()})
        self.assertEqual(c.stop(), 0)

    def test_exits_by_reason_after_killing_a_worker(self):
        c = self.start(f'["{ECHO}"]')
        mport = self.metrics_port(c)
        c.wait_idle(self.sbdir, "web", 2)
        victim = c.job(self.sbdir, "web")["workers"][0]["pid"]
        os.kill(victim, signal.SIGKILL)
        job = wait_until(lambda: (lambda j: j if j["exits"]["signal"] == 1 else None)(self.job()),
                         what="one exit by signal", log=c)
        self.assertEqual(set(job["exits"]), REASONS)
        self.assertEqual(sum(job["exits"].values()), 1)
        self.assertNotIn(victim, [w["pid"] for w in job["workers"]])
        text = self.scrape(mport)
        self.assertEqual(value(text, "corral_worker_exits_total", pool="web", reason="signal"), 1)
        self.assertEqual(value(text, "corral_worker_exits_total", pool="web", reason="oom"), 0)
        # The table still prints (scripts read it too).
        out = self.run_cli(["status", "--scoreboard-dir", self.sbdir])
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("job web: prefork, running", out.stdout)
        self.assertEqual(c.stop(), 0)

    def test_a_worker_of_the_first_layout_is_served_and_reports_no_listener_series(self):
        c = self.start(f'["{PYTHON}", "{OLD_WORKER}"]', listen=("127.0.0.1:0", "127.0.0.1:0"))
        mport = self.metrics_port(c)
        listeners = c.job(self.sbdir, "web")["listeners"]
        for address in listeners:
            self.echo_once(int(address.rsplit(":", 1)[1]))
        job = wait_until(lambda: (lambda j: j if sum(w["requests"] for w in j["workers"]) == 2 else None)(
            self.job()), what="2 requests in the slots", log=c)
        self.assertEqual(job["accepted"], {})  # it does not count per listener: no entries
        text = self.scrape(mport)
        self.promtool_check(text)
        self.assertEqual(self.listener_series(text), {})
        self.assertEqual(value(text, "corral_pool_connections_accepted_total", pool="web"), 2)
        self.assertEqual(c.stop(), 0)

    def test_the_python_library_counts_per_listener(self):
        worker = self.write("py_worker.py", f"""
import sys
sys.path.insert(0, {os.path.join(os.path.dirname(HERE), "..", "lib", "worker", "python")!r})
import corral_worker


def handle(conn, addr, index):
    conn.sendall(conn.recv(64))


sys.exit(corral_worker.serve(handle))
""")
        c = self.start(f'["{PYTHON}", "{worker}"]', listen=("127.0.0.1:0", "127.0.0.1:0"))
        mport = self.metrics_port(c)
        first, second = c.job(self.sbdir, "web")["listeners"]
        for _ in range(2):
            self.echo_once(int(second.rsplit(":", 1)[1]))
        self.echo_once(int(first.rsplit(":", 1)[1]))
        wait_until(lambda: self.job().get("accepted") == {first: 1, second: 2},
                   what="1 + 2 accepted", log=c)
        text = self.scrape(mport)
        self.promtool_check(text)
        self.assertEqual(self.listener_series(text), {first: 1.0, second: 2.0})
        self.assertEqual(c.stop(), 0)

    def test_a_worker_lying_in_its_counters_breaks_neither_status_nor_metrics(self):
        c = self.start(f'["{PYTHON}", "{LIAR}"]',
                       workers="{ start: 1, min_spare: 1, max_spare: 1, max: 1 }")
        mport = self.metrics_port(c)
        port = c.port(self.sbdir, "web")
        counters = ("corral_pool_connections_accepted_total", "corral_pool_connections_refused_total",
                    "corral_listener_connections_accepted_total")
        last = {}
        for round_ in range(6):
            self.echo_once(port)  # the pool still serves
            job = self.job()  # exit 0 and valid JSON, whatever the slot says
            self.assertEqual(job["name"], "web")
            text = self.scrape(mport)
            if round_ in (0, 5):
                self.promtool_check(text)
            now = {k: v for k, v in samples(text).items() if k[0] in counters}
            for key, v in last.items():
                # A counter never goes backwards, and never past 2^64.
                self.assertGreaterEqual(now.get(key, 0), v, key)
            for v in now.values():
                self.assertLessEqual(v, 2.0**64)
            last = now
            if round_ == 2:
                # Reaped with its lies in the slot: folded, clamped, still monotonic.
                liar = job["workers"][0]["pid"]
                os.kill(liar, signal.SIGKILL)
                wait_until(lambda: (lambda j: j and j["workers"] and j["workers"][0]["pid"] != liar and
                                    j["idle"] == 1)(self.job()), what="a new liar", log=c)
        self.assertIsNone(c.proc.poll())
        self.assertEqual(http(mport, "/healthz")[0], 200)
        self.assertEqual(c.stop(), 0)

    # ------------------------------------------------------------------ refusals

    def test_inetd_refusals_by_max_per_source_are_counted(self):
        c = self.start('["/bin/cat"]', mode="inetd", job_extra="    max_per_source: 1\n",
                       workers="{ start: 2, min_spare: 2, max_spare: 4, max: 4 }")
        mport = self.metrics_port(c)
        listener = c.job(self.sbdir, "web")["listeners"][0]
        port = int(listener.rsplit(":", 1)[1])
        held = connect(port)
        self.addCleanup(held.close)
        held.sendall(b"one\n")
        self.assertEqual(recv_until(held), b"one\n")  # cat runs with it
        refused = connect(port)
        with refused:
            refused.settimeout(10)
            try:
                self.assertEqual(refused.recv(16), b"")  # closed unserved
            except ConnectionResetError:
                pass
        job = wait_until(lambda: (lambda j: j if j.get("refused") == 1 else None)(self.job()),
                         what="one refusal in status", log=c)
        # Both connections were accepted (by the acceptors, on that listener).
        self.assertEqual(job["accepted"], {listener: 2})
        text = wait_until(lambda: (lambda t: t if value(t, "corral_pool_connections_refused_total", pool="web") == 1
                                   else None)(self.scrape(mport)), what="one refusal on /metrics", log=c)
        self.promtool_check(text)
        self.assertEqual(self.listener_series(text), {listener: 2.0})
        held.close()
        # The refusal is part of the hand-over: SIGUSR2 keeps it.
        c.signal(signal.SIGUSR2)
        c.wait_log(r"binary upgrade: took over 1 job\(s\)")
        self.assertEqual(self.metrics_port(c, count=2), mport)
        after = self.scrape(mport)
        self.assertEqual(value(after, "corral_pool_connections_refused_total", pool="web"), 1)
        self.assertEqual(self.job()["refused"], 1)
        self.assertEqual(c.stop(), 0)


if __name__ == "__main__":
    import unittest
    unittest.main()
