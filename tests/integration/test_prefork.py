"""Prefork mode with the real example workers: the protocol seen from outside."""
import os
import random
import signal
import socket
import subprocess
import threading
import time

from harness import CorralTest, PYTHON, SOURCE, BUILD, children_of, connect, recv_until, wait_until, pid_alive
import scoreboard

ECHO = os.path.join(BUILD, "examples", "echo")
ECHO_PY = os.path.join(SOURCE, "examples", "echo.py")
HELLO = os.path.join(BUILD, "examples", "hello-http")


class PreforkTest(CorralTest):
    def start(self, command, listen=("127.0.0.1:0",), workers="{ start: 3, min_spare: 1, max_spare: 8, max: 8 }",
              extra="", name="echo"):
        return self.start_job(name, command, listen, workers, extra)

    def echo_once(self, port, text=b"hello corral\n"):
        with connect(port) as s:
            s.sendall(text)
            return recv_until(s)

    def test_cpp_and_python_echo_workers(self):
        for command in (f'["{ECHO}"]', f'["{PYTHON}", "{ECHO_PY}"]'):
            c = self.start(command, name="echo" + str(len(command)))
            port = c.port(self.sbdir, "echo" + str(len(command)))
            with connect(port) as s:
                for line in (b"one\n", b"two\n", b"three\n"):
                    s.sendall(line)
                    self.assertEqual(recv_until(s), line)
            self.assertEqual(c.stop(), 0)

    def test_busy_exactly_while_a_client_holds_a_connection(self):
        c = self.start(f'["{ECHO}"]')
        port = c.port(self.sbdir, "echo")
        clients = [connect(port) for _ in range(2)]
        for s in clients:
            s.sendall(b"x\n")
            self.assertEqual(recv_until(s), b"x\n")
        job = wait_until(lambda: (lambda j: j if j["busy"] == 2 else None)(c.job(self.sbdir, "echo")), log=c)
        busy = [w for w in job["workers"] if w["state"] == "busy"]
        self.assertEqual(len(busy), 2)
        self.assertTrue(all(w["requests"] >= 1 for w in busy))
        for s in clients:
            s.close()
        wait_until(lambda: c.job(self.sbdir, "echo")["busy"] == 0, what="busy back to 0", log=c)
        self.assertEqual(c.stop(), 0)

    def test_status_json_shape(self):
        c = self.start(f'["{ECHO}"]', workers="{ start: 2, min_spare: 1, max_spare: 8, max: 8 }")
        c.wait_idle(self.sbdir, "echo", 2)
        st = c.status(self.sbdir)
        self.assertEqual(set(st), {"supervisor", "jobs", "limits"})
        self.assertEqual(set(st["limits"]), {"cpus", "memory_bytes"})
        self.assertEqual(st["supervisor"]["pid"], c.pid)
        self.assertEqual(st["supervisor"]["generation"], 1)
        self.assertRegex(st["supervisor"]["started"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        job = st["jobs"][0]
        for key in ("name", "mode", "state", "idle", "busy", "listeners", "workers"):
            self.assertIn(key, job)
        self.assertEqual((job["name"], job["mode"], job["state"]), ("echo", "prefork", "running"))
        self.assertRegex(job["listeners"][0], r"^127\.0\.0\.1:\d+$")
        self.assertNotEqual(job["listeners"][0], "127.0.0.1:0")
        for w in job["workers"]:
            self.assertEqual(set(w), {"slot", "pid", "state", "requests", "seconds_in_state", "generation",
                                      "rss_bytes", "oom_kills"})
            self.assertTrue(pid_alive(w["pid"]))
        # The configuration-file form finds the same files.
        cfg = c.config_path
        out = self.run_cli(["status", cfg, "--json"])
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn('"name":"echo"', out.stdout)
        self.assertEqual(c.stop(), 0)

    def test_two_listeners_are_both_served_promptly_under_load(self):
        c = self.start(f'["{HELLO}"]', listen=("127.0.0.1:0", "127.0.0.1:0"),
                       workers="{ start: 2, min_spare: 1, max_spare: 4, max: 4 }", name="hello")
        ports = [c.port(self.sbdir, "hello", 0), c.port(self.sbdir, "hello", 1)]
        worst = 0.0
        for i in range(400):
            t0 = time.monotonic()
            with connect(ports[i % 2]) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                self.assertIn(b"hello\n", recv_until(s, b"hello\n"))
            worst = max(worst, time.monotonic() - t0)
        self.assertLess(worst, 1.0)
        self.assertEqual(c.stop(), 0)

    def lock_holder(self, path):
        holders = [s for s in scoreboard.read_slots(path) if s["lock"] == 2 and s["state"] == "idle"]
        return holders[0] if len(holders) == 1 else None

    def check_lock_holder_death(self, kind):
        c = self.start(f'["{ECHO}"]', workers="{ start: 3, min_spare: 3, max_spare: 8, max: 8 }",
                       extra=f"    accept_mutex: {kind}\n")
        c.wait_idle(self.sbdir, "echo", 3)
        port = c.port(self.sbdir, "echo")
        path = os.path.join(self.sbdir, "echo.scoreboard")
        for round_ in range(3):
            holder = wait_until(lambda: self.lock_holder(path), what="a lock holder", log=c)
            os.kill(holder["pid"], signal.SIGKILL)
            c.wait_log(rf"worker {holder['pid']} \(slot \d+\) killed by signal SIGKILL")
            # The pool goes on accepting: the lock was released by the kernel (fcntl) or
            # restored by the supervisor (pipe).
            self.assertEqual(self.echo_once(port), b"hello corral\n")
        self.assertEqual(c.stop(), 0)
        return c

    def test_pipe_lock_holder_killed_does_not_stall_the_pool(self):
        c = self.check_lock_holder_death("pipe")
        self.assertIn("the accept token was lost", c.log_text())

    def test_fcntl_lock_holder_killed_does_not_stall_the_pool(self):
        self.check_lock_holder_death("fcntl")

    def test_scribbling_worker_cannot_crash_supervisor_or_make_it_signal_foreign_pids(self):
        # A bystander process that a scribbled pid points at: it must survive.
        bystander = subprocess.Popen(["sleep", "60"])
        self.addCleanup(lambda: (bystander.kill(), bystander.wait()))
        c = self.start(f'["{ECHO}"]', workers="{ start: 3, min_spare: 2, max_spare: 3, max: 4 }",
                       extra="    busy_timeout: 1s\n")
        port = c.port(self.sbdir, "echo")
        path = os.path.join(self.sbdir, "echo.scoreboard")
        size = os.path.getsize(path)
        rng = random.Random(42)
        import struct
        with open(path, "rb") as f:  # the layout, before the scribbling garbles the header
            header_size, slot_size = struct.unpack_from("=II", f.read(20), 12)
        for round_ in range(20):
            with open(path, "r+b") as f:
                data = bytearray(rng.getrandbits(8) for _ in range(size))
                # Plant plausible values: the bystander's pid in every pid field, states
                # that claim "busy since long ago" and huge request counts.
                for off in range(header_size, size, slot_size):
                    struct.pack_into("=IiII", data, off, rng.choice([3, 2, 7, 0xFFFFFFFF]), bystander.pid, 1, 2)
                    struct.pack_into("=Q", data, off + 24, 1)
                f.write(data)
            time.sleep(0.05)  # pacing of the scribbling only, not a synchronization
            self.assertLessEqual(len(children_of(c.pid)), 4)
        # The supervisor is alive, still serves, and never signalled the bystander.
        wait_until(lambda: self.echo_once(port) == b"hello corral\n", timeout=20, log=c)
        self.assertIsNone(c.proc.poll(), c.log_text())
        self.assertTrue(pid_alive(bystander.pid))
        # Never more workers than max (4), whatever the scoreboard claims.
        self.assertLessEqual(len(children_of(c.pid)), 4)
        self.assertIsNotNone(wait_until(lambda: c.status(self.sbdir), log=c))
        self.assertEqual(c.stop(), 0)
        self.assertTrue(pid_alive(bystander.pid))

    def test_deleted_scoreboard_directory_is_reported_and_survived(self):
        import shutil as _shutil
        c = self.start(f'["{ECHO}"]', workers="{ start: 2, min_spare: 2, max_spare: 4, max: 4 }")
        port = c.port(self.sbdir, "echo")
        _shutil.rmtree(self.sbdir)
        c.wait_log(r"scoreboard .*echo\.scoreboard was removed; the job runs on")
        for _ in range(5):
            self.assertEqual(self.echo_once(port), b"hello corral\n")
        self.assertIsNone(c.proc.poll())
        self.assertEqual(c.stop(), 0)
