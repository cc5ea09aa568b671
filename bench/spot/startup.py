#!/usr/bin/env python3
"""Start-up spot check: time from `corral run` until N hello-http workers are idle,
polling `corral status --json` every 50 ms (bounded to 60 s). Usage:
  bench/spot/startup.py N [BUILD_DIR]    (port 18140, scoreboards in a temp dir)"""
import json
import os
import subprocess
import sys
import tempfile
import time

n = int(sys.argv[1])
build = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(__file__), "..", "..", "build")
corral = os.path.join(build, "corral")
sb = tempfile.mkdtemp(prefix="corral-startup-")
t = time.monotonic()
p = subprocess.Popen([corral, "run", "--listen", "127.0.0.1:18140", "--workers", str(n), "--min-spare", str(n),
                      "--max-spare", str(n), "--max", str(n), "--scoreboard-dir", sb, "--",
                      os.path.join(build, "examples", "hello-http")],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    while time.monotonic() - t < 60:
        o = subprocess.run([corral, "status", "--scoreboard-dir", sb, "--json"], capture_output=True, text=True)
        if o.returncode == 0 and json.loads(o.stdout)["jobs"][0]["idle"] >= n:
            break
        time.sleep(0.05)
    print(f"{n} workers idle after {time.monotonic() - t:.2f} s")
finally:
    p.terminate()
    p.wait(timeout=60)
