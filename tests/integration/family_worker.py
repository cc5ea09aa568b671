#!/usr/bin/env python3
"""A plain-mode program that leaves descendants behind: one child in its own process
group and one after setsid(), both ignoring SIGTERM and holding the inherited listener
(fd 3). Their pids go to $FAMILY_DIR/<pid>.kids. With FAMILY_EXIT=1 the program exits at
once, leaving them; otherwise it waits for SIGTERM and exits."""
import os
import signal
import time

kids = []
for detach in (False, True):
    pid = os.fork()
    if pid == 0:
        if detach:
            os.setsid()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            signal.pause()
    kids.append(pid)
path = os.path.join(os.environ["FAMILY_DIR"], f"{os.getpid()}.kids")
with open(path + ".tmp", "w") as f:
    f.write(" ".join(map(str, kids)))
os.rename(path + ".tmp", path)
if os.environ.get("FAMILY_EXIT") == "1":
    os._exit(0)
signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
while True:
    signal.pause()
