"""The supervisor core (#12): decisions on events, not on a tick; a transactional
reload; an upgrade that cannot take the service down; churn torture."""
import os
import re
import shutil
import signal
import socket
import threading
import time

from harness import BUILD, CORRAL, CorralTest, connect, recv_all, wait_until, children_of

HELLO = os.path.join(BUILD, "examples", "hello-http")
ECHO_BIN = shutil.which("echo") or "/bin/echo"


class LatencyLoad:
    """`threads` clients, each making new connections one after the other until `count`
    are done in all or `seconds` have passed. Records each connection's latency
    (connect to EOF) and every failure (refused, reset, timeout, wrong answer)."""

    def __init__(self, port, request, expect, count, threads=16, seconds=60, half_close=False):
        self.port, self.request, self.expect = port, request, expect
        self.half_close = half_close  # shut the write side after the request (echo servers)
        self.count, self.deadline = count, time.monotonic() + seconds
        self.latencies, self.failures = [], []
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]

    def run(self):
        while time.monotonic() < self.deadline and not self.stop_event.is_set():
            with self.lock:
                if len(self.latencies) + len(self.failures) >= self.count:
                    return
            t0 = time.monotonic()
            try:
                with connect(self.port, timeout=10) as s:
                    if self.request:
                        s.sendall(self.request)
                    if self.half_close:
                        s.shutdown(socket.SHUT_WR)
                    data = recv_all(s)
                err = None if self.expect in data else f"unexpected answer {data[:60]!r}"
            except OSError as e:
                err = repr(e)
            with self.lock:
                if err is None:
                    self.latencies.append(time.monotonic() - t0)
                else:
                    self.failures.append(err)

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def join(self, timeout=120):
        for t in self.threads:
            t.join(timeout=timeout)

    @property
    def done(self):
        with self.lock:
            return len(self.latencies)

    def stop(self):
        self.stop_event.set()
        self.join()


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


class NoTickTest(CorralTest):
    """A pool whose workers exit together must not wait for the periodic look."""

    def run_load(self, mode, command, request, expect, extra=""):
        c = self.start_job("pool", command, ["127.0.0.1:0"],
                           "{ start: 8, min_spare: 4, max_spare: 16, max: 64" + extra + " }",
                           mode=mode)
        c.wait_idle(self.sbdir, "pool", 4)
        port = c.port(self.sbdir, "pool")
        load = LatencyLoad(port, request, expect, count=800, threads=16, seconds=60).start()
        load.join()
        self.assertEqual(load.failures, [])
        self.assertGreaterEqual(len(load.latencies), 800)
        lat = sorted(load.latencies)
        p99, worst = lat[int(len(lat) * 0.99)], lat[-1]
        slow = sum(1 for x in lat if x >= 0.9)
        print(f"{mode}: p50 {lat[len(lat) // 2] * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
              f"max {worst * 1000:.1f} ms, {slow} of {len(lat)} at 0.9 s or more")
        # The old core refilled an emptied pool at its 1 s tick: about 2% of the
        # connections then waited 1.0 to 1.05 s (p99 over 1 s, 16 of 800 or more). A
        # connection can still be slow when the machine is saturated (a SYN dropped
        # and retransmitted after 1 s, a client thread descheduled, a sanitizer build):
        # allow 1%.
        self.assertLess(p99, 0.9, f"p99 {p99:.3f}s\n{c.log_text()[-3000:]}")
        self.assertLessEqual(slow, 8, f"{slow} connections took 0.9 s or more")
        self.assertEqual(c.stop(), 0)

    def test_inetd_with_a_program_that_answers_at_once(self):
        self.run_load("inetd", f'["{ECHO_BIN}", "hello"]', b"", b"hello\n")

    def test_prefork_with_max_requests_1(self):
        self.run_load("prefork", f'["{HELLO}"]', b"GET / HTTP/1.0\r\n\r\n", b"hello\n",
                      extra=", max_requests: 1")


class TransactionalReloadTest(CorralTest):
    def test_a_rejected_reload_leaves_no_new_socket_listening(self):
        _, busy_port = self.loopback_listener(8)  # in use: job b's new address cannot bind
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
        probe.close()
        base = f"""
scoreboard_dir: {self.sbdir}
jobs:
  a:
    command: ["{HELLO}"]
    listen: [{{LISTEN_A}}]
    workers: {{ start: 1, min_spare: 1, max_spare: 2, max: 4 }}
  b:
    command: ["{HELLO}"]
    listen: [{{LISTEN_B}}]
    workers: {{ start: 1, min_spare: 1, max_spare: 2, max: 4 }}
"""
        c = self.corral(["run", "{config}"], config=base.replace("{LISTEN_A}", '"127.0.0.1:0"')
                        .replace("{LISTEN_B}", '"127.0.0.1:0"'))
        c.wait_idle(self.sbdir, "a", 1)
        c.wait_idle(self.sbdir, "b", 1)
        port_a = c.port(self.sbdir, "a")
        with open(c.config_path, "w") as f:
            f.write(base.replace("{LISTEN_A}", f'"127.0.0.1:0", "127.0.0.1:{free_port}"')
                    .replace("{LISTEN_B}", f'"127.0.0.1:0", "127.0.0.1:{busy_port}"'))
        c.signal(signal.SIGHUP)
        c.wait_log(r"reload failed: bind 127\.0\.0\.1:%d" % busy_port)
        # a's new address must refuse connections: nothing would ever accept them.
        with self.assertRaises(ConnectionRefusedError):
            connect(free_port, timeout=2).close()
        # The running configuration still serves.
        with connect(port_a) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            self.assertIn(b"hello", recv_all(s))
        self.assertEqual(c.stop(), 0)


class SafeUpgradeTest(CorralTest):
    """SIGUSR2 under load must never take the service down, whatever is on disk."""

    def start_copy(self):
        self.binary = self.upgradable_binary()
        config = f"""
scoreboard_dir: {self.sbdir}
jobs:
  web:
    command: ["{HELLO}"]
    listen: ["127.0.0.1:0"]
    workers: {{ start: 4, min_spare: 2, max_spare: 6, max: 8 }}
"""
        import harness
        saved = harness.CORRAL
        harness.CORRAL = self.binary
        try:
            c = self.corral(["run", "{config}"], config=config)
        finally:
            harness.CORRAL = saved
        c.wait_idle(self.sbdir, "web", 2)
        return c

    def upgrade_under_load(self, c, spoil, expect_log, upgrades_before=0):
        port = c.port(self.sbdir, "web")
        workers = {w["pid"] for w in c.job(self.sbdir, "web")["workers"]}
        load = LatencyLoad(port, b"GET / HTTP/1.0\r\n\r\n", b"hello\n", count=100000,
                           threads=4, seconds=60).start()
        wait_until(lambda: load.done >= 200, timeout=30, log=c)
        spoil()
        c.signal(signal.SIGUSR2)
        c.wait_log(expect_log, timeout=20)
        done = load.done
        wait_until(lambda: load.done >= done + 300, timeout=30, log=c)
        load.stop()
        self.assertEqual(load.failures, [])
        self.assertIsNone(c.proc.poll(), c.log_text())
        st = c.status(self.sbdir)
        self.assertEqual(st["supervisor"]["pid"], c.pid)
        now = {w["pid"] for w in c.job(self.sbdir, "web")["workers"]}
        self.assertTrue(workers & now)  # the same workers still serve
        self.assertLessEqual(now, set(children_of(c.pid)))
        return load

    def test_upgrade_with_the_configuration_file_made_invalid(self):
        c = self.start_copy()
        self.upgrade_under_load(
            c, lambda: open(c.config_path, "w").write("jobs: [this is: not valid\n"),
            r"binary upgrade: took over 1 job\(s\)")
        self.assertEqual(c.stop(), 0)

    def test_upgrade_with_the_configuration_file_removed(self):
        c = self.start_copy()
        self.upgrade_under_load(c, lambda: os.unlink(c.config_path),
                                r"binary upgrade: took over 1 job\(s\)")
        self.assertEqual(c.stop(), 0)

    def test_a_new_binary_that_cannot_start_is_refused_and_the_old_image_stays(self):
        c = self.start_copy()

        def break_binary():
            broken = self.binary + ".new"
            with open(broken, "w") as f:
                f.write("#!/bin/sh\nexit 127\n")
            os.chmod(broken, 0o755)
            os.rename(broken, self.binary)

        self.upgrade_under_load(c, break_binary,
                                r"refused the hand-over \(exited with status 127: it cannot even start\)")
        self.assertNotIn("binary upgrade: took over", c.log_text())
        # Put a good binary back: the next SIGUSR2 upgrades.
        self.replace_binary(self.binary)
        c.signal(signal.SIGUSR2)
        c.wait_log(r"binary upgrade: took over 1 job\(s\)", timeout=20)
        self.assertEqual(c.stop(), 0)

    def test_a_slow_handover_check_is_not_taken_for_an_orphan(self):
        # The check child is corral's own: the periodic orphan sweep (every 500 ms) must
        # leave it alone, however long it takes to answer (an ASan build, a loaded host).
        c = self.start_copy()
        slow = self.binary + ".new"
        with open(slow, "w") as f:
            f.write(f'#!/bin/sh\n[ "$1" = --handover-check ] && sleep 1.5\nexec "{CORRAL}" "$@"\n')
        os.chmod(slow, 0o755)
        os.rename(slow, self.binary)
        c.signal(signal.SIGUSR2)
        c.wait_log(r"binary upgrade: took over 1 job\(s\)", timeout=20)
        self.assertNotIn("adopted orphan", c.log_text())
        self.assertEqual(c.stop(), 0)

    def test_a_new_binary_that_does_not_know_the_version_is_refused(self):
        c = self.start_copy()

        def old_binary():
            fake = self.binary + ".new"
            with open(fake, "w") as f:
                f.write('#!/bin/sh\n[ "$1" = --handover-check ] && { echo "version $2 unknown" >&2; exit 3; }\n'
                        'exec sleep 1000\n')
            os.chmod(fake, 0o755)
            os.rename(fake, self.binary)

        self.upgrade_under_load(c, old_binary, r"refused the hand-over \(exited with status 3\)")
        # The version the running image writes (the current hand-over version).
        written = re.search(r"takes hand-over version (\d+)", c.log_text()).group(1)
        self.assertIn(f"version {written} unknown", c.log_text())
        self.assertEqual(c.stop(), 0)


class ChurnTortureTest(CorralTest):
    def test_max_requests_1_under_load_with_a_reload_every_100ms_and_upgrades(self):
        binary = self.upgradable_binary()
        config = f"""
scoreboard_dir: {self.sbdir}
jobs:
  web:
    command: ["{HELLO}"]
    listen: ["127.0.0.1:0"]
    workers: {{ start: 8, min_spare: 4, max_spare: 16, max: 64, max_requests: 1 }}
    graceful_timeout: 5s
"""
        import harness
        saved = harness.CORRAL
        harness.CORRAL = binary
        try:
            c = self.corral(["run", "{config}"], config=config)
        finally:
            harness.CORRAL = saved
        c.wait_idle(self.sbdir, "web", 4)
        port = c.port(self.sbdir, "web")
        fds_before = fd_count(c.pid)
        load = LatencyLoad(port, b"GET / HTTP/1.0\r\n\r\n", b"hello\n", count=10 ** 7,
                           threads=16, seconds=60).start()
        t_end = time.monotonic() + 20
        upgrades_at = {int(20 * k / 4) for k in (1, 2, 3)}  # at about 5, 10 and 15 s
        upgrades = 0
        tick = 0
        while time.monotonic() < t_end:
            tick += 1
            c.signal(signal.SIGHUP)
            second = int(20 - (t_end - time.monotonic()))
            if second in upgrades_at and upgrades < 3 and second >= 5 * (upgrades + 1):
                c.signal(signal.SIGUSR2)
                upgrades += 1
                c.wait_log(r"binary upgrade: took over", count=upgrades, timeout=20)
            time.sleep(0.1)  # the pacing of the HUPs, not a synchronization
        load.stop()
        self.assertEqual(upgrades, 3)
        self.assertIsNone(c.proc.poll(), c.log_text()[-3000:])
        self.assertEqual(load.failures, [], f"{len(load.failures)} failed of {load.done}")
        self.assertGreater(load.done, 500)
        # Everything the churn opened is closed again once old generations are gone.
        wait_until(lambda: fd_count(c.pid) <= fds_before, timeout=30,
                   what=f"fd count back to {fds_before}", log=c)
        self.assertEqual(c.stop(timeout=30), 0)


class FailedStartTest(CorralTest):
    def test_a_start_refused_for_a_scoreboard_in_use_leaves_no_socket_file(self):
        def config(sock):
            return f"""
scoreboard_dir: {self.sbdir}
jobs:
  web:
    command: ["{HELLO}"]
    listen: ["unix:{sock}"]
    workers: {{ start: 1, min_spare: 1, max_spare: 2, max: 2 }}
"""
        first = os.path.join(self.tmp, "first.sock")
        second = os.path.join(self.tmp, "second.sock")
        a = self.corral(["run", "{config}"], config=config(first), name="a")
        a.wait_idle(self.sbdir, "web", 1)
        b = self.corral(["run", "{config}"], config=config(second), name="b")
        self.assertEqual(b.wait_exit(), 1)
        self.assertRegex(b.log_text(), r"in use")
        self.assertFalse(os.path.exists(second), "the refused start left its socket file behind")
        self.assertTrue(os.path.exists(first))
        self.assertEqual(a.stop(), 0)
        self.assertFalse(os.path.exists(first))
