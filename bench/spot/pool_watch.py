#!/usr/bin/env python3
"""Spot check: what a corral pool does while every connection uses up a worker.

    bench/spot/pool_watch.py [prefork-mr1|inetd] [SECONDS] [BUILD]

Starts corral (the churn scenario's pool: start 8, min_spare 4, max_spare 16, max 64;
prefork-mr1: build/examples/hello-http with max_requests: 1; inetd: bench's hello1),
loads it with `bclient seq -c 16` for SECONDS (default 5), and samples every 5 ms the
scoreboard (slots starting / idle / busy, read as docs/PROTOCOL.md lays them out) and
the listen queue (TCP_INFO tcpi_unacked of corral's listening socket, duplicated with
pidfd_getfd: its accept queue).
Prints how often connections waited with no idle worker, and how many workers were
starting meanwhile (and the supervisor's child processes, from /proc). Needs bench/results/bin/{bclient,hello1} (bench/run.sh builds them).
Every process it starts is stopped by its pid."""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slots(sbdir: Path) -> list[int] | None:
    for f in sbdir.iterdir() if sbdir.exists() else []:
        try:
            with open(f, "rb") as fh:
                head = fh.read(64)
                if head[:8] != b"CORRALSB":
                    continue
                hsize, ssize, count = struct.unpack_from("=III", head, 12)
                fh.seek(hsize)
                data = fh.read(ssize * count)
        except OSError:
            continue
        return [struct.unpack_from("=I", data, i)[0] for i in range(0, len(data) - ssize + 1, ssize)]
    return None


_libc = ctypes.CDLL(None, use_errno=True)


def listener_copy(pid: int, port: int) -> socket.socket | None:
    """A duplicate of corral's listening socket (pidfd_getfd), to read its accept queue
    with TCP_INFO as corral does: /proc/net/tcp is far too slow with thousands of
    sockets in TIME_WAIT."""
    want = f"0100007F:{port:04X}"
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[1] == want and f[3] == "0A":
            inode = f[9]
    if inode is None:
        return None
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                pidfd = _libc.syscall(434, pid, 0)  # pidfd_open
                if pidfd < 0:
                    return None
                n = _libc.syscall(438, pidfd, int(fd), 0)  # pidfd_getfd
                os.close(pidfd)
                return socket.socket(fileno=n) if n >= 0 else None
        except OSError:
            continue
    return None


def listen_queue(sock: socket.socket | None) -> int:
    if sock is None:
        return -1
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return struct.unpack_from("=I", info, 24)[0]  # tcpi_unacked: the accept queue of a listener


def schedstat(pid: int) -> tuple[int, int, int]:
    """ns on cpu, ns waiting on a runqueue, voluntary context switches."""
    run, wait = (int(x) for x in Path(f"/proc/{pid}/schedstat").read_text().split()[:2])
    vol = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches"):
            vol = int(line.split()[1])
    return run, wait, vol


def main() -> int:
    mode = sys.argv[1] if len(sys.argv) > 1 else "prefork-mr1"
    secs = float(sys.argv[2]) if len(sys.argv) > 2 else 5.0
    build = Path(sys.argv[3] if len(sys.argv) > 3 else BENCH.parent / "build").resolve()
    bindir = BENCH / "results" / "bin"
    port = free_port()
    d = Path(tempfile.mkdtemp(prefix="corral-poolwatch."))
    sb = d / "sb"
    if mode == "inetd":
        job = f'    command: ["{bindir / "hello1"}"]\n    mode: inetd\n'
        extra = ""
    else:
        job = f'    command: ["{build / "examples" / "hello-http"}"]\n    mode: prefork\n'
        extra = "      max_requests: 1\n"
    (d / "c.yaml").write_text(f"""scoreboard_dir: {sb}
jobs:
  watch:
{job}    listen: ["127.0.0.1:{port}"]
    workers:
      start: 8
      min_spare: 4
      max_spare: 16
      max: 64
{extra}""")
    log = open(d / "corral.log", "w")
    srv = subprocess.Popen([str(build / "corral"), "run", str(d / "c.yaml")], stdout=log, stderr=subprocess.STDOUT)
    samples: list[tuple] = []
    sup: dict[str, int] = {}  # the supervisor's state at each sample: running, or its wchan
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 10:
            s = slots(sb)
            if s and s.count(2) >= 4:
                break
            time.sleep(0.02)
        time.sleep(1.0)
        lsock = listener_copy(srv.pid, port)
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                s = slots(sb) or []
                try:
                    kids = len(Path(f"/proc/{srv.pid}/task/{srv.pid}/children").read_text().split())
                except OSError:
                    kids = -1
                try:
                    st = Path(f"/proc/{srv.pid}/stat").read_text()
                    st = st[st.rindex(")") + 2]
                    wchan = Path(f"/proc/{srv.pid}/wchan").read_text().strip() if st != "R" else "(running)"
                except OSError:
                    wchan = "?"
                sup[wchan or "0"] = sup.get(wchan or "0", 0) + 1
                samples.append((time.monotonic(), s.count(1), s.count(2), s.count(3), listen_queue(lsock),
                                s.count(4), kids))
                time.sleep(0.005)
        th = threading.Thread(target=sample)
        sched0, t_load0 = schedstat(srv.pid), time.monotonic()
        th.start()
        r = subprocess.run([str(bindir / "bclient"), "seq", "-p", str(port), "-n", "100000", "-c", "16", "-d",
                            str(secs), "-t", "5000"], capture_output=True, text=True, timeout=secs + 60)
        sched1, t_load1 = schedstat(srv.pid), time.monotonic()
        stop.set()
        th.join()
    finally:
        srv.send_signal(signal.SIGTERM)
        try:
            srv.wait(15)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()
        log.close()
    out = dict(l.split("=", 1) for l in r.stdout.splitlines() if "=" in l)
    n = len(samples)
    waiting = [x for x in samples if x[4] > 0]
    starved = [x for x in waiting if x[2] == 0]
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")
    print(f"mode {mode}: {out.get('rate')} conn/s, p50 {out.get('lat_p50_ms')} p99 {out.get('lat_p99_ms')} "
          f"p99.9 {out.get('lat_p999_ms')} max {out.get('lat_max_ms')} ms, errors {out.get('errors')}")
    print(f"{n} samples ({n / secs:.0f}/s): mean starting {mean([x[1] for x in samples]):.1f}, idle "
          f"{mean([x[2] for x in samples]):.1f}, busy {mean([x[3] for x in samples]):.1f}, listen queue "
          f"{mean([x[4] for x in samples]):.1f}, stopping {mean([x[5] for x in samples]):.1f}, child "
          f"processes {mean([x[6] for x in samples]):.1f} (max {max((x[6] for x in samples), default=0)})")
    print(f"connections queued in {100 * len(waiting) / max(n, 1):.0f}% of samples; queued with no idle worker in "
          f"{100 * len(starved) / max(n, 1):.0f}% (then: mean starting {mean([x[1] for x in starved]):.1f}, "
          f"queue {mean([x[4] for x in starved]):.1f}); no worker starting, idle or busy in "
          f"{100 * sum(1 for x in samples if x[1] + x[2] + x[3] == 0) / max(n, 1):.1f}%")
    wall = t_load1 - t_load0
    ok = float(out.get("ok", 0) or 0)
    print(f"supervisor over the load ({wall:.1f} s): on cpu {100 * (sched1[0] - sched0[0]) / 1e9 / wall:.0f}%, "
          f"waiting for a cpu {100 * (sched1[1] - sched0[1]) / 1e9 / wall:.0f}%, otherwise blocked or asleep "
          f"(voluntary switches {sched1[2] - sched0[2]}, {(sched1[2] - sched0[2]) / max(ok, 1):.2f} per connection); "
          f"on cpu {(sched1[0] - sched0[0]) / 1e3 / max(ok, 1):.0f} us per connection")
    print("supervisor at the samples: " + ", ".join(f"{k} {100 * v / max(n, 1):.0f}%"
                                                    for k, v in sorted(sup.items(), key=lambda kv: -kv[1])))
    spawned = sum(1 for l in (d / "corral.log").read_text().splitlines() if "started worker" in l)
    print(f"'started worker' lines in corral's log: {spawned}")
    subprocess.run(["rm", "-rf", str(d)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
