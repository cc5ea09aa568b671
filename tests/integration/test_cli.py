"""The command line: help, version, check, and bad input (exit codes of PRODUCT.md)."""
import os
import socket

from harness import CorralTest, PROBE, PYTHON


class CliTest(CorralTest):
    def test_help_and_version_exit_0(self):
        for args in (["--help"], ["--version"], ["run", "--help"], ["check", "--help"], ["status", "--help"]):
            out = self.run_cli(args)
            self.assertEqual(out.returncode, 0, args)
        self.assertRegex(self.run_cli(["--version"]).stdout, r"^corral \d+\.\d+\.\d+")
        self.assertIn("--listen", self.run_cli(["run", "--help"]).stdout)

    def test_unknown_option_exits_2(self):
        out = self.run_cli(["run", "--no-such-option", "--", "/bin/true"])
        self.assertEqual(out.returncode, 2)
        out = self.run_cli(["frobnicate"])
        self.assertEqual(out.returncode, 2)

    def test_check_valid_file_prints_summary(self):
        path = self.write("ok.yaml", f"""
jobs:
  web:
    command: ["{PYTHON}", "{PROBE}"]
    listen: ["127.0.0.1:0"]
    workers: {{ start: 2, min_spare: 1, max_spare: 3, max: 5 }}
  other:
    command: /bin/cat
    mode: inetd
    listen: ["unix:{self.tmp}/o.sock"]
""")
        out = self.run_cli(["check", path])
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("2 jobs", out.stdout)
        self.assertIn("web: prefork", out.stdout)
        self.assertIn("other: inetd", out.stdout)

    def test_check_reports_every_error_with_position(self):
        path = self.write("bad.yaml", """jobs:
  web:
    command: ["/no/such/program"]
    listen: ["127.0.0.1:99999"]
    workers:
      min_spar: 2
      start: 10
      max: 4
    graceful_timeout: 5 parsecs
""")
        out = self.run_cli(["check", path])
        self.assertEqual(out.returncode, 2)
        lines = out.stderr.strip().splitlines()
        self.assertIn(f"{path}:6:7: unknown key \"min_spar\" in workers; did you mean \"min_spare\"?", out.stderr)
        self.assertTrue(any(line.startswith(f"{path}:4:14: ") and "65535" in line for line in lines), out.stderr)
        self.assertTrue(any(line.startswith(f"{path}:9:23: ") and "parsecs" in line for line in lines), out.stderr)
        self.assertTrue(any("workers.start (10) must not exceed workers.max (4)" in line for line in lines), out.stderr)
        self.assertTrue(any(line.startswith(f"{path}:3:14: ") and "/no/such/program" in line for line in lines), out.stderr)

    def test_check_yaml_syntax_error(self):
        path = self.write("syntax.yaml", "jobs:\n  web: [unclosed\n")
        out = self.run_cli(["check", path])
        self.assertEqual(out.returncode, 2)
        self.assertRegex(out.stderr, rf"^{path}:\d+:\d+: ")

    def test_check_missing_file(self):
        out = self.run_cli(["check", os.path.join(self.tmp, "nope.yaml")])
        self.assertEqual(out.returncode, 2)
        self.assertIn("nope.yaml", out.stderr)

    def test_run_with_invalid_config_binds_nothing_and_exits_2(self):
        # A port nobody uses: corral must not bind it, nor create its scoreboard.
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        path = self.write("bad.yaml", f"""
scoreboard_dir: {self.sbdir}
jobs:
  web:
    command: ["{PYTHON}", "{PROBE}"]
    listen: ["127.0.0.1:{port}"]
    workers: {{ min_spare: 9, max_spare: 3 }}
""")
        out = self.run_cli(["run", path])
        self.assertEqual(out.returncode, 2)
        self.assertIn("min_spare (9) must not exceed workers.max_spare (3)", out.stderr)
        self.assertFalse(os.path.exists(self.sbdir))

    def test_run_needs_something_to_run(self):
        self.assertEqual(self.run_cli(["run"]).returncode, 2)
        self.assertEqual(self.run_cli(["run", "--listen", "127.0.0.1:0", "--"]).returncode, 2)
        out = self.run_cli(["run", "--listen", "nonsense", "--", "/bin/cat"])
        self.assertEqual(out.returncode, 2)
        self.assertIn("nonsense", out.stderr)
