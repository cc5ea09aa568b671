"""Per-worker resource bounds (#17, the parts done): rlimits seen from inside a worker,
memory recycling and the hard memory bound, lifetimes with jitter, across an upgrade."""
import os
import re
import signal

from harness import BUILD, PYTHON, SOURCE, CorralTest, connect, recv_until, wait_until
from test_core import LatencyLoad

HERE = os.path.dirname(os.path.abspath(__file__))
ECHO_PY = os.path.join(SOURCE, "examples", "echo.py")
ECHO = os.path.join(BUILD, "examples", "echo")


def fat_echo(mib):
    """A Python echo worker holding `mib` MiB of resident memory."""
    code = (f"import runpy, sys; ballast = b'x' * ({mib} << 20); sys.argv = ['echo.py']; "
            f"runpy.run_path('{ECHO_PY}', run_name='__main__')")
    return f'["{PYTHON}", "-c", "{code}"]'


class RlimitTest(CorralTest):
    def test_limits_are_what_the_worker_sees(self):
        out = os.path.join(self.tmp, "limits.txt")
        config = f"""
scoreboard_dir: {self.sbdir}
jobs:
  app:
    command: ["{PYTHON}", "{os.path.join(HERE, 'limits_probe.py')}"]
    mode: plain
    listen: ["127.0.0.1:0"]
    workers: {{ start: 1 }}
    limits: {{ nofile: "1024:2048", core: 0, as: 2GiB, cpu: 10m, stack: 8MiB, nproc: 4096 }}
    env: {{ LIMITS_OUT: "{out}" }}
"""
        c = self.corral(["run", "{config}"], config=config)
        text = wait_until(lambda: os.path.exists(out) and open(out).read(), log=c)

        def row(name):
            m = re.search(rf"^{re.escape(name)}\s+(\S+)\s+(\S+)", text, re.M)
            return m.groups()

        self.assertEqual(row("Max open files"), ("1024", "2048"))
        self.assertEqual(row("Max core file size"), ("0", "0"))
        self.assertEqual(row("Max address space"), (str(2 << 30), str(2 << 30)))
        self.assertEqual(row("Max cpu time"), ("600", "600"))
        self.assertEqual(row("Max stack size"), (str(8 << 20), str(8 << 20)))
        self.assertEqual(row("Max processes"), ("4096", "4096"))
        self.assertEqual(c.stop(), 0)

    def test_a_limit_with_an_ambiguous_unit_is_a_check_error(self):
        path = self.write("bad.yaml", f"""
jobs:
  app:
    command: ["{ECHO}"]
    listen: ["127.0.0.1:0"]
    limits: {{ as: 2G }}
""")
        out = self.run_cli(["check", path])
        self.assertEqual(out.returncode, 2)
        self.assertIn(f"{path}:6:19: limits.as:", out.stderr)
        self.assertIn("did you mean 2GiB?", out.stderr)


class MemoryTest(CorralTest):
    def start(self, memory, mib):
        config = f"""
scoreboard_dir: {self.sbdir}
jobs:
  echo:
    command: {fat_echo(mib)}
    listen: ["127.0.0.1:0"]
    workers: {{ start: 2, min_spare: 1, max_spare: 4, max: 4 }}
    memory: {memory}
"""
        c = self.corral(["run", "{config}"], config=config)
        c.wait_idle(self.sbdir, "echo", 1, timeout=20)
        return c

    def test_a_worker_above_max_rss_is_retired_once_idle_without_cutting_a_connection(self):
        c = self.start("{ max_rss: 32MiB, interval: 200ms }", 64)
        port = c.port(self.sbdir, "echo")
        # A held connection: its worker is busy, and must not be cut while it is.
        held = connect(port, timeout=20)
        held.sendall(b"first\n")
        self.assertEqual(recv_until(held), b"first\n")
        c.wait_log(r"uses \d+ bytes of memory, above max_rss 33554432; retiring it", timeout=20)
        held.sendall(b"second\n")
        self.assertEqual(recv_until(held), b"second\n")
        held.close()
        self.assertEqual(c.stop(), 0)

    def test_a_worker_above_hard_max_rss_is_killed(self):
        c = self.start("{ hard_max_rss: 32MiB, interval: 200ms }", 64)
        c.wait_log(r"above hard_max_rss 33554432; killing it", timeout=20)
        self.assertEqual(c.stop(), 0)


class LifetimeTest(CorralTest):
    def start(self, binary=None):
        config = f"""
scoreboard_dir: {self.sbdir}
jobs:
  echo:
    command: ["{ECHO}"]
    listen: ["127.0.0.1:0"]
    workers: {{ start: 4, min_spare: 2, max_spare: 8, max: 8, max_lifetime: 1s,
                max_lifetime_jitter: 1s }}
"""
        import harness
        saved = harness.CORRAL
        if binary:
            harness.CORRAL = binary
        try:
            c = self.corral(["run", "{config}"], config=config)
        finally:
            harness.CORRAL = saved
        c.wait_idle(self.sbdir, "echo", 2)
        return c

    def test_workers_retire_at_their_own_lifetime_and_the_pool_serves_on(self):
        c = self.start()
        port = c.port(self.sbdir, "echo")
        first = {w["pid"] for w in c.job(self.sbdir, "echo")["workers"]}
        load = LatencyLoad(port, b"x\n", b"x\n", count=10 ** 6, threads=2, seconds=4,
                           half_close=True).start()
        load.join()
        self.assertEqual(load.failures, [])
        c.wait_log(r"reached its lifetime \(1s|reached its lifetime \(\d", timeout=10)
        now = {w["pid"] for w in c.job(self.sbdir, "echo")["workers"]}
        self.assertFalse(first & now, "a worker outlived max_lifetime + jitter")
        # Spread by the jitter: the lifetimes logged are not all the same.
        lifetimes = set(re.findall(r"reached its lifetime \(([^)]*)\)", c.log_text()))
        self.assertGreater(len(lifetimes), 1)
        self.assertEqual(c.stop(), 0)

    def test_lifetimes_survive_an_upgrade(self):
        binary = self.upgradable_binary()
        c = self.start(binary)
        c.signal(signal.SIGUSR2)
        c.wait_log(r"binary upgrade: took over 1 job\(s\)", timeout=20)
        before = c.log_text().count("reached its lifetime")
        wait_until(lambda: c.log_text().count("reached its lifetime") > before, timeout=10, log=c)
        self.assertEqual(c.stop(), 0)
