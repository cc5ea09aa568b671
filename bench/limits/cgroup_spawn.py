#!/usr/bin/env python3
"""What a per-worker cgroup costs a start: an inetd job (one program start per
connection, the most spawns a job can have) with and without `cgroup:`, run in the same
process, alternating rounds, on 127.0.0.1. Needs root and the cgroup v1 memory and pids
hierarchies. Prints connections per second and the ratio (with / without).

    sudo python3 bench/limits/cgroup_spawn.py BUILD_DIR [CONNECTIONS] [ROUNDS]
"""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

build = os.path.abspath(sys.argv[1])
count = int(sys.argv[2]) if len(sys.argv) > 2 else 300
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
corral = os.path.join(build, "corral")
name = f"corral-bench-{uuid.uuid4().hex[:8]}"
dirs = [f"/sys/fs/cgroup/{c}/{name}" for c in ("memory", "pids")]


def status(sbdir):
    out = subprocess.run([corral, "status", "--scoreboard-dir", sbdir, "--json"],
                         capture_output=True, text=True, timeout=10)
    return json.loads(out.stdout) if out.returncode == 0 else None


def run(cgroup):
    tmp = tempfile.mkdtemp(prefix="corral-bench-")
    sbdir = os.path.join(tmp, "sb")
    extra = "    cgroup: { memory_max: 64MiB, pids_max: 16 }\n" if cgroup else ""
    path = os.path.join(tmp, "c.yaml")
    with open(path, "w") as f:
        f.write(f"""scoreboard_dir: {sbdir}
jobs:
  app:
    command: ["/bin/true"]
    mode: inetd
    listen: ["127.0.0.1:0"]
    workers: {{ start: 2, min_spare: 2, max_spare: 8, max: 16 }}
{extra}""")
    script = "".join(f"echo $$ > {d}/cgroup.procs && " for d in dirs) + 'exec "$0" "$@"'
    proc = subprocess.Popen(["/bin/sh", "-c", script, corral, "run", path],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        job = None
        while time.monotonic() < deadline:
            st = status(sbdir)
            job = st and next((j for j in st["jobs"] if j["name"] == "app" and j["idle"] >= 2), None)
            if job:
                break
            time.sleep(0.05)
        port = int(job["listeners"][0].rsplit(":", 1)[1])
        start = time.monotonic()
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.recv(1)  # EOF once /bin/true exits
            s.close()
        return count / (time.monotonic() - start)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        subprocess.run(["rm", "-rf", tmp])


for d in dirs:
    os.mkdir(d)
try:
    results = {False: [], True: []}
    for _ in range(rounds):
        for cg in (False, True):
            results[cg].append(run(cg))
    med = {k: sorted(v)[len(v) // 2] for k, v in results.items()}
    print(f"connections {count}, rounds {rounds}")
    print(f"without cgroup: {med[False]:.0f}/s  (rounds: {', '.join(f'{x:.0f}' for x in results[False])})")
    print(f"with cgroup:    {med[True]:.0f}/s  (rounds: {', '.join(f'{x:.0f}' for x in results[True])})")
    print(f"ratio with/without: {med[True] / med[False]:.2f}")
finally:
    for d in reversed(dirs):
        for _ in range(50):
            try:
                os.rmdir(d)
                break
            except OSError:
                time.sleep(0.1)
