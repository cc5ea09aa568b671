"""Issue 13 (unchecked input): command-line numbers, huge configurations, NUL bytes,
listeners that can never bind together, `user:` without root, `corral status` as a
normal user while root's supervisor runs, and the capabilities a worker keeps.

Each test performs the bad input or the attack and asserts what a user sees. The tests
that need a second user create one (useradd --system) and remove it afterwards."""
import json
import os
import pwd
import shutil
import subprocess
import time
import unittest

from harness import CORRAL, CorralTest, children_of, pid_alive, wait_until

SETPRIV = shutil.which("setpriv")
AS_ROOT = os.geteuid() == 0


def read_status_field(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return line.split()[1]
    return None


def read_comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except (FileNotFoundError, ProcessLookupError):
        return None


class TestUser:
    """A system user without a home, created for one test class and removed after it."""

    def __init__(self):
        self.name = f"crl13u{os.getpid() % 100000}"
        subprocess.run(["userdel", self.name], capture_output=True)
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        self.name], check=True, capture_output=True, timeout=30)
        entry = pwd.getpwnam(self.name)
        self.uid, self.gid = entry.pw_uid, entry.pw_gid

    def argv(self, args):
        return [SETPRIV, f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups"] + args

    def run(self, args, timeout=20, env=None):
        """Runs `corral ARGS` as this user with a plain environment (no XDG_RUNTIME_DIR,
        no RUNTIME_DIRECTORY)."""
        plain = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C"}
        plain.update(env or {})
        return subprocess.run(self.argv([os.path.abspath(CORRAL)] + args), capture_output=True, text=True,
                              timeout=timeout, env=plain, cwd="/")

    def remove(self):
        subprocess.run(["userdel", self.name], capture_output=True, timeout=30)


class CommandLineNumbersTest(CorralTest):
    def test_numbers_get_the_yaml_ranges(self):
        cases = [
            (["--workers", "100000"], "--workers must be between 0 and 16384, not 100000"),
            (["--max", "0"], "--max must be between 1 and 16384, not 0"),
            (["--max", "20000"], "--max must be between 1 and 16384, not 20000"),
            (["--min-spare", "0", "--max-spare", "0"], "--max-spare must be between 1 and 16384, not 0"),
            (["--workers", "-1"], "--workers must be a whole number, not \"-1\""),
            (["--min-spare", "auto"], "--min-spare: \"auto\" applies to workers.start and workers.max only"),
        ]
        sock = os.path.join(self.tmp, "n.sock")
        for args, message in cases:
            started = time.monotonic()
            out = self.run_cli(["run", "--listen", f"unix:{sock}", "--scoreboard-dir", self.sbdir] + args +
                               ["--", "/bin/cat"])
            self.assertEqual(out.returncode, 2, (args, out.stderr))
            self.assertIn(message, out.stderr, args)
            self.assertLess(time.monotonic() - started, 5, args)
            self.assertFalse(os.path.exists(sock), args)  # nothing bound
            self.assertFalse(os.path.exists(self.sbdir), args)  # nothing started
        # The same values in YAML: exit 2 with the same words, under the key's name.
        path = self.write("w.yaml", f"""
jobs:
  w:
    command: /bin/cat
    listen: ["unix:{sock}"]
    workers: {{ start: 100000, max: 0, max_spare: 0, min_spare: auto }}
""")
        out = self.run_cli(["check", path])
        self.assertEqual(out.returncode, 2)
        self.assertIn(f"{path}:6:23: workers.start must be between 0 and 16384, not 100000", out.stderr)
        self.assertIn("workers.max must be between 1 and 16384, not 0", out.stderr)
        self.assertIn("workers.max_spare must be between 1 and 16384, not 0", out.stderr)
        self.assertIn("workers.min_spare: \"auto\" applies to workers.start and workers.max only", out.stderr)

    def test_bounds_not_given_are_still_pulled_along(self):
        # --max 2 alone: start (default 4) and the spares fit under it; the job starts.
        c = self.corral(["run", "--listen", "127.0.0.1:0", "--max", "2", "--scoreboard-dir", self.sbdir,
                         "--mode", "plain", "--", "/bin/sleep", "300"])
        job = wait_until(lambda: (lambda j: j if j and len(j["workers"]) == 2 else None)(c.job(self.sbdir, "sleep")),
                         what="2 copies", log=c)
        self.assertEqual(len(job["workers"]), 2)
        self.assertEqual(c.stop(), 0)

    def test_version_takes_no_argument(self):
        out = self.run_cli(["--version", "extra"])
        self.assertEqual(out.returncode, 2)
        self.assertIn("--version takes no other argument", out.stderr)
        self.assertEqual(self.run_cli(["--version"]).returncode, 0)


class HugeConfigurationTest(CorralTest):
    def env_config(self, name, count, size):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(f"scoreboard_dir: {self.sbdir}\njobs:\n  big:\n    command: [/bin/sleep, '300']\n"
                    f"    mode: plain\n    listen: [\"unix:{self.tmp}/big.sock\"]\n    env:\n")
            for i in range(count):
                f.write(f"      K{i}: {'v' * size}\n")
        return path

    def test_environment_beyond_the_exec_limit_fails_check_and_run(self):
        path = self.env_config("wide.yaml", 30, 100000)  # 3 MB: under 4 MiB, over ARG_MAX
        for command in ("check", "run"):
            out = self.run_cli([command, path])
            self.assertEqual(out.returncode, 2, out.stderr)
            self.assertIn(f"{path}:3:3: job \"big\": command and environment come to ", out.stderr)
            self.assertIn("would fail with E2BIG", out.stderr)
        self.assertFalse(os.path.exists(f"{self.tmp}/big.sock"))
        self.assertFalse(os.path.exists(self.sbdir))

    def test_one_string_beyond_max_arg_strlen_fails_check(self):
        path = self.env_config("long.yaml", 1, 140000)
        out = self.run_cli(["check", path])
        self.assertEqual(out.returncode, 2, out.stderr)
        self.assertIn(f"{path}:3:3: job \"big\": env.K0 is 140,003 bytes long", out.stderr)
        self.assertIn("MAX_ARG_STRLEN", out.stderr)

    def test_fifty_thousand_variables_are_checked_in_linear_time(self):
        path = self.env_config("many.yaml", 50000, 1)
        started = time.monotonic()
        out = self.run_cli(["check", path], timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr[-2000:])
        # About 0.3 s here; a search per variable made the supervisor's merge take 6 s.
        self.assertLess(time.monotonic() - started, 10)

    def test_a_file_beyond_4_mib_is_refused_at_once(self):
        path = self.env_config("huge.yaml", 5000, 1000)  # 5 MB
        started = time.monotonic()
        for command in ("check", "run"):
            out = self.run_cli([command, path])
            self.assertEqual(out.returncode, 2)
            self.assertIn(f"{path}: the file is larger than 4,194,304 bytes (4 MiB)", out.stderr)
        self.assertLess(time.monotonic() - started, 5)

    def test_a_directory_is_not_an_empty_file(self):
        out = self.run_cli(["check", self.tmp])
        self.assertEqual(out.returncode, 2)
        self.assertIn(f"{self.tmp}: is a directory, not a configuration file", out.stderr)
        self.assertNotIn("empty", out.stderr)

    def test_nul_bytes_in_exec_strings_are_errors(self):
        path = self.write("nul.yaml", f"""
jobs:
  n:
    command: ["/bin/sh", "-c\\0rm -rf /"]
    mode: plain
    env: {{ A: "safe\\0evil" }}
""")
        for command in ("check", "run"):
            out = self.run_cli([command, path])
            self.assertEqual(out.returncode, 2)
            self.assertIn(f"{path}:4:26: each command argument contains a NUL byte", out.stderr)
            self.assertIn(f"{path}:6:15: env.A contains a NUL byte", out.stderr)


class ListenerOverlapTest(CorralTest):
    def test_pairs_that_never_bind_together_fail_check(self):
        path = self.write("ov.yaml", f"""
jobs:
  a:
    command: /bin/cat
    listen: ["0.0.0.0:7301", ":7302", "unix:{self.tmp}/a.sock", ":7304"]
  b:
    command: /bin/cat
    listen: ["127.0.0.1:7301", "[::]:7302", "unix:{self.tmp}/./a.sock", "[::1]:7304", "127.0.0.1:7304"]
""")
        out = self.run_cli(["check", path])
        self.assertEqual(out.returncode, 2)
        self.assertIn("address 127.0.0.1:7301 can never be bound together with 0.0.0.0:7301 of job \"a\"", out.stderr)
        self.assertIn("address [::]:7302 can never be bound together with :7302 of job \"a\"", out.stderr)
        self.assertIn(f"address unix:{self.tmp}/./a.sock can never be bound together with unix:{self.tmp}/a.sock",
                      out.stderr)
        self.assertIn("address [::1]:7304 can never be bound together with :7304", out.stderr)
        self.assertIn("address 127.0.0.1:7304 can never be bound together with :7304", out.stderr)
        self.assertEqual(len(out.stderr.strip().splitlines()), 5, out.stderr)
        # On the command line as well (one job), and run binds nothing.
        out = self.run_cli(["run", "--scoreboard-dir", self.sbdir, "--listen", f"unix:{self.tmp}/c.sock",
                            "--listen", f"unix:{self.tmp}//c.sock", "--", "/bin/cat"])
        self.assertEqual(out.returncode, 2)
        self.assertIn("can never be bound together", out.stderr)
        self.assertFalse(os.path.exists(f"{self.tmp}/c.sock"))


@unittest.skipUnless(AS_ROOT and SETPRIV, "needs root (useradd) and setpriv")
class SecondUserTest(CorralTest):
    @classmethod
    def setUpClass(cls):
        cls.user = TestUser()
        cls.addClassCleanup(cls.user.remove)

    def test_user_key_without_root_warns_in_check_and_fails_run(self):
        sock = os.path.join(self.tmp, "u.sock")
        path = self.write("u.yaml", f"""
scoreboard_dir: {self.sbdir}
jobs:
  u:
    command: /bin/cat
    listen: ["unix:{sock}"]
    user: nobody
""")
        out = self.user.run(["check", path])
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn(f"{path}:7:11: warning: job \"u\": user: nobody needs root", out.stderr)
        self.assertIn("OK", out.stdout)
        out = self.user.run(["run", path])
        self.assertEqual(out.returncode, 2, out.stderr)
        self.assertIn(f"{path}:7:11: job \"u\": user: nobody needs root", out.stderr)
        self.assertFalse(os.path.exists(sock))  # nothing bound
        self.assertFalse(os.path.exists(self.sbdir))

    def start_root_supervisor(self, config_name, job, runtime_directory=""):
        """A root supervisor that keeps the default scoreboard directory (no
        scoreboard_dir:), as the units run it: /run/corral, or $RUNTIME_DIRECTORY."""
        path = self.write(config_name, f"""
jobs:
  {job}:
    command: [/bin/sleep, "300"]
    mode: plain
    workers: {{ start: 1 }}
""")
        directory = runtime_directory or "/run/corral"
        scoreboard = os.path.join(directory, f"{job}.scoreboard")
        self.addCleanup(lambda: os.path.exists(scoreboard) and os.unlink(scoreboard))
        c = self.corral(["run", path], env={"RUNTIME_DIRECTORY": runtime_directory})
        wait_until(lambda: c.job(directory, job), what=f"{job} in {directory}", log=c)
        return c, path

    def test_status_as_a_user_finds_roots_supervisor_in_run_corral(self):
        job = f"t13s{os.getpid()}"
        c, path = self.start_root_supervisor(f"{job}.yaml", job)
        out = self.user.run(["status", path, "--json"])
        self.assertEqual(out.returncode, 0, out.stderr)
        status = json.loads(out.stdout)
        self.assertEqual([j["name"] for j in status["jobs"]], [job])
        self.assertEqual(status["supervisor"]["pid"], c.pid)
        self.assertEqual(c.stop(), 0)

    def test_status_as_a_user_finds_the_unit_layout_run_corral_name(self):
        name = f"t13n{os.getpid()}"
        runtime = f"/run/corral/{name}"
        os.makedirs(runtime, mode=0o755, exist_ok=True)
        os.chmod("/run/corral", 0o755)
        self.addCleanup(shutil.rmtree, runtime, True)
        c, path = self.start_root_supervisor(f"{name}.yaml", "web", runtime_directory=runtime)
        out = self.user.run(["status", path])
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("job web: plain", out.stdout)
        self.assertEqual(c.stop(), 0)

    def test_status_that_finds_nothing_says_where_it_looked(self):
        name = f"t13x{os.getpid()}"
        path = self.write(f"{name}.yaml", "jobs:\n  nothere:\n    command: /bin/cat\n    mode: plain\n")
        out = self.user.run(["status", path])
        self.assertEqual(out.returncode, 3)
        for directory in (f"/run/corral/{name}", "/run/corral", f"/tmp/corral-{self.user.uid}"):
            self.assertIn(f"  {directory}\n", out.stderr)
        self.assertIn("no supervisor is running for job nothere", out.stderr)
        self.assertIn("--scoreboard-dir DIR", out.stderr)

    def test_workers_keep_no_inheritable_or_ambient_capability(self):
        path = self.write("caps.yaml", f"""
scoreboard_dir: {self.sbdir}
jobs:
  caps:
    command: [/bin/sleep, "300"]
    mode: plain
    workers: {{ start: 1 }}
    user: {self.user.name}
""")
        # corral itself starts with cap_net_bind_service (bit 10, 0x400) inheritable and
        # ambient, as a unit with AmbientCapabilities= or a capsh wrapper would give it.
        launcher = [SETPRIV, "--inh-caps", "+net_bind_service", "--ambient-caps", "+net_bind_service"]
        c = self.corral(["run", path], launcher=launcher)
        workers = wait_until(lambda: [p for p in children_of(c.pid)
                                      if os.stat(f"/proc/{p}").st_uid == self.user.uid and
                                      read_comm(p) == "sleep"],
                             what="a sleep worker running as the test user", log=c)
        # setpriv has exec'd corral by now (its pid started the worker): the attack is set up.
        self.assertEqual(int(read_status_field(c.pid, "CapInh"), 16), 0x400)
        self.assertEqual(int(read_status_field(c.pid, "CapAmb"), 16), 0x400)
        for pid in workers:
            self.track_pid(pid)
            self.assertEqual(int(read_status_field(pid, "CapInh"), 16), 0, pid)
            self.assertEqual(int(read_status_field(pid, "CapAmb"), 16), 0, pid)
            self.assertEqual(int(read_status_field(pid, "CapPrm"), 16), 0, pid)
            self.assertEqual(read_status_field(pid, "NoNewPrivs"), "0", pid)  # not set by corral
        self.assertEqual(c.stop(), 0)
        for pid in workers:
            wait_until(lambda: not pid_alive(pid), what=f"worker {pid} gone")


if __name__ == "__main__":
    unittest.main()
