"""systemd integration: socket activation through Debian's real systemd-socket-activate
(by name, by address, several sockets, unused ones), LISTEN_PID mismatch, sd_notify
messages against a datagram socket the test binds (order, status, reload, stop,
watchdog), the fd store round trip across a SIGKILL, and journald fields."""
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import time

from harness import (BUILD, PROBE, PYTHON, SOURCE, CorralTest, connect, pid_alive, recv_until,
                     wait_until)

ECHO = os.path.join(BUILD, "examples", "echo")
HERE = os.path.dirname(os.path.abspath(__file__))
LAUNCHER = [PYTHON, os.path.join(HERE, "sd_launcher.py")]
SOCKET_ACTIVATE = shutil.which("systemd-socket-activate") or "/usr/bin/systemd-socket-activate"


def free_port():
    """A port the kernel just handed out, for tools that cannot bind port 0
    (systemd-socket-activate). Callers retry on the rare collision."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def echo_roundtrip(port, line=b"ping\n"):
    with connect(port) as s:
        s.sendall(line)
        return recv_until(s)


class NotifySocket:
    """The service manager's end of sd_notify: a datagram socket the test binds.
    Keeps every message, in arrival order, as (monotonic time, [lines], [fds])."""

    def __init__(self, test):
        self.path = os.path.join(test.tmp, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages = []
        test.addCleanup(self.close)

    def close(self):
        for _, _, fds in self.messages:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.sock.close()

    def _receive(self, timeout):
        ready, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        if not ready:
            return False
        data, fds, flags, _ = socket.recv_fds(self.sock, 65536, 16)
        assert not flags & socket.MSG_CTRUNC, "more fds in one message than expected"
        self.messages.append((time.monotonic(), data.decode().split("\n"), fds))
        return True

    def collect(self, condition, timeout=10.0, what="notify messages", corral=None):
        """Receives until condition(messages) is truthy; fails after timeout seconds."""
        deadline = time.monotonic() + timeout
        while True:
            result = condition(self.messages)
            if result:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log = f"\ncorral log:\n{corral.log_text()}" if corral else ""
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; "
                                     f"got {[m for _, m, _ in self.messages]}{log}")
            self._receive(remaining)

    def wait_for(self, line, count=1, start=0, **kw):
        """Index of the count-th message at or after `start` holding `line` (exactly, or
        a regex match when line is a compiled pattern)."""
        def find(messages):
            seen = 0
            for i in range(start, len(messages)):
                if any(_matches(line, l) for l in messages[i][1]):
                    seen += 1
                    if seen == count:
                        return i + 1  # +1 so that index 0 is truthy
            return None
        return self.collect(find, what=f"{line!r} x{count}", **kw) - 1

    def release(self, fd):
        """Closes a received fd, as the manager does on FDSTOREREMOVE."""
        for _, _, fds in self.messages:
            if fd in fds:
                fds.remove(fd)
        os.close(fd)

    def lines(self, start=0, end=None):
        return [l for _, m, _ in self.messages[start:end] for l in m]


def _matches(pattern, line):
    return pattern.search(line) if isinstance(pattern, re.Pattern) else line == pattern


def start_on_free_port(test, notify, config, attempts=5, **kw):
    """Starts corral with config(port) for a free port, retrying when another process
    took the port meanwhile. Returns (corral, port, index of its READY=1 message)."""
    for _ in range(attempts):
        port = free_port()
        start = len(notify.messages)
        c = test.corral(["run", "{config}"], config=config(port),
                        env={"NOTIFY_SOCKET": notify.path}, **kw)
        notify.collect(lambda _: "READY=1" in notify.lines(start) or c.proc.poll() is not None,
                       corral=c)
        if "READY=1" in notify.lines(start):
            return c, port, notify.wait_for("READY=1", start=start)
        test.assertIn("Address already in use", c.log_text())
    test.fail("no free port")


def stored_fds(notify, end):
    """{FDNAME: fd} of the FDSTORE=1 messages before index end, one fd each."""
    out = {}
    for _, m, fds in notify.messages[:end]:
        if "FDSTORE=1" in m:
            name = next(l for l in m if l.startswith("FDNAME="))[len("FDNAME="):]
            assert len(fds) == 1, m
            out[name] = fds[0]
    return out


def listening_address(fd):
    s = socket.socket(fileno=os.dup(fd))
    try:
        return s.getsockname(), s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    finally:
        s.close()


class SocketActivationTest(CorralTest):
    """Sockets from Debian's systemd-socket-activate, which binds them, waits for the
    first connection (as a .socket unit does) and then execs corral in place."""

    def activate(self, listens, config=None, args=None, env=None, attempts=5):
        """Starts corral under systemd-socket-activate. listens: [(address, fdname)], an
        address "tcp" standing for a fresh 127.0.0.1 port. systemd-socket-activate passes
        on only the environment that -E names. Returns (corral, addresses)."""
        for _ in range(attempts):
            addresses = [f"127.0.0.1:{free_port()}" if a == "tcp" else a for a, _ in listens]
            launcher = [SOCKET_ACTIVATE]
            for address, (_, name) in zip(addresses, listens):
                launcher += ["-l", address] + ([f"--fdname={name}"] if name else [])
            for key, value in (env or {}).items():
                launcher += ["-E", f"{key}={value}"]
            launcher += ["--"]
            text = config(addresses) if callable(config) else config
            c = self.corral(args or ["run", "{config}"], config=text, launcher=launcher, env=env)
            last = re.escape(f"Listening on {addresses[-1]} as")
            wait_until(lambda: re.search(last, c.log_text()) or c.proc.poll() is not None,
                       what="systemd-socket-activate to listen", log=c)
            if c.proc.poll() is None:
                return c, addresses
            if "Address already in use" not in c.log_text():
                self.fail(f"systemd-socket-activate failed:\n{c.log_text()}")
        self.fail("no free ports for systemd-socket-activate")

    def echo_job(self, name, listen, start=2):
        return f"""
  {name}:
    command: ["{ECHO}"]
    listen: {listen}
    workers: {{ start: {start}, min_spare: 1, max_spare: 4, max: 8 }}
"""

    def test_sockets_are_adopted_by_name_in_order_and_unused_ones_reported(self):
        sock_path = os.path.join(self.tmp, "admin.sock")
        listens = [("tcp", "web"), ("tcp", "web"), (sock_path, "admin"), ("tcp", "spare")]
        config = lambda _: (f"scoreboard_dir: {self.sbdir}\njobs:" +
                            self.echo_job("web", '["systemd:web"]') +
                            self.echo_job("admin", '["systemd:admin"]', start=1))
        c, addresses = self.activate(listens, config)
        web1, web2 = (int(a.rsplit(":", 1)[1]) for a in addresses[:2])
        # The connection that makes systemd-socket-activate start corral waits in the
        # backlog, and is served once corral's workers run.
        with connect(web1, timeout=10) as first:
            first.sendall(b"first\n")
            self.assertEqual(recv_until(first), b"first\n")
        c.wait_log(r"adopted socket", count=4)
        web = c.wait_idle(self.sbdir, "web", 1)
        self.assertEqual(web["listeners"], addresses[:2])  # both "web" sockets, in order
        admin = c.wait_idle(self.sbdir, "admin", 1)
        self.assertEqual(admin["listeners"], [f"unix:{sock_path}"])
        self.assertEqual(echo_roundtrip(web2), b"ping\n")
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(sock_path)
            s.sendall(b"admin\n")
            self.assertEqual(recv_until(s), b"admin\n")
        log = c.log_text()
        self.assertIn(f"socket {addresses[3]} (spare) passed by systemd is used by no job; "
                      "kept open for a reload", log)
        self.assertNotIn(": listening on", log)  # corral bound nothing itself
        self.assertEqual(c.stop(), 0)

    def test_a_host_port_listener_uses_the_inherited_socket_instead_of_binding(self):
        config = lambda addresses: (f"scoreboard_dir: {self.sbdir}\njobs:" +
                                    self.echo_job("echo", f'["{addresses[0]}"]'))
        notify = NotifySocket(self)
        c, addresses = self.activate([("tcp", "http")], config, env={"NOTIFY_SOCKET": notify.path})
        port = int(addresses[0].rsplit(":", 1)[1])
        self.assertEqual(echo_roundtrip(port, b"activated\n"), b"activated\n")
        # Binding would have failed: the address is taken by the inherited socket.
        c.wait_log(rf"job echo: 127\.0\.0\.1:{port} uses the socket systemd passed")
        ready = notify.wait_for("READY=1", corral=c)
        log = c.log_text()
        self.assertNotIn("Address already in use", log)
        self.assertNotIn("listening on", log)
        # systemd owns it: it does not go to the fd store.
        self.assertNotIn("FDSTORE=1", notify.lines(0, ready + 1))
        # A reload keeps the same socket.
        c.signal(signal.SIGHUP)
        c.wait_log(r"reload done")
        notify.wait_for("READY=1", start=ready + 1, corral=c)
        self.assertEqual(echo_roundtrip(port, b"after reload\n"), b"after reload\n")
        self.assertNotIn("closed listener", c.log_text())
        self.assertEqual(c.stop(), 0)

    def test_the_inetd_example_runs_socket_activated(self):
        # examples/inetd-systemd.yaml as units/corral-inetd-example.* run it; its
        # scoreboard_dir is the default, $RUNTIME_DIRECTORY.
        config = os.path.join(SOURCE, "examples", "inetd-systemd.yaml")
        c, addresses = self.activate([("tcp", "greeter")], args=["run", config],
                                     env={"RUNTIME_DIRECTORY": self.sbdir})
        port = int(addresses[0].rsplit(":", 1)[1])
        with connect(port, timeout=10) as s:
            s.sendall(b"world\n")
            self.assertEqual(s.makefile("rb").read(), b"hello, world\nREMOTE_ADDR=127.0.0.1\n")
        job = c.wait_idle(self.sbdir, "greeter", 1)
        self.assertEqual(job["mode"], "inetd")
        self.assertEqual(job["listeners"], addresses)
        self.assertEqual(c.stop(), 0)


class ListenPidTest(CorralTest):
    def test_a_listen_pid_mismatch_is_ignored_with_a_warning(self):
        stray, stray_port = self.loopback_listener(8)
        config = f"""
scoreboard_dir: {self.sbdir}
jobs:
  echo:
    command: ["{ECHO}"]
    listen: ["127.0.0.1:0"]
    workers: {{ start: 1, min_spare: 1, max_spare: 2, max: 4 }}
"""
        launcher = LAUNCHER + ["--fds", str(stray.fileno()), "--names", "echo",
                               "--listen-pid", "1", "--"]
        c = self.corral(["run", "{config}"], config=config, launcher=launcher,
                        pass_fds=[stray.fileno()])
        c.wait_idle(self.sbdir, "echo", 1)
        log = c.log_text()
        self.assertIn("ignoring LISTEN_FDS: LISTEN_PID=1 is not this process", log)
        self.assertNotIn("adopted socket", log)
        port = c.port(self.sbdir, "echo")
        self.assertNotEqual(port, stray_port)  # bound its own
        self.assertEqual(echo_roundtrip(port), b"ping\n")
        self.assertEqual(c.stop(), 0)

        # A systemd:NAME listener then finds nothing: a setup error naming the fix.
        c = self.corral(["run", "{config}"], config=config.replace('"127.0.0.1:0"', '"systemd:echo"'),
                        launcher=launcher, pass_fds=[stray.fileno()], name="second")
        self.assertEqual(c.wait_exit(), 1)
        self.assertIn("LISTEN_PID=1 is not this process", c.log_text())
        self.assertIn('no socket named "echo" was passed by systemd', c.log_text())


class NotifyTest(CorralTest):
    def config(self, port="0"):
        self.probe_dir = os.path.join(self.tmp, "probes")
        os.makedirs(self.probe_dir, exist_ok=True)
        return f"""
scoreboard_dir: {self.sbdir}
jobs:
  echo:
    command: ["{ECHO}"]
    listen: ["127.0.0.1:{port}"]
    workers: {{ start: 2, min_spare: 1, max_spare: 4, max: 8 }}
  probe:
    command: ["{PYTHON}", "{PROBE}"]
    listen: ["127.0.0.1:0"]
    workers: {{ start: 1, min_spare: 0, max_spare: 2, max: 2 }}
    env: {{ PROBE_DIR: "{self.probe_dir}", PROBE_IDLE: "1" }}
"""

    def test_ready_status_reloading_stopping_in_order(self):
        notify = NotifySocket(self)
        c = self.corral(["run", "{config}"], config=self.config(),
                        env={"NOTIFY_SOCKET": notify.path})
        ready = notify.wait_for("READY=1", corral=c)
        # READY=1 comes once every job has an idle worker, with the counts.
        status = [l for l in notify.messages[ready][1] if l.startswith("STATUS=")]
        self.assertEqual(len(status), 1, notify.messages[ready])
        self.assertRegex(status[0], r"^STATUS=echo: [12] idle, 0 busy; probe: 1 idle, 0 busy$")
        # Nothing claimed readiness before, and the scoreboards agree.
        self.assertNotIn("READY=1", notify.lines(0, ready))
        self.assertGreaterEqual(c.job(self.sbdir, "echo")["idle"] + c.job(self.sbdir, "echo")["busy"], 1)

        # A busy worker shows in STATUS= (rate-limited, so it may take up to a second).
        port = c.port(self.sbdir, "echo")
        with connect(port) as client:
            client.sendall(b"hold\n")
            self.assertEqual(recv_until(client), b"hold\n")
            busy = notify.wait_for(re.compile(r"^STATUS=echo: \d+ idle, 1 busy"), start=ready,
                                   corral=c)
        notify.wait_for(re.compile(r"^STATUS=echo: \d+ idle, 0 busy"), start=busy + 1, corral=c)

        # SIGHUP: RELOADING=1 with the CLOCK_MONOTONIC time in µs, then READY=1 again.
        before = time.monotonic_ns() // 1000
        c.signal(signal.SIGHUP)
        reloading = notify.wait_for("RELOADING=1", corral=c)
        after = time.monotonic_ns() // 1000
        usec = [l for l in notify.messages[reloading][1] if l.startswith("MONOTONIC_USEC=")]
        self.assertEqual(len(usec), 1, notify.messages[reloading])
        self.assertTrue(before <= int(usec[0].split("=")[1]) <= after, (before, usec, after))
        ready2 = notify.wait_for("READY=1", start=reloading + 1, corral=c)
        c.wait_log(r"reload done: generation 2")

        # SIGTERM: STOPPING=1, then exit 0.
        c.signal(signal.SIGTERM)
        self.assertEqual(c.wait_exit(), 0)
        stopping = notify.wait_for("STOPPING=1", corral=c)
        self.assertGreater(stopping, ready2)
        events = [l for l in notify.lines() if l in ("READY=1", "RELOADING=1", "STOPPING=1")]
        self.assertEqual(events, ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"])
        self.assertNotIn("WATCHDOG=1", notify.lines())  # no WATCHDOG_USEC, no pings

        # What belongs to the supervisor alone does not reach workers.
        reports = self.probes(self.probe_dir)
        self.assertTrue(reports)
        for report in reports.values():
            for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                self.assertNotIn(name, report["env"])

    def test_watchdog_pings_at_half_of_watchdog_usec(self):
        notify = NotifySocket(self)
        c = self.corral(["run", "{config}"], config=self.config(),
                        env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "400000"})
        notify.wait_for("READY=1", corral=c)
        first = notify.wait_for("WATCHDOG=1", corral=c)
        last = notify.wait_for("WATCHDOG=1", count=11, start=first, corral=c)
        times = [t for t, m, _ in notify.messages[first:last + 1] if "WATCHDOG=1" in m]
        gaps = [b - a for a, b in zip(times, times[1:])]
        self.assertEqual(len(gaps), 10)
        # Every 200ms; none as late as WATCHDOG_USEC, when systemd would kill corral.
        self.assertLess(max(gaps), 0.4, gaps)
        mean = sum(gaps) / len(gaps)
        self.assertTrue(0.17 <= mean <= 0.3, gaps)
        self.assertEqual(c.stop(), 0)

    def test_no_watchdog_pings_when_watchdog_pid_is_another_process(self):
        notify = NotifySocket(self)
        c = self.corral(["run", "{config}"], config=self.config(),
                        env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "100000",
                             "WATCHDOG_PID": "1"})
        ready = notify.wait_for("READY=1", corral=c)
        # The absence of a periodic event needs a window: 10 periods would have passed.
        deadline = time.monotonic() + 1.0
        notify.collect(lambda _: time.monotonic() >= deadline, timeout=5)
        self.assertNotIn("WATCHDOG=1", notify.lines(ready))
        self.assertEqual(c.stop(), 0)

    def test_fd_store_round_trip_loses_no_queued_connection(self):
        """corral deposits the sockets it bound in the fd store; killed with SIGKILL, it
        gets them back through LISTEN_FDS on the next start, and a connection queued
        while no corral ran is served."""
        notify = NotifySocket(self)
        first, port, ready = start_on_free_port(self, notify, self.config, name="first")
        # Both bound sockets, each under a name of its own (FDSTOREREMOVE goes by name).
        store = stored_fds(notify, ready)
        probe_port = first.port(self.sbdir, "probe")
        self.assertEqual(sorted(store), sorted([f"corral-bound.127.0.0.1_{port}",
                                                f"corral-bound.127.0.0.1_{probe_port}"]))
        for name, fd in store.items():
            self.assertEqual(listening_address(fd), (("127.0.0.1", int(name.rsplit("_", 1)[1])), 1))
        self.assertEqual(echo_roundtrip(port), b"ping\n")

        workers = [w["pid"] for w in first.job(self.sbdir, "echo")["workers"]]
        first.signal(signal.SIGKILL)
        first.wait_exit()
        wait_until(lambda: not any(pid_alive(p) for p in workers), what="workers to die")

        # No corral runs: the stored socket still listens, so the connection is queued.
        client = connect(port, timeout=10)
        self.addCleanup(client.close)
        client.sendall(b"queued\n")

        # Restart as systemd would: the stored fds through LISTEN_FDS/LISTEN_FDNAMES.
        marker = len(notify.messages)
        names, fds = list(store), list(store.values())
        second = self.corral(["run", "{config}"], config=self.config(port),
                             env={"NOTIFY_SOCKET": notify.path}, name="second", pass_fds=fds,
                             launcher=LAUNCHER + ["--fds", ",".join(map(str, fds)),
                                                  "--names", ":".join(names), "--"])
        self.assertEqual(recv_until(client), b"queued\n")
        client.close()  # else its worker, busy, would wait for it on stop
        second.wait_log(rf"adopted socket 127\.0\.0\.1:{port} from the fd store")
        second.wait_log(rf"job echo: 127\.0\.0\.1:{port} uses the socket systemd passed")
        ready2 = notify.wait_for("READY=1", start=marker, corral=second)
        # The adopted socket is not stored twice. The probe job's "127.0.0.1:0" binds a
        # new port: its old socket, unused, is closed and leaves the store.
        new_probe_port = second.port(self.sbdir, "probe")
        self.assertEqual(notify.lines(marker, ready2 + 1)[:4],
                         ["FDSTOREREMOVE=1", f"FDNAME=corral-bound.127.0.0.1_{probe_port}",
                          "FDSTORE=1", f"FDNAME=corral-bound.127.0.0.1_{new_probe_port}"])
        self.assertIn(f"closed listener 127.0.0.1:{probe_port}", second.log_text())
        self.assertEqual(second.stop(), 0)
        # The store's copy keeps listening after a clean stop too.
        with connect(port) as again:
            self.assertIsNotNone(again)


class FdStoreTest(CorralTest):
    def test_a_stored_socket_comes_back_beside_a_socket_unit_of_the_same_name(self):
        # Job "web" has a socket from a .socket unit (systemd:web) and one it binds
        # itself, whose listener name defaults to "web" too. After a restart systemd
        # passes both; `systemd:web` must not take the stored one, which goes back to
        # its address (else binding that address fails: a crash loop).
        unit, unit_port = self.loopback_listener(16)
        notify = NotifySocket(self)
        config = lambda port: f"""
scoreboard_dir: {self.sbdir}
jobs:
  web:
    command: ["{ECHO}"]
    listen: ["systemd:web", "127.0.0.1:{port}"]
    workers: {{ start: 1, min_spare: 1, max_spare: 2, max: 4 }}
"""
        first, port, ready = start_on_free_port(
            self, notify, config, name="first", pass_fds=[unit.fileno()],
            launcher=LAUNCHER + ["--fds", str(unit.fileno()), "--names", "web", "--"])
        stored = stored_fds(notify, ready)
        self.assertEqual(list(stored), [f"corral-bound.127.0.0.1_{port}"])  # not the unit's
        store_fd = stored[f"corral-bound.127.0.0.1_{port}"]
        workers = [w["pid"] for w in first.job(self.sbdir, "web")["workers"]]
        first.signal(signal.SIGKILL)
        first.wait_exit()
        wait_until(lambda: not any(pid_alive(p) for p in workers), what="workers to die")

        # systemd passes the socket unit's fds first, then the fd store's.
        second = self.corral(["run", "{config}"], config=config(port), name="second",
                             env={"NOTIFY_SOCKET": notify.path}, pass_fds=[unit.fileno(), store_fd],
                             launcher=LAUNCHER + ["--fds", f"{unit.fileno()},{store_fd}", "--names",
                                                  f"web:corral-bound.127.0.0.1_{port}", "--"])
        job = second.wait_idle(self.sbdir, "web", 1)
        self.assertEqual(job["listeners"], [f"127.0.0.1:{unit_port}", f"127.0.0.1:{port}"])
        self.assertEqual(echo_roundtrip(port), b"ping\n")
        self.assertEqual(echo_roundtrip(unit_port), b"ping\n")
        self.assertNotIn("Address already in use", second.log_text())
        self.assertEqual(second.stop(), 0)

    def test_a_listener_dropped_by_a_reload_leaves_the_fd_store(self):
        notify = NotifySocket(self)
        config = lambda admin: f"""
scoreboard_dir: {self.sbdir}
jobs:
  web:
    command: ["{ECHO}"]
    listen: ["127.0.0.1:0"{', { address: "127.0.0.1:0", name: admin }' if admin else ''}]
    workers: {{ start: 1, min_spare: 1, max_spare: 2, max: 4 }}
"""
        c = self.corral(["run", "{config}"], config=config(True), env={"NOTIFY_SOCKET": notify.path})
        ready = notify.wait_for("READY=1", corral=c)
        admin_port = c.port(self.sbdir, "web", 1)
        stored = stored_fds(notify, ready)
        self.assertEqual(len(stored), 2, stored)
        admin_name = f"corral-bound.127.0.0.1_{admin_port}"
        self.assertIn(admin_name, stored)
        old_workers = [w["pid"] for w in c.job(self.sbdir, "web")["workers"]]
        with open(c.config_path, "w") as f:
            f.write(config(False))
        c.signal(signal.SIGHUP)
        removed = notify.wait_for("FDSTOREREMOVE=1", corral=c)
        self.assertEqual(notify.messages[removed][1], ["FDSTOREREMOVE=1", f"FDNAME={admin_name}"])
        c.wait_log(rf"closed listener 127\.0\.0\.1:{admin_port}")
        # The manager drops its copy as told, the old workers are gone: nothing listens
        # there any more.
        notify.release(stored[admin_name])
        wait_until(lambda: not any(pid_alive(p) for p in old_workers), what="old workers to exit")
        with self.assertRaises(ConnectionRefusedError):
            connect(admin_port)
        self.assertEqual(c.stop(), 0)


class JournalTest(CorralTest):
    """Records to the journal, received on a socket the test binds and mounts over
    /run/systemd/journal/socket in a private mount namespace (unshare -m), with stderr
    declared a journal stream through JOURNAL_STREAM, as systemd does."""

    def setUp(self):
        super().setUp()
        if os.geteuid() != 0 or shutil.which("unshare") is None:
            self.skipTest("needs root and unshare(1) for a private mount namespace")
        probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs tmpfs /run"],
                               capture_output=True, timeout=10)
        if probe.returncode != 0:
            self.skipTest(f"cannot mount in a new mount namespace: {probe.stderr!r}")

    def receive_records(self, sock, records, condition, timeout=10.0, corral=None):
        deadline = time.monotonic() + timeout
        while not condition(records):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log = corral.log_text() if corral else ""
                raise AssertionError(f"timed out waiting for journal records; got {records}\n{log}")
            if select.select([sock], [], [], remaining)[0]:
                records.append(parse_journal_datagram(sock.recv(1 << 20)))
        return condition(records)

    def test_records_carry_job_slot_and_worker_pid(self):
        journal_dir = os.path.join(self.tmp, "journal")
        os.mkdir(journal_dir)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(os.path.join(journal_dir, "socket"))
        self.addCleanup(sock.close)
        # The harness writes stderr to corral.log: declare that file the journal stream.
        log_path = os.path.join(self.tmp, "corral.log")
        open(log_path, "wb").close()
        st = os.stat(log_path)
        launcher = ["unshare", "-m", "sh", "-c",
                    'mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal && '
                    'mount --bind "$0" /run/systemd/journal && exec "$@"', journal_dir]
        config = f"""
scoreboard_dir: {self.sbdir}
jobs:
  echo:
    command: ["{ECHO}"]
    listen: ["127.0.0.1:0"]
    workers: {{ start: 2, min_spare: 2, max_spare: 4, max: 8 }}
"""
        c = self.corral(["run", "{config}"], config=config, launcher=launcher,
                        env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        records = []
        started = lambda rs: [r for r in rs if re.match(r"job echo: started worker", r["MESSAGE"])]
        self.receive_records(sock, records, lambda rs: len(started(rs)) >= 2, corral=c)
        for r in started(records):
            pid, slot = re.match(r"job echo: started worker (\d+) \(slot (\d+)", r["MESSAGE"]).groups()
            self.assertEqual((r["CORRAL_JOB"], r["CORRAL_SLOT"], r["CORRAL_WORKER_PID"]),
                             ("echo", slot, pid), r)
            self.assertEqual(r["PRIORITY"], "6")
            self.assertEqual(r["SYSLOG_IDENTIFIER"], "corral")
        # A supervisor-wide record has no job fields.
        self.receive_records(sock, records, lambda rs: any("started (pid" in r["MESSAGE"] for r in rs),
                             corral=c)
        general = next(r for r in records if "started (pid" in r["MESSAGE"])
        self.assertNotIn("CORRAL_JOB", general)
        self.assertNotIn("CORRAL_WORKER_PID", general)

        # A worker's death: a warning about that worker.
        victim = int(started(records)[0]["CORRAL_WORKER_PID"])
        os.kill(victim, signal.SIGKILL)
        died = lambda rs: [r for r in rs if f"worker {victim} " in r["MESSAGE"] and
                           "killed by signal SIGKILL" in r["MESSAGE"]]
        self.receive_records(sock, records, died, corral=c)
        r = died(records)[0]
        self.assertEqual(r["PRIORITY"], "4")
        self.assertEqual((r["CORRAL_JOB"], r["CORRAL_WORKER_PID"]), ("echo", str(victim)))
        self.assertEqual(r["CORRAL_SLOT"], started(records)[0]["CORRAL_SLOT"])
        self.assertEqual(c.stop(), 0)
        # Everything went to the journal, nothing to stderr.
        self.assertNotIn("started worker", c.log_text())


def parse_journal_datagram(data):
    """journald's native protocol: "NAME=value\\n", or "NAME\\n" + le64 size + value + "\\n"
    for values that hold newlines."""
    fields = {}
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            name, value = line.split(b"=", 1)
            i = nl + 1
        else:
            name = line
            (size,) = struct.unpack_from("<Q", data, nl + 1)
            value = data[nl + 9:nl + 9 + size]
            i = nl + 9 + size + 1
        fields[name.decode()] = value.decode(errors="replace")
    return fields
