"""What a worker gets (PRODUCT.md): fds, environment, process group, cwd, user."""
import os
import pwd
import signal
import unittest

from harness import CorralTest, PROBE, PYTHON, wait_until, pid_alive


class SpawnContractTest(CorralTest):
    def start_probe_job(self, mode="prefork", extra="", listen=("127.0.0.1:0", "127.0.0.1:0"), workers=2,
                        env_extra=None):
        probe_dir = os.path.join(self.tmp, "probes")
        os.makedirs(probe_dir, exist_ok=True)
        os.chmod(probe_dir, 0o777)
        listen_yaml = "\n".join(f"      - {{ address: \"{a}\", name: l{i} }}" for i, a in enumerate(listen))
        config = f"""
scoreboard_dir: {self.sbdir}
jobs:
  probe:
    command: ["{PYTHON}", "{PROBE}", "--flag"]
    mode: {mode}
    listen:
{listen_yaml}
    workers: {{ start: {workers}, min_spare: 0, max_spare: 8, max: 8 }}
    env: {{ PROBE_DIR: "{probe_dir}", PROBE_IDLE: "1", GREETING: "hello world" }}
    cwd: "{self.tmp}"
{extra}"""
        env = {"NOTIFY_SOCKET": "/nonexistent/notify", "WATCHDOG_USEC": "1000000", "SUPERVISOR_ONLY_NOT": "x"}
        env.update(env_extra or {})
        c = self.corral(["run", "{config}"], config=config, env=env)
        reports = wait_until(lambda: (lambda r: r if len(r) >= workers else None)(self.probes(probe_dir)),
                             what="probe reports", log=c)
        return c, reports

    def test_prefork_fd_and_environment_contract(self):
        c, reports = self.start_probe_job()
        for pid, r in reports.items():
            env = r["env"]
            self.assertEqual(env["LISTEN_FDS"], "2")
            self.assertEqual(env["LISTEN_PID"], str(pid))
            self.assertEqual(env["LISTEN_FDNAMES"], "l0:l1")
            self.assertEqual(env["CORRAL_JOB"], "probe")
            self.assertEqual(env["GREETING"], "hello world")
            self.assertEqual(env["SUPERVISOR_ONLY_NOT"], "x")  # the supervisor's own environment
            for gone in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                self.assertNotIn(gone, env)
            lock_fd, sb_fd = env["CORRAL_LOCK_FD"], env["CORRAL_SCOREBOARD_FD"]
            self.assertEqual((lock_fd, sb_fd, env["CORRAL_NOTIFY_FD"]), ("5", "6", "7"))
            self.assertIn(env["CORRAL_SLOT"], [str(i) for i in range(16)])
            fds = r["fds"]
            # Exactly 0, 1, 2, the two listeners, the lock, the scoreboard and the notify
            # pipe: nothing else. (Python's own listing fd is gone by the time it is checked.)
            self.assertEqual(sorted(int(f) for f in fds), [0, 1, 2, 3, 4, 5, 6, 7], fds)
            self.assertTrue(fds["7"].startswith("pipe:"), fds["7"])
            self.assertEqual(fds["0"], "/dev/null")
            self.assertTrue(fds["3"].startswith("socket:"))
            self.assertTrue(fds["4"].startswith("socket:"))
            self.assertTrue(fds["6"].endswith("/probe.scoreboard"), fds["6"])
            self.assertEqual(r["argv"][1:], ["--flag"])
            self.assertEqual(r["cwd"], self.tmp)
            # Own process group: a terminal's Ctrl-C reaches only the supervisor.
            self.assertEqual(r["pgid"], pid)
            self.assertEqual(r["ppid"], c.pid)
            # Nothing blocked or ignored is left over from the supervisor.
            self.assertEqual(int(r["SigBlk"], 16), 0)
        self.assertEqual(c.stop(), 0)

    def test_signals_ignored_by_whoever_started_corral(self):
        # As under nohup, or from a shell's background job: SIGHUP and SIGINT ignored
        # (the disposition survives exec), and SIGALRM, which corral does not handle.
        # corral still reloads on SIGHUP and stops on SIGINT, and its workers start with
        # none of them ignored.
        launcher = (PYTHON, "-c", "import os, signal, sys; "
                    "signal.signal(signal.SIGHUP, signal.SIG_IGN); "
                    "signal.signal(signal.SIGINT, signal.SIG_IGN); "
                    "signal.signal(signal.SIGALRM, signal.SIG_IGN); "
                    "os.execv(sys.argv[1], sys.argv[1:])")
        probe_dir = os.path.join(self.tmp, "probes")
        os.makedirs(probe_dir, exist_ok=True)
        config = f"""
scoreboard_dir: {self.sbdir}
jobs:
  probe:
    command: ["{PYTHON}", "{PROBE}"]
    listen: ["127.0.0.1:0"]
    workers: {{ start: 1, min_spare: 0, max_spare: 8, max: 8 }}
    env: {{ PROBE_DIR: "{probe_dir}", PROBE_IDLE: "1" }}
"""
        c = self.corral(["run", "{config}"], config=config, launcher=launcher)
        reports = wait_until(lambda: self.probes(probe_dir) or None, what="probe report", log=c)
        # (The probe, a Python program, ignores SIGPIPE and SIGXFSZ itself.)
        ours = sum(1 << (s - 1) for s in (signal.SIGHUP, signal.SIGINT, signal.SIGALRM))
        for r in reports.values():
            self.assertEqual(int(r["SigIgn"], 16) & ours, 0, f"a worker inherited SigIgn {r['SigIgn']}")
        c.signal(signal.SIGHUP)
        c.wait_log("reload done: generation 2")
        c.signal(signal.SIGINT)
        self.assertEqual(c.proc.wait(timeout=15), 0)

    def test_plain_mode_gets_only_listeners(self):
        c, reports = self.start_probe_job(mode="plain", listen=("127.0.0.1:0",), workers=2)
        for pid, r in reports.items():
            self.assertEqual(sorted(int(f) for f in r["fds"]), [0, 1, 2, 3])
            self.assertEqual(r["env"]["LISTEN_FDS"], "1")
            self.assertEqual(r["env"]["LISTEN_PID"], str(pid))
            for key in ("CORRAL_LOCK_FD", "CORRAL_SCOREBOARD_FD", "CORRAL_SLOT"):
                self.assertNotIn(key, r["env"])
        job = c.job(self.sbdir, "probe")
        self.assertEqual(sorted(w["state"] for w in job["workers"]), ["running", "running"])
        self.assertEqual(c.stop(), 0)

    @unittest.skipUnless(os.geteuid() == 0, "needs root to change users")
    def test_user_and_group_drop(self):
        nobody = pwd.getpwnam("nobody")
        c, reports = self.start_probe_job(extra="    user: nobody\n    group: nogroup\n", workers=1)
        r = next(iter(reports.values()))
        self.assertEqual(r["uid"], nobody.pw_uid)
        self.assertEqual(r["gid"], __import__("grp").getgrnam("nogroup").gr_gid)
        self.assertNotIn(0, r["groups"])
        self.assertEqual(r["env"]["USER"], "nobody")
        self.assertEqual(r["env"]["LOGNAME"], "nobody")
        self.assertEqual(r["env"]["HOME"], nobody.pw_dir)
        # The scoreboard is not writable by the worker's user except through its fd.
        sb = os.path.join(self.sbdir, "probe.scoreboard")
        self.assertEqual(os.stat(sb).st_mode & 0o022, 0)
        self.assertEqual(c.stop(), 0)

    def test_workers_die_with_a_killed_supervisor(self):
        c, reports = self.start_probe_job(workers=3)
        pids = list(reports)
        os.kill(c.pid, signal.SIGKILL)
        c.proc.wait(timeout=10)
        wait_until(lambda: not any(pid_alive(p) for p in pids), timeout=2.0, what="orphans to die")
