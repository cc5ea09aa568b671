#!/usr/bin/env python3
"""A probe worker for integration tests. Writes what it received (fds, environment,
ids, process group, cwd) as JSON to $PROBE_DIR/<pid>.json, then:
  PROBE_EXIT=N      exit N at once (after the report)
  PROBE_IDLE=1      mark its scoreboard slot idle (it is then "ready")
  PROBE_IGNORE_TERM=1  ignore SIGTERM (to test SIGKILL after graceful_timeout)
and waits for SIGTERM, on which it exits 0."""
import json
import mmap
import os
import signal
import struct
import sys
import time

report = {
    "pid": os.getpid(),
    "ppid": os.getppid(),
    "pgid": os.getpgid(0),
    "sid": os.getsid(0),
    "uid": os.getuid(),
    "gid": os.getgid(),
    "groups": sorted(os.getgroups()),
    "cwd": os.getcwd(),
    "argv": sys.argv,
    "env": dict(os.environ),
    "fds": {},
    "sigmask": "",
}
for fd in sorted(int(x) for x in os.listdir("/proc/self/fd")):
    try:
        report["fds"][str(fd)] = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        pass
# The listing of /proc/self/fd opened one fd of its own; drop the ones that vanished.
report["fds"] = {k: v for k, v in report["fds"].items() if os.path.exists(f"/proc/self/fd/{k}")}
with open("/proc/self/status") as f:
    for line in f:
        if line.startswith(("SigBlk:", "SigIgn:")):
            report[line.split(":")[0]] = line.split(":")[1].strip()

directory = os.environ.get("PROBE_DIR", "/tmp")
tmp = os.path.join(directory, f".{os.getpid()}.tmp")
with open(tmp, "w") as f:
    json.dump(report, f)
os.rename(tmp, os.path.join(directory, f"{os.getpid()}.json"))

if "PROBE_EXIT" in os.environ:
    sys.exit(int(os.environ["PROBE_EXIT"]))

if os.environ.get("PROBE_IDLE") == "1" and "CORRAL_SCOREBOARD_FD" in os.environ:
    fd = int(os.environ["CORRAL_SCOREBOARD_FD"])
    slot = int(os.environ["CORRAL_SLOT"])
    size = os.fstat(fd).st_size
    sb = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    header_size, slot_size = struct.unpack_from("=II", sb, 12)  # docs/PROTOCOL.md 5.1
    off = header_size + slot_size * slot
    struct.pack_into("=Q", sb, off + 24, time.monotonic_ns())
    struct.pack_into("=I", sb, off, 2)  # CORRAL_SLOT_IDLE

if os.environ.get("PROBE_TRUNCATE") == "1" and "CORRAL_SCOREBOARD_FD" in os.environ:
    # Hostile: shrink the scoreboard through the inherited fd.
    os.ftruncate(int(os.environ["CORRAL_SCOREBOARD_FD"]), 0)

if os.environ.get("PROBE_IGNORE_TERM") == "1":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    signal.pause()
