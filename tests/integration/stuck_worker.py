#!/usr/bin/env python3
"""A prefork worker that takes the accept mutex (token pipe) and then hangs without
accepting, as a wedged worker would. Only the first process to create $STUCK_MARKER
hangs; every other one becomes the real example echo worker (same env and fds)."""
import os
import signal
import struct
import sys
import time
import mmap

marker = os.environ["STUCK_MARKER"]
try:
    os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
except FileExistsError:
    os.execv(os.environ["ECHO_WORKER"], [os.environ["ECHO_WORKER"]])

lock_fd = int(os.environ["CORRAL_LOCK_FD"])
sb_fd = int(os.environ["CORRAL_SCOREBOARD_FD"])
slot = int(os.environ["CORRAL_SLOT"])
sb = mmap.mmap(sb_fd, os.fstat(sb_fd).st_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
header_size, slot_size = struct.unpack_from("=II", sb, 12)  # docs/PROTOCOL.md 5.1
off = header_size + slot_size * slot
struct.pack_into("=Q", sb, off + 24, time.monotonic_ns())
struct.pack_into("=I", sb, off, 2)          # idle
struct.pack_into("=Q", sb, off + 32, time.monotonic_ns())
struct.pack_into("=I", sb, off + 12, 1)     # waiting for the lock
os.read(lock_fd, 1)                          # take the token
struct.pack_into("=Q", sb, off + 32, time.monotonic_ns())
struct.pack_into("=I", sb, off + 12, 2)     # holding it
with open(marker, "w") as f:
    f.write(str(os.getpid()))
while True:
    signal.pause()                           # wedged: never accepts
