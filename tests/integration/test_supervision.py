"""Supervision: respawn, crash-loop backoff, graceful and fast stop."""
import os
import re
import signal
import time

from harness import CorralTest, PROBE, PYTHON, wait_until, pid_alive


class SupervisionTest(CorralTest):
    def config(self, mode="prefork", env="", extra="", workers="{ start: 2, min_spare: 0, max_spare: 8, max: 8 }",
               command=None, name="probe"):
        probe_dir = os.path.join(self.tmp, "probes")
        os.makedirs(probe_dir, exist_ok=True)
        command = command or f'["{PYTHON}", "{PROBE}"]'
        return probe_dir, f"""
scoreboard_dir: {self.sbdir}
jobs:
  {name}:
    command: {command}
    mode: {mode}
    listen: ["127.0.0.1:0"]
    workers: {workers}
    env: {{ PROBE_DIR: "{probe_dir}", PROBE_IDLE: "1" {env} }}
{extra}"""

    def test_a_dead_worker_is_replaced(self):
        probe_dir, config = self.config(workers="{ start: 2, min_spare: 2, max_spare: 8, max: 8 }")
        c = self.corral(["run", "{config}"], config=config)
        first = wait_until(lambda: (lambda r: r if len(r) >= 2 else None)(self.probes(probe_dir)))
        victim = sorted(first)[0]
        os.kill(victim, signal.SIGKILL)
        c.wait_log(rf"worker {victim} \(slot \d+\) killed by signal SIGKILL")
        wait_until(lambda: len(self.probes(probe_dir)) >= 3, what="a replacement")
        job = wait_until(lambda: (lambda j: j if j and len(j["workers"]) == 2 and
                                  victim not in [w["pid"] for w in j["workers"]] else None)(c.job(self.sbdir, "probe")))
        self.assertEqual(job["state"], "running")
        self.assertEqual(c.stop(), 0)

    def test_crash_loop_backs_off_then_fails_and_exits_1(self):
        probe_dir, config = self.config(env=', PROBE_EXIT: "3"', extra="    restart: { backoff_max: 400ms, max_failures: 5 }\n",
                                        workers="{ start: 1, min_spare: 1, max_spare: 2, max: 4 }")
        c = self.corral(["run", "{config}"], config=config)
        self.assertEqual(c.wait_exit(timeout=20), 1)
        log = c.log_text()
        delays = re.findall(r"backing off, next try in (\S+) \(failure (\d) of 5\)", log)
        self.assertEqual([d for d, _ in delays], ["100ms", "200ms", "400ms", "400ms"], log)
        self.assertIn("5 consecutive failures; giving up", log)
        self.assertIn("every job has failed", log)
        # Never a fork storm: one start per failure.
        self.assertEqual(len(self.probes(probe_dir)), 5)

    def test_backing_off_is_visible_in_status(self):
        probe_dir, config = self.config(env=', PROBE_EXIT: "1"', extra="    restart: { backoff_max: 30s, max_failures: 0 }\n",
                                        workers="{ start: 1, min_spare: 1, max_spare: 2, max: 4 }")
        c = self.corral(["run", "{config}"], config=config)
        c.wait_log(r"next try in 800ms")
        job = wait_until(lambda: (lambda j: j if j and j["state"] == "backing-off" else None)(c.job(self.sbdir, "probe")))
        self.assertGreater(job["retry_in"], 0)
        out = self.run_cli(["status", "--scoreboard-dir", self.sbdir])
        self.assertIn("backing off, next try in", out.stdout)
        self.assertEqual(c.stop(), 0)

    def test_graceful_stop_terms_then_kills_after_graceful_timeout(self):
        probe_dir, config = self.config(env=', PROBE_IGNORE_TERM: "1"', extra="    graceful_timeout: 700ms\n")
        c = self.corral(["run", "{config}"], config=config)
        pids = list(wait_until(lambda: (lambda r: r if len(r) >= 2 else None)(self.probes(probe_dir))))
        c.wait_idle(self.sbdir, "probe", 2)
        start = time.monotonic()
        c.signal(signal.SIGTERM)
        self.assertEqual(c.wait_exit(), 0)
        elapsed = time.monotonic() - start
        self.assertGreaterEqual(elapsed, 0.6)
        self.assertIn("did not stop within graceful_timeout; SIGKILL", c.log_text())
        for p in pids:
            self.assertFalse(pid_alive(p))

    def test_sigint_and_sigquit_stop_with_0(self):
        for sig in (signal.SIGINT, signal.SIGQUIT):
            probe_dir, config = self.config(env=', PROBE_IGNORE_TERM: "1"', extra="    graceful_timeout: 60s\n",
                                            name=f"probe{int(sig)}")
            c = self.corral(["run", "{config}"], config=config, name=f"corral{int(sig)}")
            c.wait_idle(self.sbdir, f"probe{int(sig)}", 2)
            pids = [w["pid"] for w in c.job(self.sbdir, f"probe{int(sig)}")["workers"]]
            c.signal(sig)
            if sig == signal.SIGINT:
                # Workers ignore SIGTERM and graceful_timeout is long: SIGINT waits, SIGQUIT then ends it.
                c.wait_log("SIGINT: stopping gracefully")
                self.assertIsNone(c.proc.poll())
                c.signal(signal.SIGQUIT)
            self.assertEqual(c.wait_exit(), 0)
            for p in pids:
                self.assertFalse(pid_alive(p))
            self.assertFalse(os.path.exists(os.path.join(self.sbdir, f"probe{int(sig)}.scoreboard")) and
                             self.run_cli(["status", "--scoreboard-dir", self.sbdir]).returncode == 0)

    def test_a_worker_truncating_the_scoreboard_cannot_crash_the_supervisor(self):
        probe_dir, config = self.config(env=', PROBE_TRUNCATE: "1"')
        c = self.corral(["run", "{config}"], config=config)
        c.wait_log(r"a worker shrank a scoreboard file \(ftruncate\); its size was restored")
        # The supervisor lives on, and `corral status` reads the restored file.
        wait_until(lambda: c.job(self.sbdir, "probe") is not None, log=c)
        self.assertIsNone(c.proc.poll())
        self.assertEqual(c.stop(), 0)

    def test_plain_mode_keeps_exact_copies(self):
        probe_dir, config = self.config(mode="plain", workers="{ start: 3 }")
        c = self.corral(["run", "{config}"], config=config)
        reports = wait_until(lambda: (lambda r: r if len(r) >= 3 else None)(self.probes(probe_dir)))
        os.kill(sorted(reports)[0], signal.SIGTERM)
        wait_until(lambda: len(self.probes(probe_dir)) >= 4, what="replacement copy")
        job = wait_until(lambda: (lambda j: j if j and len(j["workers"]) == 3 else None)(c.job(self.sbdir, "probe")))
        self.assertEqual(len(job["workers"]), 3)
        self.assertEqual(c.stop(), 0)

    def test_status_says_when_nothing_runs(self):
        out = self.run_cli(["status", "--scoreboard-dir", self.sbdir])
        self.assertEqual(out.returncode, 3)
        self.assertIn("no supervisor is running", out.stderr)


class ForkFailureTest(CorralTest):
    def test_fork_failure_backs_off_without_giving_up(self):
        import shutil
        import subprocess
        import unittest
        if os.geteuid() != 0 or not shutil.which("setpriv") or not shutil.which("prlimit"):
            raise unittest.SkipTest("needs root, setpriv and prlimit to run corral as nobody")
        # RLIMIT_NPROC is not enforced for root: run corral as nobody, allowed 4 processes
        # of that user in all (corral and 3 workers), and ask for 6 workers.
        os.chmod(self.tmp, 0o777)
        sb = os.path.join(self.tmp, "sbn")
        os.makedirs(sb)
        # nobody's own: a scoreboard directory others can write is refused (SECURITY.md).
        import pwd
        nobody = pwd.getpwnam("nobody")
        os.chown(sb, nobody.pw_uid, nobody.pw_gid)
        config = self.write("nproc.yaml", f"""
scoreboard_dir: {sb}
jobs:
  echo:
    command: ["{os.path.join(os.environ.get("CORRAL_BUILD_DIR", "build"), "examples", "echo")}"]
    listen: ["127.0.0.1:0"]
    workers: {{ start: 6, min_spare: 6, max_spare: 8, max: 8 }}
    restart: {{ backoff_max: 300ms, max_failures: 3 }}
""")
        from harness import CORRAL
        log_path = os.path.join(self.tmp, "nproc.log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(["prlimit", "--nproc=4:4", "setpriv", "--reuid=nobody", "--regid=nogroup",
                                     "--clear-groups", CORRAL, "run", config], stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        self.track_pid(proc.pid)

        def text():
            with open(log_path, "rb") as f:
                return f.read().decode(errors="replace")
        wait_until(lambda: "next try in 300ms" in text() and text().count("resources short") >= 4,
                   timeout=20, what=f"fork failures; log:\n{text()}")
        # More failures than max_failures (3), and still running: resource shortage is
        # not the job's fault. The workers that could start serve.
        self.assertIsNone(proc.poll(), text())
        self.assertNotIn("giving up", text())
        self.assertIn("Resource temporarily unavailable", text())
        delays = re.findall(r"resources short\); backing off, next try in (\S+)", text())
        # Exponential, capped at backoff_max (a worker that comes up resets it).
        self.assertLessEqual(set(delays), {"100ms", "200ms", "300ms"}, text())
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(timeout=15), 0)


class HostileEnvironmentTest(CorralTest):
    def run_echo_under_nofile(self, nofile, job_yaml, name):
        """corral run under `prlimit --nofile=NOFILE` with one echo job (job_yaml: its keys
        besides command, indented four spaces); returns the process and its LogFile."""
        import shutil
        import subprocess
        import unittest
        if not shutil.which("prlimit"):
            raise unittest.SkipTest("needs prlimit")
        from harness import CORRAL, LogFile
        echo = os.path.join(os.environ.get("CORRAL_BUILD_DIR", "build"), "examples", "echo")
        config = self.write(f"{name}.yaml", f"""
scoreboard_dir: {self.sbdir}
jobs:
  echo:
    command: ["{echo}"]
{job_yaml}""")
        log_path = os.path.join(self.tmp, f"{name}.log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(["prlimit", f"--nofile={nofile}", CORRAL, "run", config], stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.track_pid(proc.pid)
        return proc, LogFile(log_path)

    def test_full_filesystem_for_scoreboards_is_a_clear_setup_error(self):
        import shutil
        import subprocess
        import unittest
        if os.geteuid() != 0 or not shutil.which("unshare"):
            raise unittest.SkipTest("needs root and unshare to mount a tiny tmpfs")
        from harness import CORRAL
        sb = os.path.join(self.tmp, "tiny")
        os.makedirs(sb)
        config = self.write("full.yaml", f"""
scoreboard_dir: {sb}
jobs:
  echo:
    command: ["/bin/cat"]
    mode: inetd
    listen: ["127.0.0.1:0"]
    workers: {{ start: 1, max: 64 }}
""")
        # 4 KiB of tmpfs cannot hold a scoreboard for 64 workers (2048 + 128 * 256 bytes):
        # corral must say so at start (exit 1), not die of SIGBUS later.
        script = f"mount -t tmpfs -o size=4k,mode=0755 tmpfs {sb} || exit 77; exec {CORRAL} run {config}"
        out = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=30)
        if out.returncode == 77:
            raise unittest.SkipTest("cannot mount tmpfs here")
        self.assertEqual(out.returncode, 1, out.stderr)
        self.assertIn("No space left on device", out.stderr)
        self.assertIn("echo.scoreboard", out.stderr)

    def test_status_needs_read_access_only(self):
        import shutil
        import subprocess
        import unittest
        if os.geteuid() != 0 or not shutil.which("setpriv"):
            raise unittest.SkipTest("needs root and setpriv to read as nobody")
        from harness import CORRAL
        os.chmod(self.tmp, 0o755)
        probe_dir, config = SupervisionTest.config(self, workers="{ start: 2, min_spare: 1, max_spare: 4, max: 4 }")
        c = self.corral(["run", "{config}"], config=config)
        c.wait_idle(self.sbdir, "probe", 1)
        sb = os.path.join(self.sbdir, "probe.scoreboard")
        self.assertEqual(os.stat(sb).st_mode & 0o777, 0o644)  # nobody else may write it
        out = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", CORRAL, "status",
                              "--scoreboard-dir", self.sbdir, "--json"], capture_output=True, text=True, timeout=20)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn('"name":"probe"', out.stdout)
        denied = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "/usr/bin/python3",
                                 "-c", f"open({sb!r}, 'r+b')"], capture_output=True, text=True, timeout=20)
        self.assertNotEqual(denied.returncode, 0)
        self.assertIn("PermissionError", denied.stderr)
        self.assertEqual(c.stop(), 0)

    def test_supervisor_out_of_fds_backs_off_and_recovers(self):
        from harness import job_status
        # 24 fds in all: the supervisor's own (signalfd, epoll, listener, scoreboard, lock,
        # notify pipe) leave room for a few spawns at a time (each needs a report pipe
        # until its worker is up): EMFILE, a backoff that does not count as a failure,
        # and recovery as workers come up.
        proc, log = self.run_echo_under_nofile("24:24", """    listen: ["127.0.0.1:0"]
    workers: { start: 16, min_spare: 16, max_spare: 16, max: 16 }
    restart: { backoff_max: 200ms, max_failures: 2 }
""", "nofile")
        text = log.log_text
        wait_until(lambda: "Too many open files" in text(), timeout=20, log=log)
        job = wait_until(lambda: (lambda j: j if j and j["idle"] == 16 else None)(job_status(self.sbdir, "echo")),
                         timeout=30, log=log)
        self.assertEqual(len(job["workers"]), 16)
        self.assertIsNone(proc.poll())
        self.assertNotIn("giving up", text())
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(timeout=15), 0)

    def test_worker_out_of_fds_neither_dies_nor_spins(self):
        import time as _time
        from harness import connect, job_status
        # Workers get the soft limit corral was started with (8): 0-2, two listeners, the
        # scoreboard, the notify pipe and the library's epoll take fds 0..7 (the dynamic
        # loader had fd 7 free while it ran), so every accept fails with EMFILE. The
        # supervisor itself raises its own soft limit to the hard one.
        proc, log = self.run_echo_under_nofile("8:256", """    listen: ["127.0.0.1:0", "127.0.0.1:0"]
    accept_mutex: epoll
    workers: { start: 2, min_spare: 2, max_spare: 2, max: 2 }
""", "emfile")
        job = wait_until(lambda: (lambda j: j if j and j["idle"] == 2 else None)(job_status(self.sbdir, "echo")),
                         log=log)
        pids = [w["pid"] for w in job["workers"]]
        port = int(job["listeners"][0].rsplit(":", 1)[1])
        s = connect(port)  # queued; every worker that tries gets EMFILE
        s.sendall(b"x\n")

        def cpu(pid):
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return int(fields[11]) + int(fields[12])
        before = sum(cpu(p) for p in pids)
        _time.sleep(1.0)  # the measurement window
        after = sum(cpu(p) for p in pids)
        ticks = os.sysconf("SC_CLK_TCK")
        self.assertLess((after - before) / ticks, 0.3)  # retries pace themselves, no spinning
        self.assertTrue(all(pid_alive(p) for p in pids), log.log_text())
        s.close()
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(timeout=15), 0)
