"""Per-worker cgroups (`cgroup:`) and the pool's memory budget (`memory.budget`), #17,
for real on the cgroup v1 hierarchies of this machine: each test creates its own
cgroups as root (/sys/fs/cgroup/{memory,pids,cpu}/corral-test-XXX), starts corral in
them, and removes them at the end. A real cgroup v2 run is still owed (the v2 file
logic is unit-tested on a fixture tree: tests/unit/container_cgroup_test.cpp)."""
import os
import re
import shutil
import signal
import time
import unittest
import uuid

from harness import (BUILD, CORRAL, PYTHON, SOURCE, CorralTest, connect, recv_all, recv_until,
                     wait_until)

HERE = os.path.dirname(os.path.abspath(__file__))
ECHO_PY = os.path.join(SOURCE, "examples", "echo.py")
ECHO = os.path.join(BUILD, "examples", "echo")
CG = "/sys/fs/cgroup"
CONTROLLERS = ("memory", "pids", "cpu")


def v1_usable():
    if os.geteuid() != 0:
        return False
    return all(os.path.exists(f"{CG}/{c}/cgroup.procs") and os.access(f"{CG}/{c}", os.W_OK)
               for c in CONTROLLERS)


def read(path):
    with open(path) as f:
        return f.read()


def oom_kills(directory):
    m = re.search(r"^oom_kill (\d+)", read(f"{directory}/memory.oom_control"), re.M)
    return int(m.group(1)) if m else 0


def remove_tree(top):
    """rmdir bottom-up (cgroupfs directories hold only virtual files); the processes still
    in them (started by this test) are killed first."""
    if not os.path.isdir(top):
        return
    for root, dirs, _ in os.walk(top, topdown=False):
        try:
            for pid in read(f"{root}/cgroup.procs").split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        except OSError:
            pass
    for _ in range(100):
        for root, dirs, _ in os.walk(top, topdown=False):
            try:
                os.rmdir(root)
            except OSError:
                pass
        if not os.path.exists(top):
            return
        time.sleep(0.05)


@unittest.skipUnless(v1_usable(), "needs root and the cgroup v1 memory, pids and cpu hierarchies")
class CgroupCase(CorralTest):
    def setUp(self):
        super().setUp()
        self.name = f"corral-test-{uuid.uuid4().hex[:8]}"
        self.cg = {c: f"{CG}/{c}/{self.name}" for c in CONTROLLERS}
        for c, d in self.cg.items():
            os.mkdir(d)
            self.addCleanup(remove_tree, d)

    def limit_memory(self, mib):
        with open(f"{self.cg['memory']}/memory.limit_in_bytes", "w") as f:
            f.write(str(mib << 20))

    def start(self, config, binary=None):
        """corral run, moved into the test's cgroups before it execs (a shell launcher)."""
        script = "".join(f"echo $$ > {d}/cgroup.procs && " for d in self.cg.values())
        import harness
        saved = harness.CORRAL
        if binary:
            harness.CORRAL = binary
        try:
            return self.corral(["run", "{config}"], config=config,
                               launcher=("/bin/sh", "-c", script + 'exec "$0" "$@"'))
        finally:
            harness.CORRAL = saved

    def slot_dirs(self, controller, job):
        d = f"{self.cg[controller]}/corral-{job}"
        if not os.path.isdir(d):
            return []
        return sorted(os.path.join(d, n) for n in os.listdir(d) if n.startswith("slot-"))

    def exits(self, prom, reason):
        text = read(prom) if os.path.exists(prom) else ""
        m = re.search(rf'^corral_worker_exits_total{{pool="app",reason="{reason}"}} (\d+)', text,
                      re.M)
        return int(m.group(1)) if m else 0

    def slot_oom_kills(self, prom):
        """The sum of corral_slot_oom_kills_total over the job's slots."""
        text = read(prom) if os.path.exists(prom) else ""
        return sum(int(n) for n in re.findall(
            r'^corral_slot_oom_kills_total{pool="app",slot="\d+"} (\d+)', text, re.M))


class PerWorkerCgroupTest(CgroupCase):
    def echo_job(self, cgroup, extra=""):
        return f"""
scoreboard_dir: {self.sbdir}
jobs:
  app:
    command: ["{ECHO}"]
    listen: ["127.0.0.1:0"]
    workers: {{ start: 2, min_spare: 1, max_spare: 4, max: 4 }}
    cgroup: {cgroup}
{extra}"""

    def test_each_slot_gets_its_limits_and_its_worker_and_they_go_after_stop(self):
        c = self.start(self.echo_job("{ memory_max: 96MiB, pids_max: 32, cpu_weight: 50 }"))
        job = c.wait_idle(self.sbdir, "app", 2)
        for w in job["workers"]:
            slot = f"slot-{w['slot']}"
            mem = f"{self.cg['memory']}/corral-app/{slot}"
            self.assertEqual(read(f"{mem}/memory.limit_in_bytes").strip(), str(96 << 20))
            self.assertEqual(read(f"{self.cg['pids']}/corral-app/{slot}/pids.max").strip(), "32")
            self.assertEqual(read(f"{self.cg['cpu']}/corral-app/{slot}/cpu.shares").strip(), "512")
            for ctl in CONTROLLERS:
                self.assertEqual(read(f"{self.cg[ctl]}/corral-app/{slot}/cgroup.procs").split(),
                                 [str(w["pid"])], ctl)
        # It serves as before.
        s = connect(c.port(self.sbdir, "app"))
        s.sendall(b"hi\n")
        self.assertEqual(recv_until(s), b"hi\n")
        s.close()
        self.assertEqual(c.stop(), 0)
        for ctl in CONTROLLERS:
            self.assertFalse(os.path.exists(f"{self.cg[ctl]}/corral-app"), ctl)

    def test_an_inetd_program_runs_in_its_slot_cgroup_which_goes_with_it(self):
        config = f"""
scoreboard_dir: {self.sbdir}
jobs:
  app:
    command: ["/bin/cat", "/proc/self/cgroup"]
    mode: inetd
    listen: ["127.0.0.1:0"]
    workers: {{ start: 1, min_spare: 1, max_spare: 2, max: 4 }}
    cgroup: {{ pids_max: 16 }}
"""
        c = self.start(config)
        c.wait_idle(self.sbdir, "app", 1)
        port = c.port(self.sbdir, "app")
        for _ in range(3):
            s = connect(port)
            text = recv_all(s).decode()
            s.close()
            self.assertRegex(text, rf"memory:/{self.name}/corral-app/slot-\d+\n")
            self.assertRegex(text, rf"pids:/{self.name}/corral-app/slot-\d+\n")
        # Each program's slot cgroup goes when it is reaped: only the acceptors' stay.
        wait_until(lambda: len(self.slot_dirs("pids", "app")) == len(
            c.job(self.sbdir, "app")["workers"]), timeout=10, log=c)
        self.assertEqual(c.stop(), 0)
        self.assertFalse(os.path.exists(f"{self.cg['pids']}/corral-app"))

    def test_a_fork_bomb_is_capped_by_pids_max(self):
        out = os.path.join(self.tmp, "bomb.txt")
        config = f"""
scoreboard_dir: {self.sbdir}
jobs:
  app:
    command: ["{PYTHON}", "{os.path.join(HERE, 'fork_bomb.py')}"]
    mode: plain
    workers: {{ start: 1 }}
    cgroup: {{ pids_max: 8 }}
    env: {{ BOMB_OUT: "{out}" }}
"""
        c = self.start(config)
        text = wait_until(lambda: os.path.exists(out) and read(out), timeout=20, log=c)
        forked, err = re.match(r"(\d+) errno (\d+)", text).groups()
        # The program itself is one of the 8: 7 children at most, then EAGAIN.
        self.assertLessEqual(int(forked), 7)
        self.assertEqual(int(err), 11)
        self.assertEqual(c.stop(), 0)
        self.assertFalse(os.path.exists(f"{self.cg['pids']}/corral-app"))

    def test_a_worker_above_memory_max_is_oom_killed_named_and_counted(self):
        prom = os.path.join(self.tmp, "corral.prom")
        config = f"""
scoreboard_dir: {self.sbdir}
metrics: {{ textfile: {prom}, interval: 200ms }}
jobs:
  app:
    command: ["{PYTHON}", "{os.path.join(HERE, 'grow_worker.py')}"]
    listen: ["127.0.0.1:0"]
    workers: {{ start: 1, min_spare: 1, max_spare: 2, max: 2 }}
    cgroup: {{ memory_max: 48MiB }}
    env: {{ ECHO_PY: "{ECHO_PY}", GROW_AFTER_MS: "300", GROW_STEP_MIB: "8", GROW_MAX_MIB: "200" }}
"""
        c = self.start(config)
        c.wait_log(r"was killed by a SIGKILL corral did not send \(an OOM kill in its own cgroup "
                   rf"{re.escape(self.cg['memory'])}/corral-app/slot-\d+, cgroup.memory_max "
                   rf"{48 << 20}\)", timeout=30)
        wait_until(lambda: self.exits(prom, "oom") >= 1, timeout=10, log=c)
        self.assertEqual(self.exits(prom, "signal"), 0)
        # Counted per slot too: the metric, and the slot's oom_kills in status for the
        # worker that took the slot next.
        wait_until(lambda: self.slot_oom_kills(prom) >= 1, timeout=10, log=c)
        wait_until(lambda: any(w.get("oom_kills", 0) >= 1
                               for w in (c.job(self.sbdir, "app") or {}).get("workers", [])),
                   timeout=10, log=c)
        # The OOM kill was the slot's own: the test's (supervisor's) cgroup was never full.
        self.assertEqual(oom_kills(self.cg["memory"]), 0)
        self.assertEqual(c.stop(), 0)
        self.assertFalse(os.path.exists(f"{self.cg['memory']}/corral-app"))

    @unittest.skipUnless(shutil.which("unshare"), "needs unshare")
    def test_a_read_only_cgroupfs_is_said_once_and_memory_max_falls_back_to_sampling(self):
        config = f"""
scoreboard_dir: {self.sbdir}
jobs:
  app:
    command: ["{PYTHON}", "{os.path.join(HERE, 'grow_worker.py')}"]
    listen: ["127.0.0.1:0"]
    workers: {{ start: 2, min_spare: 1, max_spare: 4, max: 4 }}
    memory: {{ interval: 100ms }}
    cgroup: {{ memory_max: 48MiB, pids_max: 64 }}
    env: {{ ECHO_PY: "{ECHO_PY}", GROW_AFTER_MS: "300", GROW_STEP_MIB: "8", GROW_MAX_MIB: "200" }}
"""
        # corral in its own mount namespace, where the cgroup hierarchies are read-only.
        script = "".join(f"echo $$ > {d}/cgroup.procs && " for d in self.cg.values())
        script += "".join(f"mount -o remount,bind,ro {CG}/{ctl} && " for ctl in CONTROLLERS)
        c = self.corral(["run", "{config}"], config=config,
                        launcher=("unshare", "-m", "--propagation", "private", "/bin/sh", "-c",
                                  script + 'exec "$0" "$@"'))
        c.wait_log(r"above cgroup.memory_max 50331648 \(enforced by sampling: no cgroup\); "
                   r"killing it", timeout=30, count=2)
        self.assertEqual(len(re.findall(r"job app: cgroup: create cgroup .*Read-only file system; "
                                        r"the job runs without per-worker cgroups, and memory_max "
                                        r"50331648 is enforced by RSS sampling", c.log_text())), 1,
                         c.log_text())
        self.assertEqual(c.stop(), 0)
        self.assertFalse(os.path.exists(f"{self.cg['memory']}/corral-app"))

    def test_slot_cgroups_are_adopted_across_an_upgrade(self):
        binary = self.upgradable_binary()
        c = self.start(self.echo_job("{ memory_max: 96MiB, pids_max: 32 }"), binary)
        job = c.wait_idle(self.sbdir, "app", 2)
        before = {d: os.stat(d).st_ino for ctl in ("memory", "pids")
                  for d in self.slot_dirs(ctl, "app")}
        self.assertEqual(len(before), 4)
        pids = sorted(w["pid"] for w in job["workers"])
        c.signal(signal.SIGUSR2)
        c.wait_log(r"binary upgrade: took over 1 job\(s\)", timeout=20)
        after = {d: os.stat(d).st_ino for ctl in ("memory", "pids")
                 for d in self.slot_dirs(ctl, "app")}
        self.assertEqual(after, before, "slot cgroups recreated or leaked by the upgrade")
        for w in c.job(self.sbdir, "app")["workers"]:
            self.assertIn(w["pid"], pids)
            self.assertEqual(
                read(f"{self.cg['memory']}/corral-app/slot-{w['slot']}/cgroup.procs").split(),
                [str(w["pid"])])
        # The new image still recycles into fresh slot cgroups and removes the old ones.
        for w in c.job(self.sbdir, "app")["workers"]:
            os.kill(w["pid"], signal.SIGTERM)
        wait_until(lambda: (lambda j: j and j["idle"] >= 1 and not set(
            w["pid"] for w in j["workers"]) & set(pids))(c.job(self.sbdir, "app")),
            timeout=20, log=c)
        job = c.job(self.sbdir, "app")
        for w in job["workers"]:
            self.assertEqual(
                read(f"{self.cg['memory']}/corral-app/slot-{w['slot']}/cgroup.procs").split(),
                [str(w["pid"])])
        self.assertEqual(c.stop(), 0)
        self.assertFalse(os.path.exists(f"{self.cg['memory']}/corral-app"))
        self.assertFalse(os.path.exists(f"{self.cg['pids']}/corral-app"))


class BudgetTest(CgroupCase):
    def growing_pool(self, budget, extra=""):
        return f"""
scoreboard_dir: {self.sbdir}
jobs:
  app:
    command: ["{PYTHON}", "{os.path.join(HERE, 'grow_worker.py')}"]
    listen: ["127.0.0.1:0"]
    workers: {{ start: 4, min_spare: 2, max_spare: 6, max: 6 }}
    memory: {{ budget: {budget}, interval: 100ms }}
    env: {{ ECHO_PY: "{ECHO_PY}", GROW_STEP_MIB: "4", GROW_EVERY_MS: "100", GROW_MAX_MIB: "120" }}
{extra}"""

    def test_a_growing_pool_is_retired_under_the_budget_instead_of_oom_killed(self):
        # 4 workers growing to 120 MiB each would need 480 MiB of a 320 MiB cgroup.
        self.limit_memory(320)
        c = self.start(self.growing_pool("60%"))
        c.wait_idle(self.sbdir, "app", 2, timeout=20)
        budget = (320 << 20) // 100 * 60
        c.wait_log(rf"the pool uses \d+ bytes of memory, above memory.budget {budget}; retiring "
                   r"its largest idle worker", timeout=30, count=3)
        # The replacements are held to the budget too: the cgroup's OOM killer never fired.
        self.assertEqual(oom_kills(self.cg["memory"]), 0)
        self.assertIsNone(c.proc.poll())
        s = connect(c.port(self.sbdir, "app"))
        s.sendall(b"still here\n")
        self.assertEqual(recv_until(s), b"still here\n")
        s.close()
        self.assertEqual(c.stop(), 0)
        self.assertEqual(oom_kills(self.cg["memory"]), 0)
        self.assertNotIn("SIGKILL corral did not send", c.log_text())

    def test_a_budget_that_holds_fewer_than_min_spare_says_so_once_and_keeps_one(self):
        # Workers of ~60 MiB against a 100 MiB budget: one fits, min_spare 2 does not.
        prom = os.path.join(self.tmp, "corral.prom")
        config = f"""
scoreboard_dir: {self.sbdir}
metrics: {{ textfile: {prom}, interval: 200ms }}
jobs:
  app:
    command: ["{PYTHON}", "{os.path.join(HERE, 'grow_worker.py')}"]
    listen: ["127.0.0.1:0"]
    workers: {{ start: 1, min_spare: 2, max_spare: 4, max: 4 }}
    memory: {{ budget: 100MiB, interval: 100ms }}
    env: {{ ECHO_PY: "{ECHO_PY}", GROW_START_MIB: "60", GROW_MAX_MIB: "0" }}
"""
        c = self.start(config)
        c.wait_log(r"memory.budget 104857600 holds no more workers .* below min_spare 2",
                   timeout=20)
        wait_until(lambda: "corral_pool_budget_limited{pool=\"app\"} 1" in
                   (read(prom) if os.path.exists(prom) else ""), timeout=10, log=c)
        # No spin: said once (twice at most, when a first sample caught a worker before
        # its ballast), not at every look; and the pool stays at the worker it has.
        said = len(re.findall("holds no more workers", c.log_text()))
        self.assertLessEqual(said, 2, c.log_text())
        t_end = time.monotonic() + 1.5
        wait_until(lambda: time.monotonic() >= t_end, timeout=5)
        self.assertEqual(len(re.findall("holds no more workers", c.log_text())), said)
        self.assertEqual(len(re.findall("has room again", c.log_text())), said - 1)
        self.assertEqual(len(c.job(self.sbdir, "app")["workers"]), 1)
        self.assertEqual(c.stop(), 0)

    def test_the_budget_goes_on_across_an_upgrade(self):
        binary = self.upgradable_binary()
        self.limit_memory(320)
        c = self.start(self.growing_pool("200MiB"), binary)
        c.wait_log(r"above memory.budget 209715200; retiring", timeout=30)
        c.signal(signal.SIGUSR2)
        c.wait_log(r"binary upgrade: took over 1 job\(s\)", timeout=20)
        at = len(re.findall(r"above memory.budget 209715200; retiring", c.log_text()))
        c.wait_log(r"above memory.budget 209715200; retiring", timeout=30, count=at + 2)
        self.assertEqual(oom_kills(self.cg["memory"]), 0)
        self.assertEqual(c.stop(), 0)

    def test_a_percentage_without_a_cgroup_limit_is_a_check_warning_and_off(self):
        path = self.write("budget.yaml", f"""
jobs:
  app:
    command: ["{ECHO}"]
    listen: ["127.0.0.1:0"]
    memory: {{ budget: 90% }}
""")
        # The test's memory cgroup has no limit: run the check inside it.
        script = f"echo $$ > {self.cg['memory']}/cgroup.procs && exec \"$0\" \"$@\""
        import subprocess
        out = subprocess.run(["/bin/sh", "-c", script, CORRAL, "check", path],
                             capture_output=True, text=True, timeout=20)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn(f"{path}:6:23: warning: job \"app\": memory.budget 90% is of the cgroup "
                      "memory limit, and corral's cgroup has none; the budget is off", out.stderr)


class CgroupCheckTest(CorralTest):
    def test_values_out_of_range_are_check_errors_with_their_position(self):
        path = self.write("cg.yaml", f"""
jobs:
  app:
    command: ["{ECHO}"]
    listen: ["127.0.0.1:0"]
    cgroup: {{ memory_max: 1MiB, pids_max: 0, cpu_weight: 20000, memroy_high: 1GiB }}
""")
        out = self.run_cli(["check", path])
        self.assertEqual(out.returncode, 2)
        self.assertIn(f"{path}:6:27: cgroup.memory_max: 1MiB is below 4MiB", out.stderr)
        self.assertIn(f"{path}:6:43: cgroup.pids_max must be between 1 and 4194304, not 0",
                      out.stderr)
        self.assertIn(f"{path}:6:58: cgroup.cpu_weight must be between 1 and 10000, not 20000",
                      out.stderr)
        self.assertIn('unknown key "memroy_high" in cgroup; did you mean "memory_high"?', out.stderr)

    def test_a_budget_that_is_not_a_size_or_a_percentage_is_a_check_error(self):
        path = self.write("b.yaml", f"""
jobs:
  app:
    command: ["{ECHO}"]
    listen: ["127.0.0.1:0"]
    memory: {{ budget: 150% }}
""")
        out = self.run_cli(["check", path])
        self.assertEqual(out.returncode, 2)
        self.assertIn(f"{path}:6:23: memory.budget: \"150%\" must be a whole percentage from 1% "
                      "to 100%", out.stderr)

    @unittest.skipUnless(os.geteuid() == 0 and shutil.which("setpriv"), "needs root and setpriv")
    def test_cgroup_on_a_non_root_run_is_an_error(self):
        path = self.write("cg.yaml", f"""
scoreboard_dir: {self.tmp}/sb
jobs:
  app:
    command: ["{ECHO}"]
    listen: ["127.0.0.1:0"]
    cgroup: {{ memory_max: 64MiB }}
""")
        import subprocess
        out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                              CORRAL, "run", path], capture_output=True, text=True, timeout=20)
        self.assertNotEqual(out.returncode, 0)
        self.assertIn(f"{path}:7:13: job \"app\": cgroup: needs root or a delegated cgroup v2 "
                      "subtree, and this corral runs as uid 65534", out.stderr)
        out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                              CORRAL, "check", path], capture_output=True, text=True, timeout=20)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("\"corral run\" would refuse it", out.stderr)


if __name__ == "__main__":
    unittest.main()
