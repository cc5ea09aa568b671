#!/usr/bin/python3
"""A legacy inetd-style program in Python (standard library only) for warm inetd mode.

It pays a Python program's usual start-up (the interpreter, then json, decimal and
friends: about 35 ms here), then reads one request line from stdin and answers with one
JSON line that reports its own start-up time, how long it then waited for its request,
its fds and the PROXY line if corral sent one (`warm_header: proxy-v1`); after that it
echoes stdin to stdout, byte for byte, until EOF, and exits. One connection, one process.

    corral run examples/warm-inetd.yaml     then: echo hello | nc -N 127.0.0.1 7073
"""
import time

READY_AT = None


def started_ms_ago():
    """Milliseconds since this process was created (/proc/self/stat, field 22)."""
    import os
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    start_ticks = int(fields[19])
    hz = os.sysconf("SC_CLK_TCK")
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return (uptime - start_ticks / hz) * 1000.0


import decimal  # noqa: E402  (the start-up a real program pays)
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

STARTUP_MS = started_ms_ago()
READY_AT = time.monotonic()


def main():
    stdin = sys.stdin.buffer
    stdout = sys.stdout.buffer
    line = stdin.readline()
    arrived = time.monotonic()
    proxy = None
    if line.startswith(b"PROXY "):
        proxy = line.decode("ascii", "replace").rstrip("\r\n")
        line = stdin.readline()
    report = {
        "pid": os.getpid(),
        "startup_ms": round(STARTUP_MS, 1),
        "waited_ms": round((arrived - READY_AT) * 1000.0, 1),
        "request": line.decode("utf-8", "replace").rstrip("\n"),
        "proxy": proxy,
        "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
        "remote_addr": os.environ.get("REMOTE_ADDR"),
        "total": str(decimal.Decimal(len(line))),
    }
    stdout.write(json.dumps(report).encode() + b"\n")
    stdout.flush()
    while True:
        chunk = stdin.read1(1 << 16)  # what readline() buffered first, then the pipe
        if not chunk:
            break
        stdout.write(chunk)
        stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
