#!/usr/bin/env python3
"""A plain-mode program that leaves descendants behind: one child in its own process
group and one after setsid(), both ignoring SIGTERM and holding the inherited listener
(fd 3). Their pids go to $FAMILY_DIR/<pid>.kids. With FAMILY_EXIT=1 the program exits at
once, leaving them; otherwise it waits for SIGTERM and exits."""
import os
import signal
import time

kids = []
# Each child says on a pipe when it has left the group (setsid) and ignores SIGTERM: the
# parent exits (FAMILY_EXIT=1) only after both, so that corral's group SIGTERM cannot
# reach a child still setting up (which would die of it, never to be an orphan).
ready_r, ready_w = os.pipe()
for detach in (False, True):
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        if detach:
            os.setsid()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.write(ready_w, b"k")
        os.close(ready_w)
        while True:
            signal.pause()
    kids.append(pid)
os.close(ready_w)
got = b""
while len(got) < len(kids):
    chunk = os.read(ready_r, 16)
    if not chunk:
        break  # a child died before it was ready: the test sees fewer live kids
    got += chunk
os.close(ready_r)
path = os.path.join(os.environ["FAMILY_DIR"], f"{os.getpid()}.kids")
with open(path + ".tmp", "w") as f:
    f.write(" ".join(map(str, kids)))
os.rename(path + ".tmp", path)
if os.environ.get("FAMILY_EXIT") == "1":
    os._exit(0)
# sigwait, not a handler and pause(): a SIGTERM just before pause() would be missed.
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
signal.sigwait({signal.SIGTERM})
os._exit(0)
