"""Attacks on the paths corral creates or changes as root (docs/SECURITY.md), performed
by a second, unprivileged user that each test creates and removes. They must do no harm:
corral applies its modes and owners to its own files only, or refuses with exit 1 and a
message that names the path and the fix."""
import ctypes
import json
import os
import pwd
import secrets
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import unittest

from harness import CORRAL, PYTHON, CorralTest, children_of, connect, recv_until, wait_until

HERE = os.path.dirname(os.path.abspath(__file__))
ATTACKER = os.path.join(HERE, "path_attacker.py")
ECHO_PY = os.path.join(os.environ.get("CORRAL_SOURCE_DIR", os.path.join(HERE, "..", "..")),
                       "examples", "echo.py")
IN_CREATE, IN_MOVED_TO, IN_NONBLOCK, IN_CLOEXEC = 0x100, 0x80, 0o4000, 0o2000000


def read_line(proc, timeout=10.0):
    """One line of proc's stdout, waiting at most timeout seconds."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise AssertionError(f"no output from pid {proc.pid} within {timeout}s")
    return proc.stdout.readline().decode().strip()


@unittest.skipUnless(os.geteuid() == 0 and shutil.which("useradd") and shutil.which("setpriv"),
                     "needs root, useradd and setpriv")
class SecurityTest(CorralTest):
    def setUp(self):
        super().setUp()
        self.attacker = self.make_user("a")

    def make_user(self, tag):
        name = f"corral-sectest-{tag}{secrets.token_hex(3)}"
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        "--user-group", name], check=True, capture_output=True, timeout=30)
        self.addCleanup(self.remove_user, name)
        pw = pwd.getpwnam(name)
        return pw

    def remove_user(self, name):
        out = subprocess.run(["userdel", name], capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 0, f"userdel {name}: {out.stderr}")
        subprocess.run(["groupdel", name], capture_output=True, timeout=30)  # if still there

    def as_user(self, user, argv, **kw):
        """A process running argv as `user` (no supplementary groups), stopped by pid at
        clean-up."""
        proc = subprocess.Popen(["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
                                 "--clear-groups", "--"] + argv, **kw)
        self.addCleanup(self.stop_pid, proc)  # before userdel, which refuses a live user
        return proc

    @staticmethod
    def stop_pid(proc):
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def attack(self, *args):
        # Unbuffered, so that read_line's select sees every line not yet read.
        proc = self.as_user(self.attacker, [PYTHON, ATTACKER] + list(args), bufsize=0,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.addCleanup(proc.stdout.close)
        self.addCleanup(proc.stdin.close)
        return proc

    def secret_file(self):
        """A root-owned 0600 file the attacker would like to own or read, and its stat."""
        path = os.path.join(self.tmp, "shadow")
        with open(path, "w") as f:
            f.write("root:secret\n")
        os.chmod(path, 0o600)
        return path, os.stat(path)

    def assert_untouched(self, path, before):
        now = os.stat(path)
        self.assertEqual((stat.S_IMODE(now.st_mode), now.st_uid, now.st_gid),
                         (stat.S_IMODE(before.st_mode), before.st_uid, before.st_gid))
        with open(path) as f:
            self.assertEqual(f.read(), "root:secret\n")

    # --- 1. unix listener: chmod/chown by path after bind ---------------------------------

    def race_unix_listener(self, listener_extra, check_socket):
        sockdir = os.path.join(self.tmp, "sockets")
        os.mkdir(sockdir, 0o755)
        os.chown(sockdir, self.attacker.pw_uid, self.attacker.pw_gid)
        sock_path = os.path.join(sockdir, "web.sock")
        target, before = self.secret_file()
        attacker = self.attack("swap", sockdir, "web.sock", target)
        self.assertEqual(read_line(attacker), "ready")
        # One mode: key only (a duplicate key in a YAML map is taken as the first one).
        mode = "" if "mode:" in listener_extra else ', mode: "0666"'
        config = f"""
scoreboard_dir: {self.sbdir}
jobs:
  web:
    command: ["/bin/sleep", "600"]
    mode: plain
    listen:
      - {{ address: "unix:{sock_path}"{mode}{listener_extra} }}
    workers: {{ start: 1 }}
"""
        refused = served = swaps = 0
        deadline = time.monotonic() + 90
        for attempt in range(20):
            if time.monotonic() > deadline:
                break
            if os.path.lexists(sock_path):
                os.unlink(sock_path)
            c = self.corral(["run", "{config}"], config=config, name=f"race{attempt}")
            wait_until(lambda: c.proc.poll() is not None or "listening on" in c.log_text(),
                       timeout=15, log=c)
            if c.proc.poll() is not None:
                self.assertEqual(c.wait_exit(), 1, c.log_text())
                self.assertIn(f"{sock_path} was replaced after corral bound it", c.log_text())
                refused += 1
            else:
                st = os.lstat(sock_path)
                if stat.S_ISSOCK(st.st_mode):  # else the swap came after corral was done
                    check_socket(st)
                served += 1
                self.assertEqual(c.stop(), 0, c.log_text())
            self.assert_untouched(target, before)
            # Wait until the attacker has handled this attempt's creation: a swap that
            # came late would otherwise land between the unlink above and the next bind.
            fence = f".fence-{attempt}"
            open(os.path.join(sockdir, fence), "w").close()
            while (line := read_line(attacker)) != f"fence {fence}":
                self.assertTrue(line, "the attacker exited before answering the fence")
                swaps += line.startswith("swap ")
            os.unlink(os.path.join(sockdir, fence))
        os.kill(attacker.pid, signal.SIGKILL)
        attacker.wait(10)
        # The attack was performed (the helper swapped a link in), and did no harm.
        self.assertGreater(swaps, 0)
        self.assertGreater(refused + served, 0)
        sys.stderr.write(f"[{swaps} swaps: corral refused {refused} starts, served {served}] ")

    def test_swapping_a_link_over_a_new_unix_socket_changes_no_mode(self):
        def check(st):
            self.assertEqual(stat.S_IMODE(st.st_mode), 0o666)
            self.assertEqual(st.st_uid, 0)
        self.race_unix_listener("", check)

    def test_swapping_a_link_over_a_new_unix_socket_changes_no_owner(self):
        def check(st):
            self.assertEqual(stat.S_IMODE(st.st_mode), 0o660)
            self.assertEqual((st.st_uid, st.st_gid), (self.attacker.pw_uid, self.attacker.pw_gid))
        owner = self.attacker.pw_name
        self.race_unix_listener(f', mode: "0660", owner: {owner}, group: {owner}', check)

    def test_unix_listener_mode_owner_and_group_still_apply(self):
        path = os.path.join(self.tmp, "admin.sock")
        owner = self.attacker.pw_name
        config = f"""
scoreboard_dir: {self.sbdir}
jobs:
  web:
    command: ["{ECHO_PY}"]
    listen:
      - {{ address: "unix:{path}", mode: "0640", owner: {owner}, group: {owner} }}
    workers: {{ start: 1, min_spare: 1, max_spare: 2, max: 2 }}
"""
        old = os.umask(0o077)  # the umask must neither weaken nor strengthen the mode
        try:
            c = self.corral(["run", "{config}"], config=config)
        finally:
            os.umask(old)
        c.wait_idle(self.sbdir, "web", 1)
        st = os.lstat(path)
        self.assertTrue(stat.S_ISSOCK(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o640)
        self.assertEqual((st.st_uid, st.st_gid), (self.attacker.pw_uid, self.attacker.pw_gid))
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(path)
            s.sendall(b"hello\n")
            self.assertEqual(recv_until(s), b"hello\n")
        self.assertEqual(c.stop(), 0)

    # --- 2. accept-lock FIFO opened by path ----------------------------------------------

    def test_accept_lock_has_no_path_to_swap(self):
        # The attack swapped the FIFO that corral created in the scoreboard directory, as
        # the directory's owner. Now there is no such file: watch the directory while the
        # job starts, and look at what the workers hold.
        os.mkdir(self.sbdir, 0o755)
        libc = ctypes.CDLL(None, use_errno=True)
        ino = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        self.assertGreaterEqual(ino, 0)
        self.addCleanup(os.close, ino)
        self.assertGreaterEqual(libc.inotify_add_watch(ino, self.sbdir.encode(),
                                                       IN_CREATE | IN_MOVED_TO), 0)
        c = self.start_job("echo", f'["{ECHO_PY}"]', ["127.0.0.1:0"],
                           "{ start: 2, min_spare: 2, max_spare: 2, max: 2 }",
                           extra="    accept_mutex: pipe")
        c.wait_idle(self.sbdir, "echo", 2)
        port = c.port(self.sbdir, "echo")
        for _ in range(3):
            with connect(port) as s:
                s.sendall(b"ping\n")
                self.assertEqual(recv_until(s), b"ping\n")
        names = set()
        try:
            data = os.read(ino, 65536)
        except BlockingIOError:
            data = b""
        at = 0
        while at + 16 <= len(data):
            length = int.from_bytes(data[at + 12:at + 16], sys.byteorder)
            names.add(data[at + 16:at + 16 + length].rstrip(b"\0").decode())
            at += 16 + length
        self.assertIn("echo.scoreboard", names)
        self.assertEqual([n for n in names if not n.startswith((".echo.scoreboard.", "echo.scoreboard"))],
                         [], "only the scoreboard (and its temporary name) is ever created there")
        self.assertEqual(os.listdir(self.sbdir), ["echo.scoreboard"])
        workers = children_of(c.pid)
        self.assertEqual(len(workers), 2)
        for pid in workers:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
            fd = int(env[b"CORRAL_LOCK_FD"])
            self.assertTrue(os.readlink(f"/proc/{pid}/fd/{fd}").startswith("pipe:["))
            self.assertTrue(stat.S_ISFIFO(os.stat(f"/proc/{pid}/fd/{fd}").st_mode))
        self.assertEqual(c.stop(), 0)

    def test_scoreboard_directory_owned_by_another_user_is_refused(self):
        # Its owner could swap whatever corral puts there (the FIFO, the scoreboards).
        os.mkdir(self.sbdir, 0o755)
        os.chown(self.sbdir, self.attacker.pw_uid, self.attacker.pw_gid)
        target, before = self.secret_file()
        os.symlink(target, os.path.join(self.sbdir, "echo.scoreboard"))
        c = self.corral(["run", "--listen", "127.0.0.1:0", "--scoreboard-dir", self.sbdir,
                         "--", ECHO_PY], name="owned")
        self.assertEqual(c.wait_exit(), 1)
        self.assertIn(f"scoreboard directory {self.sbdir} is owned by uid {self.attacker.pw_uid}, "
                      "neither root nor uid 0", c.log_text())
        self.assertIn("--scoreboard-dir", c.log_text())
        self.assert_untouched(target, before)

    # --- 3. the default scoreboard directory, as a user's supervisor ---------------------

    def victim_corral(self, victim, name, scoreboard_dir=None):
        """corral run as `victim`, with the default scoreboard directory unless told."""
        args = ["run", "--listen", "127.0.0.1:0", "--mode", "plain", "--workers", "1"]
        if scoreboard_dir:
            args += ["--scoreboard-dir", scoreboard_dir]
        # Both exec in place, so the pid is corral's.
        launcher = ["env", "-u", "XDG_RUNTIME_DIR", "-u", "RUNTIME_DIRECTORY", "HOME=/",
                    "setpriv", f"--reuid={victim.pw_uid}", f"--regid={victim.pw_gid}",
                    "--clear-groups", "--"]
        return self.corral(args + ["--", "/bin/sleep", "600"], name=name, launcher=launcher)

    def default_dir_of(self, victim):
        path = f"/tmp/corral-{victim.pw_uid}"
        self.addCleanup(lambda: shutil.rmtree(path, True) if not os.path.islink(path)
                        else os.unlink(path))
        return path

    def test_default_scoreboard_directory_prepared_by_another_user_is_refused(self):
        victim = self.make_user("v")
        path = self.default_dir_of(victim)
        elsewhere = os.path.join(self.tmp, "attacker-dir")
        os.mkdir(elsewhere, 0o777)
        os.chmod(elsewhere, 0o777)
        os.chown(elsewhere, self.attacker.pw_uid, self.attacker.pw_gid)
        cases = [
            ("world-writable", lambda: (os.mkdir(path), os.chmod(path, 0o777),
                                        os.chown(path, self.attacker.pw_uid, self.attacker.pw_gid)),
             "is owned by uid"),
            ("0777 of its own", lambda: (os.mkdir(path), os.chmod(path, 0o777),
                                         os.chown(path, victim.pw_uid, victim.pw_gid)),
             "is writable by its group or by others (mode 0777)"),
            ("symlink", lambda: (os.symlink(elsewhere, path),
                                 os.lchown(path, self.attacker.pw_uid, self.attacker.pw_gid)),
             "is a symbolic link"),
        ]
        for label, prepare, why in cases:
            with self.subTest(label):
                if os.path.islink(path):
                    os.unlink(path)
                shutil.rmtree(path, True)
                prepare()
                # The attacker's scoreboard, 0666, ready to be rewritten live.
                sb = os.path.join(path, "sleep.scoreboard")
                with open(sb, "wb") as f:
                    f.write(b"CORRALSB" + bytes(2048))
                os.chmod(sb, 0o666)
                os.chown(sb, self.attacker.pw_uid, self.attacker.pw_gid)
                c = self.victim_corral(victim, f"victim-{label.replace(' ', '-')}")
                self.assertEqual(c.wait_exit(), 1, c.log_text())
                self.assertIn(f"scoreboard directory {path} {why}", c.log_text())
                self.assertIn("--scoreboard-dir", c.log_text())
                with open(sb, "rb") as f:
                    self.assertEqual(f.read(), b"CORRALSB" + bytes(2048))
        self.assertEqual(os.listdir(elsewhere), ["sleep.scoreboard"])

    def test_missing_default_directory_is_created_private_under_tmp(self):
        victim = self.make_user("v")
        path = self.default_dir_of(victim)
        c = self.victim_corral(victim, "victim")
        wait_until(lambda: os.path.exists(os.path.join(path, "sleep.scoreboard")), log=c)
        st = os.lstat(path)
        self.assertTrue(stat.S_ISDIR(st.st_mode))
        self.assertEqual((stat.S_IMODE(st.st_mode), st.st_uid), (0o700, victim.pw_uid))
        sb = os.stat(os.path.join(path, "sleep.scoreboard"))
        self.assertEqual((stat.S_IMODE(sb.st_mode), sb.st_uid), (0o644, victim.pw_uid))
        self.assertEqual(c.stop(), 0)

    def test_a_flock_on_a_leftover_scoreboard_neither_blocks_nor_steers_a_start(self):
        # A trusted directory (the victim's, 0755) holding a scoreboard left 0666 by an
        # earlier mistake: the attacker opened it, wrote a header naming pid 1 and holds
        # an exclusive flock. Before, corral refused: "in use by another corral (pid 1)".
        victim = self.make_user("v")
        sbdir = os.path.join(self.tmp, "victim-sb")
        os.mkdir(sbdir, 0o755)
        os.chown(sbdir, victim.pw_uid, victim.pw_gid)
        sb = os.path.join(sbdir, "sleep.scoreboard")
        with open(sb, "wb") as f:
            f.write(bytes(4096))
        os.chmod(sb, 0o666)
        os.chown(sb, victim.pw_uid, victim.pw_gid)
        holder = self.attack("lock", sb, "1")
        self.assertEqual(read_line(holder), "locked")
        c = self.victim_corral(victim, "victim", scoreboard_dir=sbdir)
        c.wait_log(r"was locked by a process that is not a running corral")
        self.assertIsNone(c.proc.poll(), c.log_text())
        # A new file took its place: 0644, the victim's, not the one the attacker holds.
        st = os.stat(sb)
        self.assertEqual((stat.S_IMODE(st.st_mode), st.st_uid), (0o644, victim.pw_uid))
        # `corral status` still works for another user with read access, and names the
        # real supervisor.
        out = self.as_user(self.attacker, [CORRAL, "status", "--scoreboard-dir", sbdir, "--json"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        stdout, stderr = out.communicate(timeout=10)
        self.assertEqual(out.returncode, 0, stderr)
        self.assertEqual(json.loads(stdout)["supervisor"]["pid"], c.pid)
        self.assertEqual(c.stop(), 0)

    def test_status_works_as_another_user_with_read_access(self):
        c = self.start_job("echo", f'["{ECHO_PY}"]', ["127.0.0.1:0"],
                           "{ start: 1, min_spare: 1, max_spare: 2, max: 2 }")
        out = self.as_user(self.attacker, [CORRAL, "status", "--scoreboard-dir", self.sbdir],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        stdout, stderr = out.communicate(timeout=10)
        self.assertEqual(out.returncode, 0, stderr)
        self.assertIn(b"echo", stdout)
        self.assertEqual(c.stop(), 0)


if __name__ == "__main__":
    unittest.main()
