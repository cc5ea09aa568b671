#!/usr/bin/env python3
"""A prefork worker that lies in the counters of its grown scoreboard slot (and scribbles
over the header's published totals): before every accept it writes garbage there (huge
values, all ones, values lower than before, a reports bit that comes and goes), as a
buggy or hostile program could. It serves each connection honestly (an echo of lines),
so that the test can tell that the pool still works while status and metrics stay sane."""
import mmap
import os
import random
import select
import signal
import socket
import struct
import sys
import time

n = int(os.environ["LISTEN_FDS"]) if os.environ.get("LISTEN_PID") == str(os.getpid()) else 0
listeners = [socket.socket(fileno=fd) for fd in range(3, 3 + n)]
kind = os.environ.get("CORRAL_LOCK_KIND", "none")
lock = int(os.environ.get("CORRAL_LOCK_FD", "-1"))
sb_fd, slot = int(os.environ["CORRAL_SCOREBOARD_FD"]), int(os.environ["CORRAL_SLOT"])
sb = mmap.mmap(sb_fd, os.fstat(sb_fd).st_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
header_size, slot_size = struct.unpack_from("=II", sb, 12)
off = header_size + slot_size * slot
IDLE, BUSY, STOPPING = 2, 3, 4
rng = random.Random(os.getpid())
stopping = False


def garbage():
    return rng.choice([2**64 - 1, 2**63, 2**48 + 1, 0, rng.getrandbits(64), rng.getrandbits(20)])


def lie():
    if slot_size >= 256:
        struct.pack_into("=QQ", sb, off + 64, garbage(), garbage())  # refused, oom_kills
        struct.pack_into("=I", sb, off + 80, rng.getrandbits(32))  # reports
        for i in range(16):
            struct.pack_into("=Q", sb, off + 128 + 8 * i, garbage())
    struct.pack_into("=Q", sb, off + 16, garbage())  # requests too
    if header_size >= 2048:  # the supervisor's published totals: not ours to write
        for i in range(0, 1024, 8):
            struct.pack_into("=Q", sb, 1024 + i, garbage())


def set_state(state):
    if struct.unpack_from("=I", sb, off)[0] == STOPPING and state != STOPPING:
        return
    struct.pack_into("=Q", sb, off + 24, time.monotonic_ns())
    struct.pack_into("=I", sb, off, state)


def on_term(signum, frame):
    global stopping
    stopping = True


signal.signal(signal.SIGTERM, on_term)
poller = select.poll()
for s in listeners:
    poller.register(s.fileno(), select.POLLIN)
while not stopping:
    set_state(IDLE)
    lie()
    if kind == "pipe":
        os.read(lock, 1)
    conn = None
    while conn is None and not stopping:
        try:
            ready = poller.poll(50)
        except InterruptedError:
            continue
        lie()
        for fd, _ in ready:
            try:
                conn, _ = listeners[fd - 3].accept()
                break
            except BlockingIOError:
                pass
    if kind == "pipe":
        os.write(lock, b"T")
    if conn is None:
        break
    set_state(BUSY)
    lie()
    with conn:
        conn.setblocking(True)
        f = conn.makefile("rb")
        for line in f:
            conn.sendall(line)
set_state(STOPPING)
sys.exit(0)
