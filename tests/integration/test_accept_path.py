"""Issue 14: the accept path. `accept_mutex: auto` on exactly one listener is lock-free
(workers block in accept4 on a blocking socket); two or more keep the token pipe;
explicit kinds are unchanged. The supervisor alone sets O_NONBLOCK. What a user sees:
the workers' environment and fds, bytes on sockets, exit codes, timings."""
import os
import platform
import re
import signal
import socket
import threading
import time

import harness
from harness import (CorralTest, BUILD, HERE, PYTHON, SOURCE, connect, pid_alive, recv_until,
                     wait_until)
from test_reload import LoadClient

ECHO = os.path.join(BUILD, "examples", "echo")
HELLO = os.path.join(BUILD, "examples", "hello-http")
ECHO_PY = os.path.join(SOURCE, "examples", "echo.py")
OLD_WORKER = os.path.join(HERE, "old_protocol_worker.py")
LOST_SIGTERM = os.path.join(HERE, "lost_sigterm.py")
PY_LIB = os.path.join(SOURCE, "lib", "worker", "python")
GREETER = os.path.join(SOURCE, "examples", "legacy-greeter.sh")
LAUNCHER = [PYTHON, os.path.join(HERE, "sd_launcher.py")]
O_NONBLOCK = 0o4000
# /proc/PID/syscall numbers, to see where an idle worker waits (x86-64 only).
SYSCALLS = {"x86_64": {"accept4": 288, "poll": 7, "read": 0}}.get(platform.machine())


def environ_of(pid):
    with open(f"/proc/{pid}/environ", "rb") as f:
        return dict(kv.split("=", 1) for kv in f.read().decode().split("\0") if "=" in kv)


def nonblocking(pid, fd):
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("flags:"):
                return bool(int(line.split()[1], 8) & O_NONBLOCK)
    raise AssertionError(f"no flags in /proc/{pid}/fdinfo/{fd}")


def syscall_of(pid):
    try:
        with open(f"/proc/{pid}/syscall") as f:
            first = f.read().split()[0]
    except (OSError, IndexError):
        return None
    return int(first) if first.lstrip("-").isdigit() else None


def proc_state(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def echo_once(port, line=b"hello corral\n"):
    with connect(port) as s:
        s.sendall(line)
        return recv_until(s)


class AcceptPathTest(CorralTest):
    def start(self, command, listen=("127.0.0.1:0",), workers="{ start: 3, min_spare: 3, max_spare: 6, max: 8 }",
              extra="", mode="prefork", name="echo", idle=3):
        c = self.start_job(name, command, listen, workers, extra=extra, mode=mode)
        c.wait_idle(self.sbdir, name, idle)
        return c

    def worker_pids(self, c, name="echo"):
        job = c.job(self.sbdir, name)
        return [w["pid"] for w in job["workers"] if w["state"] == "idle"]

    def assert_waiting_in(self, pids, call, c):
        if SYSCALLS is None:
            return
        want = SYSCALLS[call]
        wait_until(lambda: all(syscall_of(p) == want for p in pids), timeout=10,
                   what=f"every idle worker in {call}", log=c)

    # ---- 1. what auto means --------------------------------------------------

    def test_auto_on_one_listener_means_no_lock_and_a_blocking_accept(self):
        c = self.start(f'["{ECHO}"]')
        port = c.port(self.sbdir, "echo")
        pids = self.worker_pids(c)
        for pid in pids:
            env = environ_of(pid)
            self.assertEqual(env["CORRAL_LOCK_KIND"], "none")
            self.assertNotIn("CORRAL_LOCK_FD", env)
            self.assertEqual(env["LISTEN_FDS"], "1")
            self.assertFalse(nonblocking(pid, 3), "the listener must be blocking")
            # fd 4 is the scoreboard now that there is no lock fd.
            self.assertEqual(env["CORRAL_SCOREBOARD_FD"], "4")
        self.assert_waiting_in(pids, "accept4", c)
        for i in range(20):
            self.assertEqual(echo_once(port, b"line %d\n" % i), b"line %d\n" % i)
        # idle and busy as before: busy for exactly as long as a client holds a connection.
        with connect(port) as s:
            s.sendall(b"x\n")
            self.assertEqual(recv_until(s), b"x\n")
            wait_until(lambda: c.job(self.sbdir, "echo")["busy"] == 1, log=c)
        wait_until(lambda: c.job(self.sbdir, "echo")["busy"] == 0, log=c)
        self.assertEqual(c.stop(), 0)

    def test_auto_on_two_listeners_keeps_the_token_pipe_and_non_blocking_sockets(self):
        c = self.start(f'["{ECHO}"]', listen=("127.0.0.1:0", "127.0.0.1:0"))
        ports = [c.port(self.sbdir, "echo", i) for i in (0, 1)]
        for pid in self.worker_pids(c):
            env = environ_of(pid)
            self.assertEqual(env["CORRAL_LOCK_KIND"], "pipe")
            self.assertEqual(env["CORRAL_LOCK_FD"], "5")
            self.assertTrue(nonblocking(pid, 3) and nonblocking(pid, 4))
        for i in range(10):
            self.assertEqual(echo_once(ports[i % 2]), b"hello corral\n")
        self.assertEqual(c.stop(), 0)

    def test_explicit_kinds_are_unchanged_on_one_listener(self):
        for kind, has_fd in (("pipe", True), ("fcntl", True), ("epoll", False), ("none", False)):
            with self.subTest(kind=kind):
                c = self.start(f'["{ECHO}"]', extra=f"    accept_mutex: {kind}\n")
                port = c.port(self.sbdir, "echo")
                for pid in self.worker_pids(c):
                    env = environ_of(pid)
                    self.assertEqual(env["CORRAL_LOCK_KIND"], kind)
                    self.assertEqual("CORRAL_LOCK_FD" in env, has_fd)
                    self.assertTrue(nonblocking(pid, 3), f"{kind}: listeners stay O_NONBLOCK")
                self.assertEqual(echo_once(port), b"hello corral\n")
                self.assertEqual(c.stop(), 0)

    def test_inetd_acceptors_block_in_accept_on_one_listener(self):
        c = self.start(f'["{GREETER}"]', mode="inetd", name="greet",
                       workers="{ start: 3, min_spare: 2, max_spare: 4, max: 8 }", idle=3)
        port = c.port(self.sbdir, "greet")
        pids = self.worker_pids(c, "greet")
        for pid in pids:
            self.assertFalse(nonblocking(pid, 3))
        self.assert_waiting_in(pids, "accept4", c)
        for i in range(5):
            with connect(port) as s:
                s.sendall(b"world\n")
                self.assertIn(b"hello, world\n", recv_until(s, b"REMOTE_ADDR=127.0.0.1\n"))
        t0 = time.monotonic()
        self.assertEqual(c.stop(), 0)
        self.assertLess(time.monotonic() - t0, 3.0)

    def test_a_stopped_idle_worker_does_not_stall_a_lock_free_pool(self):
        # No mutex to hog: a worker stopped while blocked in accept leaves the kernel's
        # queue of waiters, and the others take every connection at once.
        c = self.start(f'["{ECHO}"]')
        port = c.port(self.sbdir, "echo")
        pids = self.worker_pids(c)
        self.assert_waiting_in(pids, "accept4", c)
        os.kill(pids[0], signal.SIGSTOP)
        self.addCleanup(lambda: pid_alive(pids[0]) and os.kill(pids[0], signal.SIGCONT))
        # Until it has run and stopped, it is still queued in accept4, and may take a
        # connection that arrives meanwhile (the kernel looks at the queue before the
        # signal): wait until it is stopped for real.
        wait_until(lambda: proc_state(pids[0]) == "T", log=c, what="the worker stopped")
        worst = 0.0
        for i in range(30):
            t0 = time.monotonic()
            self.assertEqual(echo_once(port, b"s%d\n" % i), b"s%d\n" % i)
            worst = max(worst, time.monotonic() - t0)
        self.assertLess(worst, 1.0)
        self.assertNotIn("accept mutex", c.log_text())  # no lock audit applies, none misfires
        os.kill(pids[0], signal.SIGCONT)
        self.assertEqual(echo_once(port), b"hello corral\n")
        self.assertEqual(c.stop(), 0)

    # ---- 2. the supervisor alone owns O_NONBLOCK -----------------------------

    def test_reload_from_one_to_two_listeners_and_back_sets_the_flag_each_time(self):
        config = lambda listen: f"""
scoreboard_dir: {self.sbdir}
jobs:
  echo:
    command: ["{ECHO}"]
    listen: [{listen}]
    workers: {{ start: 2, min_spare: 2, max_spare: 4, max: 8 }}
"""
        port, port2 = free_port(), free_port()
        fixed = config(f'"127.0.0.1:{port}"')
        c = self.corral(["run", "{config}"], config=fixed)
        c.wait_idle(self.sbdir, "echo", 2)

        def current(kind, blocking):
            job = c.job(self.sbdir, "echo")
            if not job:
                return False
            pids = [w["pid"] for w in job["workers"] if w["state"] == "idle"
                    and w["generation"] == c.status(self.sbdir)["supervisor"]["generation"]]
            try:
                return len(pids) >= 2 and all(
                    environ_of(p)["CORRAL_LOCK_KIND"] == kind and nonblocking(p, 3) != blocking
                    for p in pids)
            except (OSError, KeyError):
                return False

        wait_until(lambda: current("none", True), log=c, what="lock-free, blocking")
        with open(c.config_path, "w") as f:
            f.write(config(f'"127.0.0.1:{port}", "127.0.0.1:{port2}"'))
        c.signal(signal.SIGHUP)
        wait_until(lambda: current("pipe", False), log=c, what="token pipe, O_NONBLOCK")
        self.assertEqual(echo_once(port), b"hello corral\n")
        self.assertEqual(echo_once(port2), b"hello corral\n")
        with open(c.config_path, "w") as f:
            f.write(fixed)
        c.signal(signal.SIGHUP)
        wait_until(lambda: current("none", True), log=c, what="lock-free, blocking again")
        self.assertEqual(echo_once(port), b"hello corral\n")
        self.assertEqual(c.stop(), 0)

    def test_a_socket_shared_by_two_jobs_with_different_needs_is_refused(self):
        sock = socket.socket()
        self.addCleanup(sock.close)
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        port = sock.getsockname()[1]
        config = f"""
scoreboard_dir: {self.sbdir}
jobs:
  first:
    command: ["{ECHO}"]
    listen: [{{ address: "127.0.0.1:{port}", name: web }}]
  second:
    command: ["{ECHO}"]
    listen: ["systemd:web"]
    accept_mutex: pipe
"""
        c = self.corral(["run", "{config}"], config=config,
                        launcher=LAUNCHER + ["--fds", str(sock.fileno()), "--names", "web", "--"],
                        pass_fds=(sock.fileno(),))
        self.assertEqual(c.wait_exit(15), 1)
        self.assertRegex(c.log_text(), rf"job second: listener 127\.0\.0\.1:{port} is also used by "
                                       r"another job, which needs it blocking while this one needs "
                                       r"it non-blocking")

    # ---- 3. workers of the old protocol and echo.py --------------------------

    def test_a_worker_of_the_old_protocol_still_works_on_a_lock_free_job(self):
        c = self.start(f'["{PYTHON}", "{OLD_WORKER}"]', extra="    graceful_timeout: 3s\n",
                       workers="{ start: 4, min_spare: 4, max_spare: 8, max: 8 }", idle=4)
        port = c.port(self.sbdir, "echo")
        for pid in self.worker_pids(c):
            self.assertEqual(environ_of(pid)["CORRAL_LOCK_KIND"], "none")
        for i in range(40):
            self.assertEqual(echo_once(port, b"old %d\n" % i), b"old %d\n" % i)
        failures = []

        def client(k):
            for i in range(50):
                try:
                    if echo_once(port, b"c%d %d\n" % (k, i)) != b"c%d %d\n" % (k, i):
                        failures.append((k, i))
                except OSError as e:
                    failures.append(repr(e))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        self.assertEqual(failures, [])
        # It herds: losers of a race block in accept until a later connection, so a stop
        # may wait for graceful_timeout (3 s) to end them; it is bounded and still exits 0.
        t0 = time.monotonic()
        self.assertEqual(c.stop(timeout=15), 0)
        self.assertLess(time.monotonic() - t0, 8.0)

    def test_echo_py_blocks_in_accept_and_serves(self):
        c = self.start(f'["{PYTHON}", "{ECHO_PY}"]')
        port = c.port(self.sbdir, "echo")
        pids = self.worker_pids(c)
        for pid in pids:
            self.assertFalse(nonblocking(pid, 3))
        self.assert_waiting_in(pids, "accept4", c)
        for i in range(10):
            self.assertEqual(echo_once(port, b"py %d\n" % i), b"py %d\n" % i)
        t0 = time.monotonic()
        self.assertEqual(c.stop(), 0)
        self.assertLess(time.monotonic() - t0, 3.0)

    # ---- 4. graceful stop, reload and upgrade with workers in accept ---------

    def check_prompt_stop(self, command):
        c = self.start(command, workers="{ start: 8, min_spare: 8, max_spare: 8, max: 8 }", idle=8,
                       extra="    graceful_timeout: 30s\n")
        pids = self.worker_pids(c)
        self.assert_waiting_in(pids, "accept4", c)
        # One worker alone first: it leaves at once with status 0 and is replaced.
        os.kill(pids[0], signal.SIGTERM)
        wait_until(lambda: not pid_alive(pids[0]), timeout=2.0, what="the worker to leave", log=c)
        c.wait_idle(self.sbdir, "echo", 8)
        t0 = time.monotonic()
        self.assertEqual(c.stop(), 0)
        took = time.monotonic() - t0
        # graceful_timeout is 30 s: only a prompt exit of every worker explains this.
        self.assertLess(took, 3.0, c.log_text())
        self.assertNotIn("SIGKILL", c.log_text())
        for p in pids:
            self.assertFalse(pid_alive(p))

    def test_sigterm_ends_c_workers_blocked_in_accept_promptly(self):
        self.check_prompt_stop(f'["{ECHO}"]')

    def test_sigterm_ends_python_workers_blocked_in_accept_promptly(self):
        self.check_prompt_stop(f'["{PYTHON}", "{ECHO_PY}"]')

    # A SIGTERM that lands just before a Python worker's main thread enters accept(),
    # read() or poll() runs no Python handler until that call returns (lost_sigterm.py
    # makes that state certain). The worker must still leave at once, not when the next
    # connection or token comes, nor at graceful_timeout's SIGKILL.
    def check_missed_sigterm(self, script, extra="", listen=("127.0.0.1:0",)):
        once = os.path.join(self.tmp, f"lost-sigterm-{time.monotonic_ns()}.pid")
        c = self.start_job("echo", f'["{PYTHON}", "{LOST_SIGTERM}", "{script}"]', listen,
                           "{ start: 2, min_spare: 2, max_spare: 4, max: 4 }",
                           extra=f"    graceful_timeout: 60s\n    env: {{ LOST_SIGTERM_ONCE: {once}, "
                                 f"PYTHONPATH: {PY_LIB} }}\n" + extra)
        victim = int(wait_until(lambda: harness.read_text(once), timeout=20,
                                what="the first worker to claim the missed SIGTERM", log=c))
        wait_until(lambda: not pid_alive(victim), timeout=5,
                   what=f"worker {victim} to leave after a SIGTERM its main thread missed", log=c)
        # Its exit line ("started worker N (slot" is there from the start).
        ended = re.compile(rf"worker {victim} \(slot \d+\) (exited|killed|ended)")
        wait_until(lambda: ended.search(c.log_text()), what="its exit logged", log=c)
        self.assertRegex(c.log_text(), rf"worker {victim} \(slot \d+\) exited with status 0")
        c.wait_idle(self.sbdir, "echo", 2)
        port = c.port(self.sbdir, "echo")
        for i in range(4):
            self.assertEqual(echo_once(port, b"after %d\n" % i), b"after %d\n" % i)
        t0 = time.monotonic()
        self.assertEqual(c.stop(), 0)
        self.assertLess(time.monotonic() - t0, 5.0, c.log_text())

    def test_echo_py_leaves_after_a_sigterm_missed_before_accept(self):
        self.check_missed_sigterm(ECHO_PY)

    def test_echo_py_leaves_after_a_sigterm_missed_before_the_pipe_token(self):
        self.check_missed_sigterm(ECHO_PY, extra="    accept_mutex: pipe\n")

    def _library_worker(self):
        return self.write("lib_echo.py", """import sys
import corral_worker


def handle(conn, addr, index):
    while data := conn.recv(4096):
        conn.sendall(data)


sys.exit(corral_worker.serve(handle))
""")

    def check_library_missed_sigterm(self, kind):
        self.check_missed_sigterm(self._library_worker(), extra=f"    accept_mutex: {kind}\n")

    def test_python_library_leaves_after_a_missed_sigterm_without_a_mutex(self):
        self.check_library_missed_sigterm("none")

    def test_python_library_leaves_after_a_missed_sigterm_with_the_pipe_mutex(self):
        self.check_library_missed_sigterm("pipe")

    def test_python_library_leaves_after_a_missed_sigterm_with_the_fcntl_mutex(self):
        self.check_library_missed_sigterm("fcntl")

    def test_python_library_leaves_after_a_missed_sigterm_with_epoll(self):
        self.check_library_missed_sigterm("epoll")

    def test_reloads_under_load_lose_no_connection(self):
        c = self.start(f'["{HELLO}"]', name="web", workers="{ start: 4, min_spare: 2, max_spare: 8, max: 16 }",
                       idle=4)
        port = c.port(self.sbdir, "web")
        load = LoadClient(port, b"GET / HTTP/1.0\r\n\r\n", b"hello\n", 3000, threads=4).start()
        for i in range(5):
            wait_until(lambda: load.done >= (i + 1) * 400, timeout=60, log=c)
            c.signal(signal.SIGHUP)
            c.wait_log(r"reload done: generation", count=i + 1)
        load.join()
        self.assertEqual(load.failures, [])
        self.assertGreaterEqual(load.done, 3000)
        self.assertEqual(c.stop(), 0)

    def test_upgrade_under_load_with_a_lock_free_job(self):
        binary = self.upgradable_binary()
        saved = harness.CORRAL
        harness.CORRAL = binary
        try:
            c = self.start(f'["{HELLO}"]', name="web", workers="{ start: 4, min_spare: 2, max_spare: 6, max: 8 }",
                           idle=4)
        finally:
            harness.CORRAL = saved
        port = c.port(self.sbdir, "web")
        before = self.worker_pids(c, "web")
        self.assertEqual(environ_of(before[0])["CORRAL_LOCK_KIND"], "none")
        load = LoadClient(port, b"GET / HTTP/1.0\r\n\r\n", b"hello\n", 3000, threads=4).start()
        for i in range(3):
            wait_until(lambda: load.done >= (i + 1) * 600, timeout=60, log=c)
            self.replace_binary(binary)
            c.signal(signal.SIGUSR2)
            c.wait_log(r"binary upgrade: took over 1 job\(s\) and 1 listener\(s\)", count=i + 1)
        load.join()
        self.assertEqual(load.failures, [])
        self.assertGreaterEqual(load.done, 3000)
        # After the hand-over: the listener is still blocking, and a worker started by the
        # new image is lock-free too.
        os.kill(before[0], signal.SIGKILL)
        wait_until(lambda: before[0] not in self.worker_pids(c, "web") and
                   len(self.worker_pids(c, "web")) >= 4, log=c)
        for pid in self.worker_pids(c, "web"):
            self.assertEqual(environ_of(pid)["CORRAL_LOCK_KIND"], "none")
            self.assertFalse(nonblocking(pid, 3))
        self.assertEqual(c.stop(), 0)


if __name__ == "__main__":
    import unittest
    unittest.main()
