"""corral as a container entrypoint (#16): PID 1 duties under a real PID namespace
(unshare), drain before stop, a per-job stop signal, limits read from real cgroups."""
import json
import os
import re
import signal
import subprocess
import time
import uuid

from harness import BUILD, CORRAL, PYTHON, CorralTest, connect, wait_until, children_of
from test_core import LatencyLoad

HERE = os.path.dirname(os.path.abspath(__file__))
ECHO = os.path.join(BUILD, "examples", "echo")


def zombies_of(pid):
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid and fields[0] == "Z":
                    out.append(int(name))
            except (OSError, IndexError):
                pass
    return out


class Pid1Test(CorralTest):
    def test_as_pid_1_it_reaps_orphans_and_stops_with_0_on_sigterm(self):
        orphans = os.path.join(self.tmp, "orphans")
        os.mkdir(orphans)
        config = f"""
scoreboard_dir: {self.sbdir}
jobs:
  fam:
    command: ["{PYTHON}", "{os.path.join(HERE, 'double_fork.py')}"]
    mode: plain
    listen: ["127.0.0.1:0"]
    workers: {{ start: 2 }}
    env: {{ ORPHAN_DIR: "{orphans}" }}
"""
        c = self.corral(["run", "{config}"], config=config,
                        launcher=["unshare", "--pid", "--fork", "--mount-proc"])
        inner = wait_until(lambda: children_of(c.pid), log=c)[0]  # corral, PID 1 inside
        self.track_pid(inner)
        with open(f"/proc/{inner}/status") as f:
            nspid = [l for l in f if l.startswith("NSpid:")][0].split()
        self.assertEqual(nspid[-1], "1", "corral is not PID 1 of its namespace")
        wait_until(lambda: len(os.listdir(orphans)) >= 2, log=c)
        job = wait_until(lambda: c.job(self.sbdir, "fam"), log=c)
        # The orphans were reparented to corral and exited: reaped, never taken for workers.
        wait_until(lambda: not zombies_of(inner), timeout=10, what="no zombie left", log=c)
        job = c.job(self.sbdir, "fam")
        self.assertEqual(len(job["workers"]), 2)
        os.kill(inner, signal.SIGTERM)
        self.assertEqual(c.wait_exit(timeout=20), 0, c.log_text())
        self.assertIn("corral stopped", c.log_text())

    def test_as_pid_1_every_signal_it_handles_still_works(self):
        config = f"""
scoreboard_dir: {self.sbdir}
jobs:
  echo:
    command: ["{ECHO}"]
    listen: ["127.0.0.1:0"]
    workers: {{ start: 1, min_spare: 1, max_spare: 2, max: 4 }}
"""
        c = self.corral(["run", "{config}"], config=config,
                        launcher=["unshare", "--pid", "--fork", "--mount-proc"])
        inner = wait_until(lambda: children_of(c.pid), log=c)[0]
        self.track_pid(inner)
        c.wait_idle(self.sbdir, "echo", 1)
        os.kill(inner, signal.SIGHUP)  # no default action for PID 1: ours must run
        c.wait_log(r"reload done: generation 2")
        os.kill(inner, signal.SIGQUIT)
        self.assertEqual(c.wait_exit(timeout=20), 0)


class DrainTest(CorralTest):
    def start(self, drain, extra=""):
        config = f"""
scoreboard_dir: {self.sbdir}
stop: {{ drain: {drain} }}
jobs:
  echo:
    command: ["{ECHO}"]
    listen: ["127.0.0.1:0"]
    workers: {{ start: 2, min_spare: 1, max_spare: 4, max: 8 }}
    graceful_timeout: 5s
{extra}"""
        c = self.corral(["run", "{config}"], config=config)
        c.wait_idle(self.sbdir, "echo", 2)
        return c

    def test_sigterm_drains_serving_every_connection_then_stops_with_0(self):
        c = self.start("2s")
        port = c.port(self.sbdir, "echo")
        t0 = time.monotonic()
        c.signal(signal.SIGTERM)
        # Not ready at once: the job says draining ...
        wait_until(lambda: (c.job(self.sbdir, "echo") or {}).get("state") == "draining",
                   timeout=2, log=c)
        check = self.run_cli(["status", "--scoreboard-dir", self.sbdir, "--json"])
        self.assertEqual(json.loads(check.stdout)["jobs"][0]["state"], "draining")
        # ... and yet every connection that keeps arriving is served, for the drain.
        load = LatencyLoad(port, b"ping\n", b"ping\n", count=10 ** 6, threads=4,
                           seconds=max(0.1, 1.5 - (time.monotonic() - t0)), half_close=True).start()
        load.join()
        self.assertEqual(load.failures, [])
        self.assertGreater(load.done, 20)
        self.assertIsNone(c.proc.poll(), "stopped before the drain was over")
        self.assertEqual(c.wait_exit(timeout=20), 0)
        self.assertGreaterEqual(time.monotonic() - t0, 2.0)
        self.assertRegex(c.log_text(), r"draining for 2s before stopping")

    def test_readyz_and_check_turn_unready_at_once_while_healthz_stays_200(self):
        config = f"""
scoreboard_dir: {self.sbdir}
stop: {{ drain: 30s }}
metrics: {{ listen: "127.0.0.1:0" }}
jobs:
  echo:
    command: ["{ECHO}"]
    listen: ["127.0.0.1:0"]
    workers: {{ start: 1, min_spare: 1, max_spare: 2, max: 4 }}
"""
        c = self.corral(["run", "{config}"], config=config)
        c.wait_idle(self.sbdir, "echo", 1)
        port = int(re.search(r"on 127\.0\.0\.1:(\d+)", c.wait_log(r"serving /metrics") and
                             re.search(r"serving /metrics.*", c.log_text()).group(0)).group(1))

        def status_of(path):
            with connect(port) as s:
                s.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
                return int(s.recv(4096).split(b" ")[1])

        self.assertEqual(status_of("/readyz"), 200)
        self.assertEqual(self.run_cli(["status", c.config_path, "--check"]).returncode, 0)
        c.signal(signal.SIGTERM)
        wait_until(lambda: status_of("/readyz") == 503, timeout=5, log=c)
        self.assertEqual(status_of("/healthz"), 200)
        self.assertEqual(self.run_cli(["status", c.config_path, "--check"]).returncode, 1)
        c.signal(signal.SIGTERM)
        self.assertEqual(c.wait_exit(timeout=15), 0)

    def test_a_second_sigterm_skips_the_rest_of_the_drain(self):
        c = self.start("60s")
        c.signal(signal.SIGTERM)
        c.wait_log(r"draining for 1m")
        t0 = time.monotonic()
        c.signal(signal.SIGTERM)
        self.assertEqual(c.wait_exit(timeout=15), 0)
        self.assertLess(time.monotonic() - t0, 10)

    def test_sigint_does_not_drain(self):
        c = self.start("60s")
        c.signal(signal.SIGINT)
        self.assertEqual(c.wait_exit(timeout=15), 0)
        self.assertNotIn("draining for", c.log_text())

    def test_drain_and_stop_signal_survive_an_upgrade(self):
        binary = self.upgradable_binary()
        import harness
        saved = harness.CORRAL
        harness.CORRAL = binary
        try:
            c = self.start("30s")
        finally:
            harness.CORRAL = saved
        c.signal(signal.SIGUSR2)
        c.wait_log(r"binary upgrade: took over 1 job\(s\)", timeout=20)
        c.signal(signal.SIGTERM)
        wait_until(lambda: (c.job(self.sbdir, "echo") or {}).get("state") == "draining",
                   timeout=5, log=c)
        c.signal(signal.SIGTERM)
        self.assertEqual(c.wait_exit(timeout=15), 0)


class StopSignalTest(CorralTest):
    def test_stop_signal_is_sent_at_reload_and_at_stop(self):
        record = os.path.join(self.tmp, "signals")
        config = f"""
scoreboard_dir: {self.sbdir}
jobs:
  app:
    command: ["{PYTHON}", "{os.path.join(HERE, 'stop_signal_probe.py')}"]
    mode: plain
    listen: ["127.0.0.1:0"]
    workers: {{ start: 1 }}
    stop_signal: QUIT
    env: {{ PROBE_SIGNALS: "{record}" }}
"""
        c = self.corral(["run", "{config}"], config=config)
        first = wait_until(lambda: (c.job(self.sbdir, "app") or {}).get("workers"), log=c)[0]["pid"]
        wait_until(lambda: os.path.exists(record) and f"ready {first}" in open(record).read(), log=c)
        c.signal(signal.SIGHUP)
        wait_until(lambda: os.path.exists(record) and f"SIGQUIT {first}" in open(record).read(),
                   timeout=10, log=c)
        second = wait_until(lambda: [w["pid"] for w in (c.job(self.sbdir, "app") or {}).get("workers", [])
                                     if w["pid"] != first and w["state"] == "running"], log=c)[0]
        wait_until(lambda: f"ready {second}" in open(record).read(), log=c)
        self.assertEqual(c.stop(timeout=20), 0)
        lines = open(record).read().split("\n")
        self.assertIn(f"SIGQUIT {second}", lines)
        self.assertNotIn("SIGTERM", open(record).read())


class CgroupLimitsTest(CorralTest):
    """A v1 cpu cgroup with a quota and a v1 memory cgroup with a limit, made here."""

    def setUp(self):
        super().setUp()
        name = "corral-test-" + uuid.uuid4().hex[:8]
        self.cpu = f"/sys/fs/cgroup/cpu/{name}"
        self.mem = f"/sys/fs/cgroup/memory/{name}"
        if not os.path.isdir("/sys/fs/cgroup/cpu") or not os.path.isdir("/sys/fs/cgroup/memory"):
            self.skipTest("no cgroup v1 cpu and memory controllers here")
        os.mkdir(self.cpu)
        self.addCleanup(self.remove, self.cpu)
        os.mkdir(self.mem)
        self.addCleanup(self.remove, self.mem)
        with open(f"{self.cpu}/cpu.cfs_period_us", "w") as f:
            f.write("100000")
        with open(f"{self.cpu}/cpu.cfs_quota_us", "w") as f:
            f.write("50000")  # half a CPU: C = 1
        with open(f"{self.mem}/memory.limit_in_bytes", "w") as f:
            f.write(str(512 * 1024 * 1024))

    def remove(self, path):
        # Whatever is left inside goes back to the root cgroup first.
        root = os.path.dirname(path)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with open(f"{path}/cgroup.procs") as f:
                    pids = f.read().split()
            except FileNotFoundError:
                return
            for p in pids:
                try:
                    with open(f"{root}/cgroup.procs", "w") as f:
                        f.write(p)
                except OSError:
                    pass
            try:
                os.rmdir(path)
                return
            except OSError:
                time.sleep(0.05)  # the kernel frees a cgroup a moment after its last task

    def inside(self):
        return ["sh", "-c", f'echo $$ > {self.cpu}/cgroup.procs && echo $$ > {self.mem}/cgroup.procs && exec "$@"',
                "sh"]

    def test_auto_and_the_limits_come_from_the_cgroup(self):
        config = f"""
scoreboard_dir: {self.sbdir}
metrics: {{ listen: "127.0.0.1:0" }}
jobs:
  echo:
    command: ["{ECHO}"]
    listen: ["127.0.0.1:0"]
    workers: {{ start: auto, max: auto, min_spare: 0, max_spare: 1 }}
"""
        path = self.write("auto.yaml", config)
        check = subprocess.run(self.inside() + [CORRAL, "check", path], capture_output=True,
                               text=True, timeout=20)
        self.assertEqual(check.returncode, 0, check.stderr)
        self.assertIn("start auto (= 1)", check.stdout)
        self.assertIn("max auto (= 4)", check.stdout)
        c = self.corral(["run", "{config}"], config=config, launcher=self.inside())
        c.wait_idle(self.sbdir, "echo", 1)
        st = c.status(self.sbdir)
        self.assertEqual(st["limits"], {"cpus": 1, "memory_bytes": 512 * 1024 * 1024})
        self.assertEqual(len(st["jobs"][0]["workers"]), 1)
        # ... and in the metrics.
        m = re.search(r"serving /metrics, /healthz and /readyz on 127\.0\.0\.1:(\d+)", c.log_text())
        self.assertIsNotNone(m, c.log_text())
        with connect(int(m.group(1))) as s:
            s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            body = b""
            while chunk := s.recv(65536):
                body += chunk
        self.assertIn(b"\ncorral_container_cpus 1\n", body)
        self.assertIn(b"\ncorral_container_memory_limit_bytes 536870912\n", body)
        self.assertEqual(c.stop(), 0)

    def test_without_a_memory_limit_it_is_null(self):
        with open(f"{self.mem}/memory.limit_in_bytes", "w") as f:
            f.write("-1")
        c = self.corral(["run", "--listen", "127.0.0.1:0", "--workers", "auto", "--max", "auto",
                         "--scoreboard-dir", self.sbdir, "--", ECHO], launcher=self.inside())
        c.wait_idle(self.sbdir, "echo", 1)
        st = c.status(self.sbdir)
        self.assertEqual(st["limits"]["cpus"], 1)
        self.assertIsNone(st["limits"]["memory_bytes"])
        self.assertEqual(c.stop(), 0)
