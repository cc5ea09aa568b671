"""Helpers for integration tests: start the real build/corral, talk to it over real
sockets on 127.0.0.1, wait on conditions with deadlines, stop everything by pid."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

CORRAL = os.environ.get("CORRAL_BIN") or os.path.join(
    os.path.dirname(__file__), "..", "..", "build", "corral")
BUILD = os.environ.get("CORRAL_BUILD_DIR") or os.path.join(os.path.dirname(__file__), "..", "..", "build")
SOURCE = os.environ.get("CORRAL_SOURCE_DIR") or os.path.join(os.path.dirname(__file__), "..", "..")
HERE = os.path.dirname(os.path.abspath(__file__))
PROBE = os.path.join(HERE, "probe.py")
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else shutil.which("python3")


def wait_until(condition, timeout=10.0, interval=0.02, what="condition", log=None):
    """Polls condition() until it returns a truthy value; fails after timeout seconds
    (with the log of `log`, a Corral, in the message)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    extra = f"\ncorral log:\n{log.log_text()}" if log is not None else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r}){extra}")


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0): look at its state. A process being reaped between
    # the two calls makes open() fail with ENOENT, or read() with ESRCH.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def read_text(path):
    """The file's text, or None while it does not exist."""
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return None


def start_time(pid):
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), or
    None when it is gone: with it a test tells a process from a later one that was
    given the same pid (pid_max is 32768 here, and a parallel suite wraps it fast)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return None


def same_process_alive(pid, started):
    """Whether the process `pid` that started at `started` is still alive (not a zombie)."""
    return pid_alive(pid) and start_time(pid) == started


def describe_process(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().strip()
    except OSError as e:
        return f"{pid}: {e}"


def children_of(pid):
    """Pids whose parent is pid (live or zombie), from /proc."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(name))
        except (FileNotFoundError, ProcessLookupError, IndexError):
            pass
    return out


def connect(port, host="127.0.0.1", timeout=5.0):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect((host, port))
    return s


def recv_until(sock, token=b"\n", limit=65536):
    data = b""
    while token not in data and len(data) < limit:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def recv_all(sock, limit=1 << 20):
    data = b""
    while len(data) < limit:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def job_status(scoreboard_dir, name):
    """The job `name` from `corral status --scoreboard-dir DIR --json`, or None."""
    out = subprocess.run([CORRAL, "status", "--scoreboard-dir", scoreboard_dir, "--json"],
                         capture_output=True, text=True, timeout=10)
    if out.returncode != 0:
        return None
    for job in json.loads(out.stdout)["jobs"]:
        if job["name"] == name:
            return job
    return None


class LogFile:
    """A log file, for wait_until(log=...)."""

    def __init__(self, path):
        self.path = path

    def log_text(self):
        with open(self.path, "rb") as f:
            return f.read().decode(errors="replace")


class Corral:
    """One running `corral run` process, with its log in a file."""

    def __init__(self, testcase, args, config=None, env=None, cwd=None, name="corral",
                 launcher=(), pass_fds=(), binary=None):
        """launcher: argv put before corral's (it must exec corral in place, keeping the
        pid, as systemd-socket-activate does); pass_fds: fds the launcher inherits;
        binary: the corral to run instead of the build's (an upgradable_binary())."""
        self.tmp = testcase.tmp
        self.log_path = os.path.join(self.tmp, f"{name}.log")
        self.config_path = None
        if config is not None:
            self.config_path = os.path.join(self.tmp, f"{name}.yaml")
            with open(self.config_path, "w") as f:
                f.write(config)
            args = [self.config_path if a == "{config}" else a for a in args]
        full_env = dict(os.environ)
        full_env.pop("NOTIFY_SOCKET", None)
        full_env.pop("LISTEN_FDS", None)
        full_env.pop("LISTEN_PID", None)
        if env:
            full_env.update(env)
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(list(launcher) + [binary or CORRAL] + args, stdout=self.log,
                                     stderr=subprocess.STDOUT, env=full_env, cwd=cwd or self.tmp,
                                     stdin=subprocess.DEVNULL, pass_fds=pass_fds)
        self.pid = self.proc.pid
        testcase.addCleanup(self.cleanup)

    def log_text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def wait_log(self, pattern, timeout=10.0, count=1):
        rx = re.compile(pattern)
        return wait_until(lambda: len(rx.findall(self.log_text())) >= count or
                          (self.proc.poll() is not None and len(rx.findall(self.log_text())) >= count),
                          timeout, what=f"log line /{pattern}/ x{count}; log:\n{self.log_text()}")

    def status(self, scoreboard_dir):
        out = subprocess.run([CORRAL, "status", "--scoreboard-dir", scoreboard_dir, "--json"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode != 0:
            return None
        return json.loads(out.stdout)

    def job(self, scoreboard_dir, name):
        st = self.status(scoreboard_dir)
        if not st:
            return None
        for job in st["jobs"]:
            if job["name"] == name:
                return job
        return None

    def wait_idle(self, scoreboard_dir, name, count, timeout=10.0):
        return wait_until(lambda: (lambda j: j if j and j["idle"] >= count else None)(
            self.job(scoreboard_dir, name)), timeout, what=f"{count} idle workers of {name}; log:\n{self.log_text()}")

    def port(self, scoreboard_dir, name, index=0):
        job = wait_until(lambda: self.job(scoreboard_dir, name), what="status")
        return int(job["listeners"][index].rsplit(":", 1)[1])

    def signal(self, sig):
        if self.proc.poll() is None:
            os.kill(self.pid, sig)

    def wait_exit(self, timeout=15.0):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"corral did not exit within {timeout}s; log:\n{self.log_text()}")

    def stop(self, timeout=15.0):
        self.signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def cleanup(self):
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.log.close()


class CorralTest(unittest.TestCase):
    """Gives each test a temp dir (removed after) and tracks extra pids to kill."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="corral-test-")
        os.chmod(self.tmp, 0o755)
        self.sbdir = os.path.join(self.tmp, "sb")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self._pids = []
        self.addCleanup(self._kill_pids)

    def track_pid(self, pid):
        self._pids.append(pid)

    def _kill_pids(self):
        for pid in self._pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def corral(self, args, config=None, **kw):
        return Corral(self, args, config=config, **kw)

    def upgradable_binary(self):
        """A private copy of the corral binary, for a test that replaces it under the
        running supervisor (as a package upgrade does) before SIGUSR2."""
        binary = os.path.join(self.tmp, "corral-copy")
        shutil.copy(CORRAL, binary)
        return binary

    @staticmethod
    def replace_binary(binary, source=None):
        """Puts a fresh copy of `source` (the build's corral by default) at `binary` with
        one rename, as dpkg does: the running image's file is never written."""
        shutil.copy(source or CORRAL, binary + ".new")
        os.rename(binary + ".new", binary)

    def loopback_listener(self, backlog):
        """A listening TCP socket on 127.0.0.1 (closed at clean-up) and its port."""
        sock = socket.socket()
        self.addCleanup(sock.close)
        sock.bind(("127.0.0.1", 0))
        sock.listen(backlog)
        return sock, sock.getsockname()[1]

    def start_job(self, name, command, listen, workers, extra="", mode="prefork"):
        """Runs one job from a generated YAML file and waits for one idle worker.
        command: a YAML list; listen: addresses; workers: a YAML map; extra: more keys,
        indented four spaces."""
        listen_yaml = ", ".join(f'"{a}"' for a in listen)
        config = f"""
scoreboard_dir: {self.sbdir}
jobs:
  {name}:
    command: {command}
    mode: {mode}
    listen: [{listen_yaml}]
    workers: {workers}
{extra}"""
        c = self.corral(["run", "{config}"], config=config)
        c.wait_idle(self.sbdir, name, 1)
        return c

    def run_cli(self, args, timeout=20, **kw):
        return subprocess.run([CORRAL] + args, capture_output=True, text=True, timeout=timeout, **kw)

    def write(self, name, text, mode=0o644):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        return path

    def probes(self, directory):
        """Reports written by probe.py workers, keyed by pid."""
        out = {}
        if not os.path.isdir(directory):
            return out
        for name in os.listdir(directory):
            if name.endswith(".json"):
                try:
                    with open(os.path.join(directory, name)) as f:
                        report = json.load(f)
                    out[report["pid"]] = report
                except (ValueError, OSError):
                    pass
        return out
