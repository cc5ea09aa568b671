#!/usr/bin/env python3
"""A prefork worker that floods CORRAL_NOTIFY_FD with 64 KiB writes in a loop (the
first process to create $FLOOD_MARKER); every other one is the real echo worker."""
import os

marker = os.environ["FLOOD_MARKER"]
try:
    os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
except FileExistsError:
    os.execv(os.environ["ECHO_WORKER"], [os.environ["ECHO_WORKER"]])
fd = int(os.environ["CORRAL_NOTIFY_FD"])
with open(marker, "w") as f:
    f.write(str(os.getpid()))
chunk = b"x" * 65536
while True:
    try:
        os.write(fd, chunk)
    except BlockingIOError:
        pass
