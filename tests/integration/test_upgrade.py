"""SIGUSR2 binary upgrade: the supervisor re-executes its (replaced) binary, keeping its
pid, its sockets and its workers, without losing a connection."""
import os
import signal

from harness import CorralTest, BUILD, children_of, wait_until, pid_alive
from test_reload import LoadClient

HELLO = os.path.join(BUILD, "examples", "hello-http")


class UpgradeTest(CorralTest):
    def test_upgrade_under_load_keeps_pid_workers_and_connections(self):
        binary = self.upgradable_binary()
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
        harness.CORRAL = binary  # run the copy, so that it can be replaced on disk
        try:
            c = self.corral(["run", "{config}"], config=config)
        finally:
            harness.CORRAL = saved
        c.wait_idle(self.sbdir, "web", 2)
        port = c.port(self.sbdir, "web")
        workers = {w["pid"] for w in c.job(self.sbdir, "web")["workers"]}
        load = LoadClient(port, b"GET / HTTP/1.0\r\n\r\n", b"hello\n", 4000).start()
        for i in range(3):
            wait_until(lambda: load.done >= (i + 1) * 800, timeout=60, log=c)
            # A new binary at the same path (a new inode, as a package upgrade makes).
            self.replace_binary(binary)
            c.signal(signal.SIGUSR2)
            c.wait_log(r"binary upgrade: took over 1 job\(s\) and 1 listener\(s\)", count=i + 1)
        load.join()
        self.assertEqual(load.failures, [])
        self.assertGreaterEqual(load.done, 4000)
        self.assertIsNone(c.proc.poll())
        job = c.job(self.sbdir, "web")
        self.assertEqual(c.status(self.sbdir)["supervisor"]["pid"], c.pid)
        # The same workers still serve (none was restarted by the upgrade).
        self.assertTrue(workers & {w["pid"] for w in job["workers"]})
        # ... and they are still children of the same pid (so it can reap them).
        self.assertLessEqual({w["pid"] for w in job["workers"]}, set(children_of(c.pid)))
        # The new image reaps and stops them.
        self.assertEqual(c.stop(), 0)
        for p in workers:
            self.assertFalse(pid_alive(p))
