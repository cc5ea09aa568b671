"""`cmake --install` into a temporary prefix (never the live system), and what a user of
the installed tree does with it: build a separate C worker project against it with
pkg-config and with find_package(corral), run it under the installed corral, and use
the Python helper with Debian's /usr/bin/python3 (issue 20, docs/PACKAGING.md)."""
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import unittest

from harness import BUILD, SOURCE, HERE, connect, recv_until, wait_until

PYTHON = "/usr/bin/python3"
CONSUMER = os.path.join(HERE, "install_consumer")


def sanitized_build():
    """The -fsanitize flags the build under test used (scripts/sanitize.sh): the
    installed library then needs the sanitizer runtimes in its users' links too."""
    try:
        with open(os.path.join(BUILD, "CMakeCache.txt")) as f:
            if "CORRAL_SANITIZE:BOOL=ON" in f.read():
                return ["-fsanitize=address,undefined"]
    except OSError:
        pass
    return []


def run(cmd, **kw):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    if out.returncode != 0:
        raise AssertionError(f"{cmd} exited {out.returncode}\nstdout:\n{out.stdout}\nstderr:\n{out.stderr}")
    return out


class InstalledTree(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="corral-install-")
        os.chmod(cls.tmp, 0o755)
        cls.prefix = os.path.join(cls.tmp, "prefix")
        env = dict(os.environ)
        env.pop("DESTDIR", None)
        run(["cmake", "--install", BUILD, "--prefix", cls.prefix], env=env)
        cls.corral = os.path.join(cls.prefix, "bin", "corral")
        pcs = glob.glob(os.path.join(cls.prefix, "lib*", "**", "corral-worker.pc"), recursive=True)
        assert len(pcs) == 1, pcs
        cls.pkgconfig_dir = os.path.dirname(pcs[0])
        cls.libdir = os.path.dirname(cls.pkgconfig_dir)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, True)

    def setUp(self):
        self.work = tempfile.mkdtemp(prefix="case-", dir=self.tmp)
        self.addCleanup(shutil.rmtree, self.work, True)

    # ---- layout -------------------------------------------------------------------

    def test_layout(self):
        p = self.prefix
        expected = [
            "bin/corral",
            "include/corral/worker.h", "include/corral/worker.hpp", "include/corral/protocol.h",
            "lib/systemd/system/corral@.service", "lib/systemd/system/corral@.socket",
            "lib/systemd/system/corral-inetd-example.service",
            "lib/systemd/system/corral-inetd-example.socket",
            "lib/python3/dist-packages/corral_worker.py",
            "lib/corral/hello-http",
            "share/man/man1/corral.1", "share/man/man5/corral.yaml.5",
            "share/bash-completion/completions/corral",
            "share/doc/corral/examples/echo.py", "share/doc/corral/examples/hello-http.yaml",
            "share/doc/corral/examples/hello_http.cpp",
            "share/doc/corral/examples/etc/hello-http.yaml",
        ]
        for rel in expected:
            self.assertTrue(os.path.exists(os.path.join(p, rel)), rel)
        self.assertTrue(os.access(self.corral, os.X_OK))
        for name in ("libcorral-worker.a", "libcorral-worker.so", "libcorral-worker.so.0"):
            self.assertTrue(os.path.exists(os.path.join(self.libdir, name)), name)
        cmake_dir = os.path.join(self.libdir, "cmake", "corral")
        for name in ("corralConfig.cmake", "corralConfigVersion.cmake", "corralTargets.cmake"):
            self.assertTrue(os.path.exists(os.path.join(cmake_dir, name)), name)
        # The soname, so that a program linked against it keeps working across rebuilds.
        out = run(["objdump", "-p", os.path.join(self.libdir, "libcorral-worker.so")]).stdout
        self.assertIn("SONAME               libcorral-worker.so.0", out)

    def test_units_name_the_installed_binary(self):
        unitdir = os.path.join(self.prefix, "lib", "systemd", "system")
        for name in ("corral@.service", "corral-inetd-example.service"):
            with open(os.path.join(unitdir, name)) as f:
                text = f.read()
            lines = [line for line in text.splitlines() if not line.startswith("#")]
            execs = [line for line in lines if line.startswith(("ExecStart=", "ExecReload="))
                     and "corral" in line.split("=", 1)[1].split()[0]]
            self.assertTrue(execs, name)
            for line in execs:
                self.assertTrue(line.split("=", 1)[1].startswith(self.corral + " "), line)
            self.assertNotIn("/usr/local", "\n".join(lines), name)
            self.assertNotRegex(text, r"@[A-Z_]+@", name)

    def test_version(self):
        out = run([self.corral, "--version"]).stdout
        self.assertRegex(out, r"^corral \d+\.\d+\.\d+")

    def test_version_names_the_commit(self):
        # The build defines CORRAL_COMMIT (git rev-parse at configure time, or
        # -DCORRAL_GIT_COMMIT=).
        out = run([self.corral, "--version"]).stdout
        self.assertRegex(out, r"^corral \d+\.\d+\.\d+.*\b([0-9a-f]{7,}(-dirty)?|unknown)\b")

    # ---- a C worker built against the installed tree -------------------------------

    def serve_and_ask(self, command, env=None, name="pong"):
        """Runs `command` as a prefork job under the installed corral; returns a reply."""
        sbdir = os.path.join(self.work, "sb")
        env_yaml = ""
        if env:
            env_yaml = "    env: {" + ", ".join(f'{k}: "{v}"' for k, v in env.items()) + "}\n"
        config = os.path.join(self.work, "job.yaml")
        with open(config, "w") as f:
            f.write(textwrap.dedent(f"""\
                scoreboard_dir: {sbdir}
                jobs:
                  {name}:
                    command: {command}
                    listen: ["127.0.0.1:0"]
                    workers: {{start: 2, min_spare: 1, max_spare: 2, max: 4}}
                    graceful_timeout: 5s
                """) + env_yaml)
        log_path = os.path.join(self.work, "corral.log")
        log = open(log_path, "wb")
        self.addCleanup(log.close)
        run_env = dict(os.environ)
        for k in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
            run_env.pop(k, None)
        proc = subprocess.Popen([self.corral, "run", config], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=run_env)

        def kill():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        self.addCleanup(kill)

        def logtext():
            with open(log_path, "rb") as f:
                return f.read().decode(errors="replace")

        def idle_port():
            out = subprocess.run([self.corral, "status", "--scoreboard-dir", sbdir, "--json"],
                                 capture_output=True, text=True, timeout=10)
            if out.returncode != 0:
                return None
            import json
            for job in json.loads(out.stdout)["jobs"]:
                if job["name"] == name and job["idle"] >= 1:
                    return int(job["listeners"][0].rsplit(":", 1)[1])
            return None
        port = wait_until(idle_port, timeout=20, what=f"an idle {name} worker; log:\n{logtext()}")
        replies = []
        for _ in range(3):
            with connect(port) as s:
                replies.append(recv_until(s).decode())
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(20), 0, logtext())
        return replies

    def test_pkg_config_build(self):
        env = dict(os.environ, PKG_CONFIG_PATH=self.pkgconfig_dir)
        flags = run(["pkg-config", "--cflags", "--libs", "corral-worker"], env=env).stdout.split()
        self.assertIn("-I" + os.path.join(self.prefix, "include"), flags)
        self.assertIn("-lcorral-worker", flags)
        self.assertIn("-L" + self.libdir, flags)
        self.assertEqual(run(["pkg-config", "--modversion", "corral-worker"], env=env).stdout.strip(),
                         run([self.corral, "--version"]).stdout.split()[1])
        exe = os.path.join(self.work, "pong")
        run(["cc", "-std=c11", "-Wall", "-Wextra", "-Werror", *sanitized_build(), "-o", exe,
             os.path.join(CONSUMER, "pong.c")] + flags + ["-Wl,-rpath," + self.libdir], env=env)
        ldd = run(["ldd", exe]).stdout
        self.assertIn(os.path.join(self.libdir, "libcorral-worker.so.0"), ldd)
        self.assertEqual(self.serve_and_ask(f'["{exe}"]'), ["pong pong\n"] * 3)

    def test_find_package_build(self):
        build = os.path.join(self.work, "build")
        sanitize = " ".join(sanitized_build())
        run(["cmake", "-S", CONSUMER, "-B", build, "-DCMAKE_PREFIX_PATH=" + self.prefix,
             "-DCMAKE_C_FLAGS=-Wall -Wextra -Werror " + sanitize,
             "-DCMAKE_EXE_LINKER_FLAGS=" + sanitize])
        run(["cmake", "--build", build])
        shared = os.path.join(build, "pong-shared")
        static = os.path.join(build, "pong-static")
        self.assertIn(os.path.join(self.libdir, "libcorral-worker.so.0"), run(["ldd", shared]).stdout)
        self.assertNotIn("libcorral-worker", run(["ldd", static]).stdout)
        self.assertEqual(self.serve_and_ask(f'["{shared}"]'), ["pong pong\n"] * 3)
        self.assertEqual(self.serve_and_ask(f'["{static}"]', name="pong-static"),
                         ["pong pong-static\n"] * 3)

    # ---- the Python helper ------------------------------------------------------------

    def python_dir(self):
        return os.path.join(self.prefix, "lib", "python3", "dist-packages")

    def test_python_helper_imports(self):
        self.assertTrue(os.path.exists(PYTHON), "Debian's /usr/bin/python3")
        out = run([PYTHON, "-I", "-c", f"import sys; sys.path.insert(0, {self.python_dir()!r}); "
                   "import corral_worker as w; print(w.__file__); "
                   "print(w.EXIT_FATAL, callable(w.serve), w.Worker.__name__)"]).stdout.split()
        self.assertEqual(out[0], os.path.join(self.python_dir(), "corral_worker.py"))
        self.assertEqual(out[1:], ["78", "True", "Worker"])
        # Outside corral it says why it cannot run, and exits 78 (stop respawning).
        script = os.path.join(self.work, "w.py")
        with open(script, "w") as f:
            f.write("import sys, corral_worker\nsys.exit(corral_worker.serve(lambda c, a, i: None))\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
        env["PYTHONPATH"] = self.python_dir()
        out = subprocess.run([PYTHON, script], capture_output=True, text=True, env=env, timeout=30)
        self.assertEqual(out.returncode, 78, out.stderr)
        self.assertIn("LISTEN_FDS", out.stderr)

    def test_python_worker_under_corral(self):
        script = os.path.join(self.work, "hello.py")
        with open(script, "w") as f:
            f.write(textwrap.dedent("""\
                import os, sys
                import corral_worker

                def handle(conn, addr, index):
                    conn.sendall(f"hello from {os.environ['CORRAL_JOB']}\\n".encode())

                sys.exit(corral_worker.serve(handle))
                """))
        replies = self.serve_and_ask(f'["{PYTHON}", "{script}"]', env={"PYTHONPATH": self.python_dir()},
                                     name="py")
        self.assertEqual(replies, ["hello from py\n"] * 3)

    # ---- the example configuration -------------------------------------------------------

    def test_example_configuration(self):
        path = os.path.join(self.prefix, "share", "doc", "corral", "examples", "etc", "hello-http.yaml")
        with open(path) as f:
            text = f.read()
        worker = os.path.join(self.prefix, "lib", "corral", "hello-http")
        self.assertIn(f'command: ["{worker}"]', text)
        self.assertIn("user: corral", text)
        # Without the package's `corral` user, checked as a user-less copy on port 0.
        copy = os.path.join(self.work, "hello-http.yaml")
        with open(copy, "w") as f:
            f.write(text.replace("    user: corral\n", "").replace("127.0.0.1:8080", "127.0.0.1:0"))
        out = run([self.corral, "check", copy])
        self.assertIn("OK", out.stdout)


if __name__ == "__main__":
    unittest.main()
