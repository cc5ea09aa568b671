"""Warm inetd mode (`inetd: { warm: true }`): the legacy program is started before the
connection and blocks in its first read; a connection is relayed to it (docs/INETD.md)."""
import json
import os
import re
import signal
import socket
import threading
import time

from harness import (SOURCE, CorralTest, children_of, connect, recv_all, recv_until, wait_until,
                     pid_alive, start_time, same_process_alive, describe_process)

LEGACY = os.path.join(SOURCE, "examples", "legacy-echo.py")
THREADED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "threaded_reader.py")
WORKERS = "{ start: 2, min_spare: 2, max_spare: 4, max: 8 }"


def descendants(pid):
    out = []
    todo = [pid]
    while todo:
        p = todo.pop()
        kids = children_of(p)
        out.extend(kids)
        todo.extend(kids)
    return out


def ask(port, request=b"hello\n", body=b"", timeout=10):
    """One request: the report line, then the echo of `body` up to EOF."""
    with connect(port, timeout=timeout) as s:
        s.sendall(request + body)
        s.shutdown(socket.SHUT_WR)
        data = recv_all(s, limit=1 << 26)
    line, _, rest = data.partition(b"\n")
    return json.loads(line), rest


class WarmCase(CorralTest):
    """Starts one warm inetd job (no tests of its own)."""

    def start(self, command=None, workers=WORKERS, extra="", inetd="{ warm: true }", idle=2,
              binary=None, top=""):
        command = command or f'["{LEGACY}"]'
        config = f"""
scoreboard_dir: {self.sbdir}
{top}
jobs:
  legacy:
    command: {command}
    mode: inetd
    inetd: {inetd}
    listen: ["127.0.0.1:0"]
    workers: {workers}
{extra}"""
        c = self.corral(["run", "{config}"], config=config, binary=binary)
        c.wait_idle(self.sbdir, "legacy", idle, timeout=30)
        return c


class WarmTest(WarmCase):
    def waiting_programs(self, c):
        """Pids of the warm programs: the acceptors' children."""
        return {k for w in c.job(self.sbdir, "legacy")["workers"] for k in children_of(w["pid"])}

    def test_example_answers_without_its_startup_and_sees_only_its_fds(self):
        c = self.start()
        port = c.port(self.sbdir, "legacy")
        # Programs that have done their start-up (the acceptors are idle only then).
        wait_until(lambda: len(self.waiting_programs(c)) >= 2, log=c)
        t0 = time.monotonic()
        with connect(port) as s:
            s.sendall(b"hello\n")
            first = recv_until(s)
            ttfb_ms = (time.monotonic() - t0) * 1000
            s.sendall(b"more bytes")
            s.shutdown(socket.SHUT_WR)
            rest = recv_all(s)
        report = json.loads(first)
        self.assertEqual(report["request"], "hello")
        self.assertEqual(rest, b"more bytes")
        # stdin, stdout, stderr, and the directory listdir() reads: nothing of corral's.
        self.assertEqual(report["fds"], [0, 1, 2, 3], report)
        # A program already running gets no per-connection environment.
        self.assertIsNone(report["remote_addr"])
        self.assertIsNone(report["proxy"])
        # It had started before the client connected: it waited for the request.
        self.assertGreater(report["waited_ms"], 0.0, report)
        print(f"\nwarm: start-up {report['startup_ms']} ms, first byte after {ttfb_ms:.1f} ms")
        self.assertEqual(c.stop(), 0)

    def test_a_program_reading_stdin_in_another_thread_is_ready_at_once(self):
        # Its main thread waits in futex (a join), not in read: the acceptor must look at
        # the other threads too, or the program counts as ready only at the 3 s cap, and
        # the first connections wait that long in the backlog.
        readers = os.path.join(self.tmp, "readers")
        os.mkdir(readers)
        c = self.start(command=f'["{THREADED}"]', idle=1,
                       workers="{ start: 1, min_spare: 1, max_spare: 2, max: 4 }",
                       extra=f"    env: {{ READER_DIR: {readers} }}\n")
        idle_at = time.monotonic()
        first = sorted(os.listdir(readers))
        self.assertTrue(first, "a program is idle before its reader thread started")
        with open(os.path.join(readers, first[0])) as f:
            reading_at = float(f.read().split()[1])
        self.assertLess(idle_at - reading_at, 1.5, c.log_text())
        port = c.port(self.sbdir, "legacy")
        with connect(port) as s:
            s.sendall(b"over a thread")
            s.shutdown(socket.SHUT_WR)
            data = recv_all(s)
        self.assertRegex(data, rb"^threaded \d+\nover a thread$")
        self.assertEqual(c.stop(), 0)

    def test_ten_megabytes_round_trip_with_half_closes(self):
        c = self.start()
        port = c.port(self.sbdir, "legacy")
        body = os.urandom(10 << 20)
        for _ in range(2):
            with connect(port, timeout=30) as s:
                got = []

                def reader():
                    while True:
                        chunk = s.recv(1 << 16)
                        if not chunk:
                            return
                        got.append(chunk)

                t = threading.Thread(target=reader)
                t.start()
                s.sendall(b"big\n" + body)
                s.shutdown(socket.SHUT_WR)  # the program sees EOF; its answer is not cut
                t.join(timeout=60)
                self.assertFalse(t.is_alive())
            data = b"".join(got)
            line, _, rest = data.partition(b"\n")
            self.assertEqual(json.loads(line)["request"], "big")
            self.assertEqual(len(rest), len(body))
            self.assertTrue(rest == body)
        # The other way round: the program half-closes first, the client keeps sending.
        script = self.write("first.sh", "#!/bin/sh\nread line\nhead -c 10485760 /dev/zero\nexec 1>&-\nexec wc -c >&2\n",
                            0o755)
        c.stop()
        c2 = self.start(command=f'["{script}"]')
        port = c2.port(self.sbdir, "legacy")
        with connect(port, timeout=30) as s:
            s.sendall(b"go\n")
            data = recv_all(s, limit=1 << 26)  # EOF from the program: its stdout closed
            self.assertEqual(data, b"\0" * (10 << 20))
            s.sendall(b"x" * 100000)  # still read by the program after its half-close
            s.shutdown(socket.SHUT_WR)
        c2.wait_log(r"^\s*100000\s*$|\b100000\b", timeout=20)
        self.assertEqual(c2.stop(), 0)

    def test_client_that_disconnects_mid_transfer(self):
        c = self.start()
        port = c.port(self.sbdir, "legacy")
        for _ in range(3):
            s = connect(port)
            s.sendall(b"abandon\n" + b"y" * (4 << 20))  # the echo fills both directions
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            s.close()  # a reset, mid-transfer
        report, rest = ask(port, body=b"after")
        self.assertEqual(rest, b"after")
        # Every abandoned program ended (nothing left but the waiting ones).
        wait_until(lambda: len(c.job(self.sbdir, "legacy")["workers"]) <= 4 and all(
            w["state"] == "idle" for w in c.job(self.sbdir, "legacy")["workers"]), log=c, timeout=20)
        self.assertIsNone(c.proc.poll())
        self.assertEqual(c.stop(), 0)

    def test_clients_that_connect_and_vanish(self):
        c = self.start(workers="{ start: 4, min_spare: 4, max_spare: 8, max: 16 }", idle=4)
        port = c.port(self.sbdir, "legacy")
        for i in range(40):
            s = connect(port)
            if i % 2:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            s.close()  # a FIN or a reset before a byte was sent
        report, rest = ask(port, body=b"still here")
        self.assertEqual(rest, b"still here")
        # Every one of those programs ended: only acceptors and waiting programs remain.
        wait_until(lambda: all(w["state"] != "busy" for w in c.job(self.sbdir, "legacy")["workers"]),
                   timeout=20, log=c)
        self.assertLessEqual(len(descendants(c.pid)), 2 * 16)
        self.assertIsNone(c.proc.poll())
        self.assertEqual(c.stop(), 0)

    def test_program_that_dies_while_waiting_is_replaced(self):
        c = self.start(workers="{ start: 1, min_spare: 1, max_spare: 2, max: 4 }", idle=1,
                       extra="    restart: { backoff_max: 1s }\n")
        port = c.port(self.sbdir, "legacy")
        wait_until(lambda: len(self.waiting_programs(c)) == 1, log=c)
        (victim,) = self.waiting_programs(c)
        os.kill(victim, signal.SIGKILL)
        c.wait_log(rf"warm program {victim} was killed by signal 9 while waiting for a connection")
        c.wait_log(r"lost its waiting warm program; backing off")
        wait_until(lambda: self.waiting_programs(c) - {victim}, log=c, timeout=20)
        report, rest = ask(port, body=b"still served")
        self.assertEqual(rest, b"still served")
        self.assertNotEqual(report["pid"], victim)
        self.assertEqual(c.stop(), 0)

    def test_two_listeners_token_survives_programs_dying_while_waiting(self):
        # Two listeners: the acceptors share the token pipe; an acceptor that leaves
        # because its program died must give the token back, or nobody accepts again.
        config = f"""
scoreboard_dir: {self.sbdir}
jobs:
  legacy:
    command: ["{LEGACY}"]
    mode: inetd
    inetd: {{ warm: true }}
    listen: ["127.0.0.1:0", "127.0.0.1:0"]
    workers: {{ start: 3, min_spare: 3, max_spare: 4, max: 8 }}
    restart: {{ backoff_max: 500ms, max_failures: 0 }}
"""
        c = self.corral(["run", "{config}"], config=config)
        c.wait_idle(self.sbdir, "legacy", 3, timeout=30)
        ports = [c.port(self.sbdir, "legacy", i) for i in (0, 1)]
        for _ in range(3):
            victims = self.waiting_programs(c)
            for victim in victims:
                try:
                    os.kill(victim, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            wait_until(lambda: not (victims & self.waiting_programs(c)) and
                       len(self.waiting_programs(c)) >= 2, timeout=30, log=c)
        for port in ports:
            report, rest = ask(port, body=b"token ok")
            self.assertEqual(rest, b"token ok")
        self.assertIn("killed by signal 9 while waiting", c.log_text())
        self.assertEqual(c.stop(), 0)

    def test_program_that_cannot_start_backs_off(self):
        # One that cannot even start: the usual failed-start backoff, growing.
        script = self.write("crash.sh", "#!/bin/sh\nexit 4\n", 0o755)
        config = f"""
scoreboard_dir: {self.sbdir}
jobs:
  legacy:
    command: ["{script}"]
    mode: inetd
    inetd: {{ warm: true }}
    listen: ["127.0.0.1:0"]
    workers: {{ start: 1, min_spare: 1, max_spare: 1, max: 2 }}
    restart: {{ backoff_max: 2s }}
"""
        c2 = self.corral(["run", "{config}"], config=config)
        c2.wait_log(r"exited with status 4 while starting", timeout=20)
        c2.wait_log(r"exited before it was ready; backing off, next try in .*\(failure 3 of", timeout=30)
        self.assertIsNone(c2.proc.poll())
        self.assertEqual(c2.stop(), 0)

    def test_program_that_writes_early_is_ended_and_never_reaches_a_client(self):
        marker = os.path.join(self.tmp, "spoke")
        script = self.write("early.sh", f"""#!/bin/sh
if [ ! -e {marker} ]; then
  : > {marker}
  echo "EARLY BYTES"
fi
exec {LEGACY}
""", 0o755)
        c = self.start(command=f'["{script}"]', workers="{ start: 1, min_spare: 1, max_spare: 1, max: 2 }",
                       extra="    restart: { backoff_max: 1s }\n", idle=1)
        c.wait_log(r"wrote 12 bytes before any client connected", timeout=20)
        port = c.port(self.sbdir, "legacy")
        for _ in range(3):
            with connect(port) as s:
                s.sendall(b"hi\n")
                s.shutdown(socket.SHUT_WR)
                data = recv_all(s)
            self.assertNotIn(b"EARLY", data)
            self.assertEqual(json.loads(data)["request"], "hi")
        self.assertEqual(c.stop(), 0)

    def test_program_that_writes_after_it_waited_is_ended_too(self):
        # Ready (blocked in select on stdin), then it writes anyway: SIGIO, not the
        # start-up check, catches this one.
        marker = os.path.join(self.tmp, "spoke")
        script = self.write("late.py", f"""#!/usr/bin/python3
import os, select
if not os.path.exists({marker!r}):
    open({marker!r}, "w").close()
    select.select([0], [], [], 0.5)
    os.write(1, b"LATE BYTES")
    select.select([0], [], [], 30)
os.execv({LEGACY!r}, [{LEGACY!r}])
""", 0o755)
        c = self.start(command=f'["{script}"]', workers="{ start: 1, min_spare: 1, max_spare: 1, max: 2 }",
                       extra="    restart: { backoff_max: 1s }\n", idle=1)
        c.wait_log(r"warm program \d+ wrote 10 bytes before any client connected", timeout=20)
        c.wait_log(r"lost its waiting warm program")
        port = c.port(self.sbdir, "legacy")
        report, rest = ask(port, b"after\n", b"x")
        self.assertEqual((report["request"], rest), ("after", b"x"))
        self.assertEqual(c.stop(), 0)

    def test_proxy_v1_header_only_when_asked(self):
        c = self.start(inetd="{ warm: true, warm_header: proxy-v1 }")
        port = c.port(self.sbdir, "legacy")
        with connect(port) as s:
            me = s.getsockname()[1]
            s.sendall(b"who\n")
            s.shutdown(socket.SHUT_WR)
            report = json.loads(recv_all(s))
        self.assertEqual(report["proxy"], f"PROXY TCP4 127.0.0.1 127.0.0.1 {me} {port}")
        self.assertEqual(report["request"], "who")
        self.assertEqual(c.stop(), 0)

    def test_max_and_max_per_source_still_hold(self):
        c = self.start(workers="{ start: 2, min_spare: 1, max_spare: 2, max: 2 }",
                       extra="    max_per_source: 1\n")
        port = c.port(self.sbdir, "legacy")
        first = connect(port)
        first.sendall(b"one\n")
        self.assertEqual(json.loads(recv_until(first))["request"], "one")
        # A second connection from the same address is refused (closed at once) ...
        with connect(port) as s:
            self.assertEqual(recv_all(s), b"")
        c.wait_log(r"refused 127\.0\.0\.1:\d+: 1 connections from that address already")
        first.shutdown(socket.SHUT_WR)
        recv_all(first)
        first.close()
        # (once the first program is gone: until then its slot counts for 127.0.0.1)
        wait_until(lambda: all(w["state"] != "busy" for w in c.job(self.sbdir, "legacy")["workers"]),
                   log=c)
        # ... and the waiting program of the acceptor that refused still serves.
        report, _ = ask(port, b"three\n")
        self.assertEqual(report["request"], "three")
        self.assertEqual(c.stop(), 0)

    def test_reload_under_load_loses_nothing_and_stops_old_waiting_programs(self):
        c = self.start(workers="{ start: 3, min_spare: 2, max_spare: 4, max: 8 }")
        port = c.port(self.sbdir, "legacy")
        wait_until(lambda: len(self.waiting_programs(c)) >= 2, log=c)
        failures = []
        done = [0]
        stop = threading.Event()
        lock = threading.Lock()

        def client(i):
            n = 0
            while not stop.is_set():
                body = f"client {i} request {n}".encode()
                try:
                    report, rest = ask(port, f"r{i}-{n}\n".encode(), body, timeout=20)
                    ok = rest == body and report["request"] == f"r{i}-{n}"
                    err = None if ok else f"wrong answer {rest[:40]!r}"
                except (OSError, ValueError) as e:
                    ok, err = False, repr(e)
                with lock:
                    if ok:
                        done[0] += 1
                    else:
                        failures.append(err)
                n += 1

        threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        try:
            for r in range(3):
                old = self.waiting_programs(c)
                wait_until(lambda: done[0] >= 10 * (r + 1), timeout=60, log=c)
                c.signal(signal.SIGHUP)
                c.wait_log(r"reload done", count=r + 1)
                # The old generation's waiting programs are stopped, never handed a client.
                wait_until(lambda: not any(pid_alive(p) and p in set(descendants(c.pid)) for p in old),
                           timeout=20, log=c)
            wait_until(lambda: done[0] >= 40, timeout=60, log=c)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)
        self.assertEqual(failures, [])
        self.assertEqual(c.stop(), 0)

    def test_graceful_stop_finishes_a_served_connection(self):
        c = self.start()
        port = c.port(self.sbdir, "legacy")
        s = connect(port)
        s.sendall(b"long\n")
        self.assertEqual(json.loads(recv_until(s))["request"], "long")
        waiting = {p: start_time(p) for p in self.waiting_programs(c)}
        c.signal(signal.SIGTERM)
        # The served client keeps its program until it is done ...
        s.sendall(b"tail")
        s.shutdown(socket.SHUT_WR)
        self.assertEqual(recv_all(s), b"tail")
        s.close()
        self.assertEqual(c.wait_exit(), 0)
        # ... and no program, waiting or not, outlives the supervisor.
        for p, started in waiting.items():
            self.assertFalse(same_process_alive(p, started), describe_process(p))

    def test_busy_timeout_ends_a_joined_program(self):
        c = self.start(extra="    busy_timeout: 1s\n")
        port = c.port(self.sbdir, "legacy")
        with connect(port, timeout=15) as s:
            s.sendall(b"stuck\n")
            report = json.loads(recv_until(s))  # then the program waits for more, forever
            t0 = time.monotonic()
            self.assertEqual(recv_all(s), b"")  # ended by corral, not by the client
            self.assertLess(time.monotonic() - t0, 10)
        wait_until(lambda: not pid_alive(report["pid"]), log=c)
        report2, rest = ask(port, body=b"next")
        self.assertEqual(rest, b"next")
        self.assertEqual(c.stop(), 0)

    def test_sigusr2_upgrade_with_warm_programs(self):
        binary = self.upgradable_binary()
        c = self.start(binary=binary, workers="{ start: 3, min_spare: 2, max_spare: 4, max: 8 }")
        port = c.port(self.sbdir, "legacy")
        wait_until(lambda: len(self.waiting_programs(c)) >= 2, log=c)
        before = self.waiting_programs(c)
        self.replace_binary(binary)
        c.signal(signal.SIGUSR2)
        c.wait_log(r"binary upgrade: took over 1 job\(s\) and 1 listener\(s\)")
        # The waiting programs are the same ones, and they still serve.
        served = set()
        for _ in range(2):
            report, rest = ask(port, body=b"upgraded")
            self.assertEqual(rest, b"upgraded")
            served.add(report["pid"])
        self.assertTrue(served & before, (served, before))
        self.assertEqual(c.status(self.sbdir)["supervisor"]["pid"], c.pid)
        self.assertEqual(c.stop(), 0)

    def test_configuration_errors(self):
        bad = {
            "warm_header: proxy-v1 }": "inetd.warm_header needs inetd.warm: true",
            "warm: yes-please }": "inetd.warm",
            "warm: true, cold: 1 }": "cold",
        }
        for body, message in bad.items():
            path = self.write("bad.yaml", f"""jobs:
  legacy:
    command: ["{LEGACY}"]
    mode: inetd
    inetd: {{ {body}
    listen: ["127.0.0.1:0"]
""")
            out = self.run_cli(["check", path])
            self.assertNotEqual(out.returncode, 0, body)
            self.assertIn(message, out.stderr + out.stdout, body)
            self.assertRegex(out.stderr + out.stdout, r"bad\.yaml:5:\d+")
        path = self.write("prefork.yaml", f"""jobs:
  web:
    command: ["{LEGACY}"]
    inetd: {{ warm: true }}
    listen: ["127.0.0.1:0"]
""")
        out = self.run_cli(["check", path])
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("inetd: applies to mode inetd only", out.stderr + out.stdout)


GROW = os.path.join(SOURCE, "tests", "integration", "warm_grow.py")


class WarmMemoryTest(WarmCase):
    """memory: limits, status and metrics see a warm worker as its acceptor plus the
    program it started (docs/LIMITS.md), not the acceptor alone."""

    def start(self, job_extra="", top="", binary=None):
        return super().start(command=f'["{GROW}"]', extra=job_extra, top=top, binary=binary,
                             workers="{ start: 1, min_spare: 1, max_spare: 2, max: 4 }", idle=1)

    def grow(self, port, mib):
        """A client that has the program grow by `mib`: (socket, the program's pid)."""
        s = connect(port, timeout=20)
        self.addCleanup(s.close)
        s.sendall(b"grow %d\n" % mib)
        line = recv_until(s)
        m = re.fullmatch(rb"pid (\d+)\n", line)
        self.assertIsNotNone(m, line)
        return s, int(m.group(1))

    def test_a_warm_program_above_hard_max_rss_is_killed_and_replaced(self):
        for measure in ("rss", "pss"):
            with self.subTest(measure=measure):
                self._hard_max_rss_kill(measure)

    def test_hard_max_rss_still_sees_the_program_after_sigusr2(self):
        # The new image takes the job from the hand-over's configuration text: it counts
        # the warm programs too (and rewrites the header flag `corral status` reads).
        binary = self.upgradable_binary()
        c = self._hard_max_rss_kill("rss", binary=binary, stop=False)
        self.replace_binary(binary)
        c.signal(signal.SIGUSR2)
        c.wait_log(r"binary upgrade: took over 1 job\(s\) and 1 listener\(s\)")
        self.assertEqual(c.status(self.sbdir)["supervisor"]["pid"], c.pid)
        self._hard_max_rss_kill("rss", c=c, kills=2)

    def _hard_max_rss_kill(self, measure, binary=None, stop=True, c=None, kills=1):
        if c is None:
            c = self.start(f"    memory: {{ hard_max_rss: 100MiB, interval: 100ms, measure: {measure} }}\n",
                           binary=binary)
        c.wait_idle(self.sbdir, "legacy", 1, timeout=30)
        port = c.port(self.sbdir, "legacy")
        s, program = self.grow(port, 200)
        # The connection ends: not by the client, by corral (EOF, or a reset).
        t0 = time.monotonic()
        rest = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                rest += chunk
        except ConnectionResetError:
            pass
        s.close()
        self.assertLess(time.monotonic() - t0, 20)
        self.assertIn(rest, (b"", b"grew 200\n"))
        # The log names the slot, the acceptor, the program and the sizes.
        rx = (rf"worker (\d+) \(slot (\d+)\) uses (\d+) bytes of memory, its warm program "
              rf"{program} (\d+) of them, above hard_max_rss 104857600; killing it")
        c.wait_log(rx, timeout=20)
        acceptor, _slot, total, mine = (int(x) for x in re.findall(rx, c.log_text())[-1])
        self.assertGreater(total, 100 << 20)
        self.assertLessEqual(mine, total)
        self.assertGreater(mine, total // 2)
        # Only the acceptor was signalled; the program went with it (its process group,
        # PR_SET_PDEATHSIG), by pid, within a deadline.
        wait_until(lambda: not pid_alive(program) and not pid_alive(acceptor), timeout=10,
                   what=f"program {program} and acceptor {acceptor} gone", log=c)
        wait_until(lambda: c.job(self.sbdir, "legacy")["exits"]["memory"] >= kills, log=c)
        # The next client is served by a fresh warm program.
        with connect(port, timeout=30) as s2:
            s2.sendall(b"hello\n")
            line = recv_until(s2)
        m = re.fullmatch(rb"pid (\d+)\n", line)
        self.assertIsNotNone(m, line)
        self.assertNotEqual(int(m.group(1)), program)
        if stop:
            self.assertEqual(c.stop(), 0)
        return c

    def test_status_and_metrics_count_the_warm_program(self):
        import test_metrics as metrics_client  # a module object: its tests are not collected here
        c = self.start(top='metrics: { listen: "127.0.0.1:0" }\n')
        c.wait_log(r"metrics: serving /metrics, /healthz and /readyz on ")
        mport = int(re.search(r"metrics: serving /metrics, /healthz and /readyz on \S+:(\d+)",
                              c.log_text()).group(1))
        port = c.port(self.sbdir, "legacy")
        s, program = self.grow(port, 200)
        self.assertEqual(recv_until(s), b"grew 200\n")
        worker = next(w for w in c.job(self.sbdir, "legacy")["workers"]
                      if program in children_of(w["pid"]))
        acceptor = worker["pid"]
        with open(f"/proc/{acceptor}/statm") as f:
            own = int(f.read().split()[1]) * os.sysconf("SC_PAGESIZE")
        self.assertLess(own, 32 << 20)
        self.assertGreaterEqual(worker["rss_bytes"], 200 << 20, worker)
        self.assertGreater(worker["rss_bytes"], own)
        status, _, body = metrics_client.http(mport, "/metrics")
        self.assertEqual(status, 200)
        rss = metrics_client.value(body.decode(), "corral_slot_resident_memory_bytes",
                                   pool="legacy", slot=str(worker["slot"]))
        self.assertGreaterEqual(rss, 200 << 20)
        s.close()
        self.assertEqual(c.stop(), 0)
