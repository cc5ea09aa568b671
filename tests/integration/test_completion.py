"""bash completion (scripts/completion/corral, installed as
share/bash-completion/completions/corral): subcommands, options and YAML files, asked
of the completion function in a bash subshell as bash would (COMP_WORDS/COMP_CWORD,
compgen inside), with and without Debian's bash-completion loaded (issue 20, item 4)."""
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import unittest

from harness import CORRAL, SOURCE

SCRIPT = os.path.join(SOURCE, "scripts", "completion", "corral")
BASH_COMPLETION = "/usr/share/bash-completion/bash_completion"


@unittest.skipUnless(shutil.which("bash"), "bash missing")
class Completion(unittest.TestCase):
    with_framework = False

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="corral-compl-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        for name in ("web.yaml", "db.yml", "notes.txt"):
            open(os.path.join(self.dir, name), "w").close()
        os.mkdir(os.path.join(self.dir, "sub"))

    def complete(self, line):
        """The candidates for the last word of `line` (a trailing space: a new word)."""
        words = shlex.split(line)
        if line.endswith(" "):
            words.append("")
        preamble = ""
        if self.with_framework:
            preamble = f"source {BASH_COMPLETION} >/dev/null 2>&1 || exit 97\n"
        script = preamble + f"""
source {shlex.quote(SCRIPT)}
complete -p corral >/dev/null || exit 98
COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})
COMP_CWORD={len(words) - 1}
COMP_LINE={shlex.quote(line)}
COMP_POINT=${{#COMP_LINE}}
_corral corral "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
        out = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True,
                             text=True, timeout=30, cwd=self.dir)
        self.assertEqual(out.returncode, 0, out.stderr)
        return sorted(w for w in out.stdout.split("\n") if w)

    def test_subcommands(self):
        self.assertEqual(self.complete("corral "), ["check", "run", "status"])
        self.assertEqual(self.complete("corral st"), ["status"])
        self.assertEqual(self.complete("corral --log-level debug r"), ["run"])

    def test_options_agree_with_help(self):
        def help_options(*args):
            text = subprocess.run([CORRAL, *args, "--help"], capture_output=True, text=True,
                                  timeout=10).stdout
            return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", text.split("Options:")[1].split("Subcommands:")[0]))
        self.assertEqual(set(self.complete("corral --")), help_options())
        self.assertEqual(set(self.complete("corral run --")) - {"--"}, help_options("run"))
        self.assertIn("--", self.complete("corral run --"))
        self.assertEqual(set(self.complete("corral status --")), help_options("status"))
        self.assertEqual(set(self.complete("corral check --")), help_options("check"))
        self.assertEqual(self.complete("corral status --j"), ["--json"])

    def test_option_values(self):
        self.assertEqual(self.complete("corral run --mode p"), ["plain", "prefork"])
        self.assertEqual(self.complete("corral --log-level w"), ["warn"])
        self.assertEqual(self.complete("corral run --scoreboard-dir "), ["sub"])
        self.assertIn("unix:/", self.complete("corral run --listen "))

    def test_yaml_files(self):
        for sub in ("run", "check", "status"):
            self.assertEqual(self.complete(f"corral {sub} "), ["db.yml", "sub", "web.yaml"], sub)
        self.assertEqual(self.complete("corral check w"), ["web.yaml"])

    def test_program_after_double_dash(self):
        self.assertIn("/bin/cat", self.complete("corral run --listen :8080 -- /bin/ca"))
        self.assertIn("notes.txt", self.complete("corral run -- /bin/cat no"))


@unittest.skipUnless(os.path.exists(BASH_COMPLETION), "bash-completion not installed")
class CompletionWithBashCompletion(Completion):
    with_framework = True


if __name__ == "__main__":
    unittest.main()
