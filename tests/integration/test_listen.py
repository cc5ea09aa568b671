"""Listeners: TCP on IPv4 and IPv6, all addresses, unix sockets, address in use."""
import os
import socket
import stat

from harness import CorralTest, PROBE, PYTHON, connect, recv_until, wait_until

ECHO = os.path.join(os.environ.get("CORRAL_BUILD_DIR", "build"), "examples", "echo")


def ipv6_loopback():
    try:
        s = socket.socket(socket.AF_INET6)
        s.bind(("::1", 0))
        s.close()
        return True
    except OSError:
        return False


class ListenTest(CorralTest):
    def echo_roundtrip(self, port, host="127.0.0.1"):
        with connect(port, host) as s:
            s.sendall(b"ping\n")
            return recv_until(s)

    def test_address_in_use_is_named_and_exits_1(self):
        blocker, port = self.loopback_listener(1)
        c = self.corral(["run", "--listen", f"127.0.0.1:{port}", "--scoreboard-dir", self.sbdir, "--", ECHO])
        self.assertEqual(c.wait_exit(), 1)
        self.assertIn(f"bind 127.0.0.1:{port}: Address already in use", c.log_text())

    def test_ipv4_ipv6_and_all_addresses(self):
        listens = ["127.0.0.1:0", ":0"] + (["[::1]:0"] if ipv6_loopback() else [])
        args = ["run", "--workers", "2", "--scoreboard-dir", self.sbdir]
        for l in listens:
            args += ["--listen", l]
        c = self.corral(args + ["--", ECHO])
        c.wait_idle(self.sbdir, "echo", 1)
        job = c.job(self.sbdir, "echo")
        self.assertEqual(len(job["listeners"]), len(listens))
        self.assertEqual(self.echo_roundtrip(c.port(self.sbdir, "echo", 0)), b"ping\n")
        # ":0" is one IPv6 socket with IPV6_V6ONLY off: IPv4 clients are served too.
        self.assertTrue(job["listeners"][1].startswith("[::]:"), job["listeners"])
        self.assertEqual(self.echo_roundtrip(c.port(self.sbdir, "echo", 1)), b"ping\n")
        if len(listens) == 3:
            self.assertTrue(job["listeners"][2].startswith("[::1]:"))
            self.assertEqual(self.echo_roundtrip(c.port(self.sbdir, "echo", 2), "::1"), b"ping\n")
        self.assertEqual(c.stop(), 0)

    def test_unix_socket_mode_and_stale_file_replaced(self):
        path = os.path.join(self.tmp, "echo.sock")
        # A stale socket file left by a dead process: replaced.
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(path)
        stale.close()
        config = f"""
scoreboard_dir: {self.sbdir}
jobs:
  echo:
    command: ["{ECHO}"]
    listen:
      - {{ address: "unix:{path}", mode: "0600", backlog: 16 }}
    workers: {{ start: 1, min_spare: 1, max_spare: 2, max: 2 }}
"""
        c = self.corral(["run", "{config}"], config=config)
        c.wait_idle(self.sbdir, "echo", 1)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(path)
            s.sendall(b"over unix\n")
            self.assertEqual(recv_until(s), b"over unix\n")
        self.assertEqual(c.stop(), 0)

    def test_unix_path_that_is_not_a_socket_is_never_replaced(self):
        path = self.write("precious.txt", "keep me\n")
        c = self.corral(["run", "--listen", f"unix:{path}", "--scoreboard-dir", self.sbdir, "--", ECHO])
        self.assertEqual(c.wait_exit(), 1)
        self.assertIn("is not a socket", c.log_text())
        with open(path) as f:
            self.assertEqual(f.read(), "keep me\n")

    def test_unix_socket_in_use_is_not_stolen(self):
        path = os.path.join(self.tmp, "live.sock")
        live = socket.socket(socket.AF_UNIX)
        live.bind(path)
        live.listen(1)
        self.addCleanup(live.close)
        c = self.corral(["run", "--listen", f"unix:{path}", "--scoreboard-dir", self.sbdir, "--", ECHO])
        self.assertEqual(c.wait_exit(), 1)
        self.assertIn("Address already in use", c.log_text())

    def test_unix_socket_owner_and_group(self):
        import grp
        import pwd
        import unittest
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root to chown")
        path = os.path.join(self.tmp, "owned.sock")
        config = f"""
scoreboard_dir: {self.sbdir}
jobs:
  echo:
    command: ["{ECHO}"]
    listen:
      - {{ address: "unix:{path}", mode: "0660", owner: nobody, group: nogroup }}
    workers: {{ start: 1, min_spare: 1, max_spare: 2, max: 2 }}
"""
        c = self.corral(["run", "{config}"], config=config)
        c.wait_idle(self.sbdir, "echo", 1)
        st = os.stat(path)
        self.assertEqual(st.st_uid, pwd.getpwnam("nobody").pw_uid)
        self.assertEqual(st.st_gid, grp.getgrnam("nogroup").gr_gid)
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o660)
        self.assertEqual(c.stop(), 0)
