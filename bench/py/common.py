"""Shared machinery of corral's benchmarks: processes we start (each in its own
cpuacct cgroup, pinned with taskset, stopped by pid), /proc readings, the load
clients (wrk and bench/clients/bclient), statistics and gnuplot.

Python 3 standard library only."""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import statistics
import struct
import subprocess
import time
from pathlib import Path

CGROOT = Path("/sys/fs/cgroup/cpuacct")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


class Ctx:
    """What every scenario needs: paths, options, pinning, the log."""

    def __init__(self, root: Path, build: Path, results: Path, quick: bool, rounds: int | None,
                 pin: bool, perf: bool):
        self.root, self.build, self.results = root, build, results
        self.quick, self.pin, self.perf = quick, pin, perf
        self.rounds = rounds
        self.bin = results / "bin"
        self.logdir = results / "logs"
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.corral = build / "corral"
        self.hello_http = build / "examples" / "hello-http"
        self.echo = build / "examples" / "echo"
        ncpu = os.cpu_count() or 1
        # Two cores: the client on cpu 0, the servers on cpu 1 (the rest, on bigger machines).
        self.client_cpus = "0" if pin and ncpu >= 2 else ""
        self.server_cpus = (("1" if ncpu == 2 else f"1-{ncpu - 1}") if pin and ncpu >= 2 else "")
        self.tmp = Path(subprocess.check_output(["mktemp", "-d", "/tmp/corral-bench.XXXXXX"], text=True).strip())
        os.chmod(self.tmp, 0o755)
        self.cg_base = CGROOT / f"corral-bench-{os.getpid()}"
        self.cgroups = self.cg_base if _cg_usable(self.cg_base) else None
        self.servers: list[Server] = []
        self._port = 18100

    def log(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def port(self) -> int:
        """A free TCP port on 127.0.0.1 (tried by binding)."""
        for _ in range(1000):
            self._port += 1
            if self._port > 28000:
                self._port = 18100
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", self._port))
                    return self._port
                except OSError:
                    continue
        raise RuntimeError("no free port")

    def client_prefix(self) -> list[str]:
        return ["taskset", "-c", self.client_cpus] if self.client_cpus else []

    def cleanup(self) -> None:
        for s in list(self.servers):
            s.stop()
        if self.cgroups and self.cgroups.exists():
            try:
                self.cgroups.rmdir()
            except OSError:
                pass
        subprocess.run(["rm", "-rf", str(self.tmp)], check=False)


def _cg_usable(base: Path) -> bool:
    try:
        base.mkdir(exist_ok=True)
        return (base / "cgroup.procs").exists()
    except OSError:
        return False


class Server:
    """A contender: one command, started pinned to the server cpus, inside its own
    cpuacct cgroup (so the CPU of every process it forks, even those that exited,
    is counted), stopped by its pid, then anything left in its cgroup by pid."""

    def __init__(self, ctx: Ctx, name: str, argv: list[str], *, cwd: Path | None = None,
                 env: dict | None = None, port: int | None = None, stop_signal=signal.SIGTERM):
        self.ctx, self.name, self.argv, self.cwd, self.port = ctx, name, argv, cwd, port
        self.env = dict(os.environ, **(env or {}))
        self.stop_signal = stop_signal
        self.proc: subprocess.Popen | None = None
        self.cg: Path | None = None
        self.logpath = ctx.logdir / f"{name}.log"

    @property
    def pid(self) -> int:
        assert self.proc
        return self.proc.pid

    def start(self) -> "Server":
        ctx = self.ctx
        prefix = ["taskset", "-c", ctx.server_cpus] if ctx.server_cpus else []
        cmd = prefix + [str(a) for a in self.argv]
        cgprocs = None
        if ctx.cgroups:
            self.cg = ctx.cgroups / f"{self.name}-{time.monotonic_ns()}"
            self.cg.mkdir()
            cgprocs = str(self.cg / "cgroup.procs")

        def pre():
            os.setsid()  # its own session: a terminal's ^C reaches only the harness
            if cgprocs:
                with open(cgprocs, "w") as f:
                    f.write(str(os.getpid()))

        self.log = open(self.logpath, "a")
        self.log.write(f"### {time.strftime('%F %T')} {shlex.join(cmd)}\n")
        self.log.flush()
        self.proc = subprocess.Popen(cmd, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=pre)
        ctx.servers.append(self)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu_ns(self) -> int | None:
        """CPU of the whole process tree so far (cgroup cpuacct.usage), in ns."""
        if not self.cg:
            return None
        try:
            return int((self.cg / "cpuacct.usage").read_text())
        except OSError:
            return None

    def pids(self) -> list[int]:
        if not self.cg:
            return []
        try:
            return [int(x) for x in (self.cg / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, self.stop_signal)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.ctx.log(f"{self.name}: pid {self.proc.pid} did not stop in {timeout}s; SIGKILL")
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # Whatever it forked and left behind: by pid, from its own cgroup.
        deadline = time.monotonic() + 5
        while self.cg and time.monotonic() < deadline:
            left = self.pids()
            if not left:
                break
            if time.monotonic() > deadline - 4.5:
                for p in left:
                    try:
                        os.kill(p, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            time.sleep(0.05)
        if self.cg:
            try:
                self.cg.rmdir()
            except OSError:
                pass
        self.log.close()
        if self in self.ctx.servers:
            self.ctx.servers.remove(self)
        self.proc = None


# ---- /proc --------------------------------------------------------------------

def proc_cpu_ticks(pid: int) -> int | None:
    """utime + stime of one process, in clock ticks."""
    try:
        s = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    f = s[s.rindex(")") + 2:].split()
    return int(f[11]) + int(f[12])


def proc_status(pid: int) -> dict:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            out[k] = v.strip()
    except OSError:
        pass
    return out


def rss_kb(pid: int) -> int | None:
    v = proc_status(pid).get("VmRSS")
    return int(v.split()[0]) if v else None


def vol_ctxt(pids: list[int]) -> int:
    total = 0
    for p in pids:
        v = proc_status(p).get("voluntary_ctxt_switches")
        if v is not None:
            total += int(v)
    return total


def children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def wait_port(port: int, timeout: float = 10.0, http: bool = True) -> bool:
    """Until 127.0.0.1:port answers (an HTTP request, if http)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if not http:
                    return True
                s.sendall(b"GET /hello.txt HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                data = s.recv(4096)
                if data.startswith(b"HTTP/1."):
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


# ---- corral ----------------------------------------------------------------------

def corral_status(ctx: Ctx, sbdir: Path) -> dict | None:
    r = subprocess.run([str(ctx.corral), "status", "--scoreboard-dir", str(sbdir), "--json"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return None
    try:
        return json.loads(r.stdout)
    except ValueError:
        return None


def corral_workers(ctx: Ctx, sbdir: Path) -> list[dict]:
    st = corral_status(ctx, sbdir)
    if not st:
        return []
    return [w for j in st.get("jobs", []) for w in j.get("workers", [])]


def scoreboard_idle(sbdir: Path) -> int | None:
    """Idle slots, read straight from the scoreboard file (layout: docs/PROTOCOL.md
    section 5): far cheaper than running `corral status` when polling 1024 slots."""
    try:
        files = [f for f in sbdir.iterdir() if f.is_file()]
    except OSError:
        return None
    for f in files:
        try:
            with open(f, "rb") as fh:
                head = fh.read(1024)
                if head[:8] != b"CORRALSB":
                    continue
                hsize, ssize, count = struct.unpack_from("=III", head, 12)
                fh.seek(hsize)
                data = fh.read(ssize * count)
        except OSError:
            continue
        return sum(1 for i in range(0, len(data) - ssize + 1, ssize)
                   if struct.unpack_from("=I", data, i)[0] == 2)
    return None


def wait_corral_idle(ctx: Ctx, sbdir: Path, n: int, timeout: float = 30.0, poll: float = 0.01) -> float | None:
    """Seconds until n workers are idle, or None. Polls the scoreboard file itself
    (every `poll` s), then confirms once with `corral status --json`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        idle = scoreboard_idle(sbdir)
        if idle is None:  # no scoreboard yet, or an unknown layout: ask corral
            ws = corral_workers(ctx, sbdir)
            idle = sum(1 for w in ws if w.get("state") == "idle")
        if idle >= n:
            t = time.monotonic() - t0
            ws = corral_workers(ctx, sbdir)
            if sum(1 for w in ws if w.get("state") == "idle") >= n:
                return t
        time.sleep(poll)
    return None


# ---- clients -------------------------------------------------------------------

_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text.strip())
    return float(m.group(1)) * _UNIT[m.group(2)] if m else float("nan")


def wrk(ctx: Ctx, port: int, secs: float, conns: int, close: bool, path: str = "/hello.txt",
        threads: int = 1) -> dict:
    cmd = ctx.client_prefix() + ["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{secs}s",
                                 "--latency", "--timeout", "5s"]
    if close:
        cmd += ["-H", "Connection: close"]
    cmd.append(f"http://127.0.0.1:{port}{path}")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=secs + 30)
    out = r.stdout
    res = {"rps": float("nan"), "p50": float("nan"), "p99": float("nan"), "requests": 0, "errors": 0}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        res["rps"] = float(m.group(1))
    m = re.search(r"(\d+) requests in", out)
    if m:
        res["requests"] = int(m.group(1))
    for q in ("50", "99"):
        m = re.search(rf"^\s+{q}%\s+(\S+)", out, re.M)
        if m:
            res[f"p{q}"] = _ms(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        res["errors"] = sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        res["errors"] += int(m.group(1))
    res["raw"] = out
    return res


def bclient(ctx: Ctx, args: list[str], timeout: float = 600) -> dict:
    cmd = ctx.client_prefix() + [str(ctx.bin / "bclient")] + [str(a) for a in args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    out = {}
    for line in r.stdout.splitlines():
        k, sep, v = line.partition("=")
        if sep:
            try:
                out[k] = float(v)
            except ValueError:
                out[k] = v
    if r.returncode != 0:
        out["error"] = r.stderr.strip()
    return out


# ---- statistics ----------------------------------------------------------------

def med(xs) -> float:
    xs = [x for x in xs if x is not None and x == x]
    return statistics.median(xs) if xs else float("nan")


def jain(xs) -> float:
    xs = list(xs)
    s, q = sum(xs), sum(x * x for x in xs)
    return s * s / (len(xs) * q) if q else float("nan")


def fmt(x, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "n/a"
    if isinstance(x, int):
        return str(x)
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(out) + "\n"


# ---- gnuplot ----------------------------------------------------------------------

def gnuplot(ctx: Ctx, name: str, script: str) -> str | None:
    """Renders results/NAME.png; returns the file name, or None without gnuplot."""
    png = ctx.results / f"{name}.png"
    full = (f"set terminal pngcairo size 900,500 font 'DejaVu Sans,10' noenhanced\n"
            f"set output '{png}'\n" + script)
    (ctx.results / f"{name}.gp").write_text(full)
    try:
        r = subprocess.run(["gnuplot"], input=full, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        return None
    if r.returncode != 0:
        ctx.log(f"gnuplot {name}: {r.stderr.strip()[:500]}")
        # pngcairo may be missing in gnuplot-nox builds: fall back to png
        full = full.replace("set terminal pngcairo", "set terminal png")
        r = subprocess.run(["gnuplot"], input=full, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            return None
    return png.name
