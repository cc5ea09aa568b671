"""The man pages corral(1) and corral.yaml(5) (docs/man/*.md, generated with pandoc into
build/man/) hold every subcommand, option, YAML key, signal, exit code and environment
variable, and agree with the command line's --help (issue 20, item 3 and 5)."""
import os
import re
import shutil
import subprocess
import unittest

from harness import BUILD, CORRAL, SOURCE

MAN_DIR = os.path.join(BUILD, "man")


def troff_text(path):
    """The words of a man page's troff source, font escapes and \\- removed."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    text = re.sub(r"\\f(\[[A-Z]*\]|[BIRP])", "", text)
    text = text.replace("\\-", "-").replace("\\[u2005]", " ").replace("\\[u2006]", " ")
    return text.replace("\\", "")


def help_text(*args):
    out = subprocess.run([CORRAL, *args, "--help"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, (args, out.stderr)
    return out.stdout


def help_options(text):
    """The long options of a --help text (its Options: section)."""
    options = set()
    section = None
    for line in text.splitlines():
        if re.match(r"^[A-Z][a-z]+:", line):
            section = line.split(":")[0]
            continue
        if section == "Options":
            options.update(re.findall(r"(?<![\w-])--[a-z][a-z-]*", line.split("  ")[1] if line.startswith("  ") else line))
    return options


def loader_keys():
    """Every key lib/config/config.cpp accepts: its k...Keys vectors, by the map they
    belong to (kWorkersKeys -> workers, ...)."""
    with open(os.path.join(SOURCE, "lib", "config", "config.cpp")) as f:
        source = f.read()
    keys = {}
    for name, body in re.findall(r"const std::vector<std::string> k(\w+)Keys\s*=\s*\{([^}]*)\}", source):
        keys[name] = re.findall(r'"([^"]+)"', body)
    assert keys.get("Top") and keys.get("Job"), keys
    return keys


@unittest.skipUnless(os.path.isdir(MAN_DIR), "build/man missing: configured with -DCORRAL_MAN=OFF")
class ManPages(unittest.TestCase):
    def setUp(self):
        self.man1 = troff_text(os.path.join(MAN_DIR, "corral.1"))
        self.man5 = troff_text(os.path.join(MAN_DIR, "corral.yaml.5"))

    def assert_word(self, word, text, page):
        self.assertRegex(text, r"(?<![\w.-])" + re.escape(word) + r"(?![\w-])", f"{word} missing from {page}")

    def test_every_yaml_key(self):
        for group, keys in loader_keys().items():
            for key in keys:
                # Keys of the nested maps with their map's name: workers.start, restart.backoff_max.
                if group in ("Workers", "Restart"):
                    self.assert_word(f"{group.lower()}.{key}", self.man5, "corral.yaml(5)")
                else:
                    self.assert_word(key, self.man5, "corral.yaml(5)")
        # Each map has its own section.
        for section in ("TOP-LEVEL KEYS", "JOB KEYS", "LISTENER KEYS", "WORKERS KEYS", "RESTART KEYS"):
            self.assertIn(f".SH {section}", self.man5)

    def test_every_subcommand_and_option(self):
        top = help_text()
        subcommands = re.findall(r"^  ([a-z]+) {2,}", top.split("Subcommands:")[1], re.M)
        self.assertEqual(sorted(subcommands), ["check", "run", "status"])
        accepted = set(help_options(top))
        for sub in subcommands:
            self.assert_word(sub, self.man1, "corral(1)")
            accepted |= help_options(help_text(sub))
        self.assertTrue({"--version", "--log-level", "--listen", "--json", "--scoreboard-dir"} <= accepted)
        for option in accepted:
            self.assert_word(option, self.man1, "corral(1)")
        # And the other way round: SYNOPSIS .. OPTIONS document no option the CLI lacks
        # (later sections quote other programs' options: systemctl enable --now).
        options_part = self.man1.split(".SH SYNOPSIS")[1].split(".SH MODES")[0]
        documented = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", options_part))
        self.assertEqual(documented - accepted, set(), "options in corral(1) that --help does not list")
        self.assert_word("-h", self.man1, "corral(1)")

    def test_signals_exit_codes_environment(self):
        for sig in ("SIGHUP", "SIGTERM", "SIGINT", "SIGQUIT", "SIGUSR2"):
            self.assert_word(sig, self.man1, "corral(1)")
        exit_status = self.man1.split(".SH EXIT STATUS")[1].split(".SH ")[0]
        for code in ("0", "1", "2", "3"):
            self.assertRegex(exit_status, rf"(?m)^{code}$", f"exit code {code}")
        # Every variable corral reads (getenv in lib/ and cmd/) and every CORRAL_* it sets.
        names = set()
        for root in ("lib", "cmd"):
            for dirpath, _, files in os.walk(os.path.join(SOURCE, root)):
                for name in files:
                    if name.endswith((".cpp", ".c", ".h")):
                        with open(os.path.join(dirpath, name), encoding="utf-8", errors="replace") as f:
                            source = f.read()
                        names.update(re.findall(r'getenv\("([A-Z_]+)"\)', source))
                        names.update(re.findall(r'"(CORRAL_[A-Z_]+)=', source))
                        names.update(re.findall(r'"(LISTEN_[A-Z_]+|REMOTE_[A-Z_]+|TCP[A-Z]+)=', source))
        self.assertIn("LISTEN_FDS", names)
        for name in sorted(names):
            self.assert_word(name, self.man1, "corral(1)")

    @unittest.skipUnless(shutil.which("man"), "man-db not installed")
    def test_renders_without_warnings(self):
        for page, title in (("corral.1", "CORRAL(1)"), ("corral.yaml.5", "CORRAL.YAML(5)")):
            out = subprocess.run(["man", "--warnings", "-l", os.path.join(MAN_DIR, page)],
                                 capture_output=True, text=True, timeout=30,
                                 env=dict(os.environ, MANWIDTH="80", MANPAGER="cat", PAGER="cat",
                                          LC_ALL="C.UTF-8"))
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertEqual(out.stderr, "", page)
            self.assertIn(title, out.stdout)


if __name__ == "__main__":
    unittest.main()
