#!/usr/bin/env python3
"""A prefork worker written to the previous text of docs/PROTOCOL.md, unchanged: it
takes the mutex if there is one, waits in poll() on every listener, then accepts and
treats EAGAIN (BlockingIOError) as a lost race. It never looks at O_NONBLOCK. Its
SIGTERM handler leaves at once while idle in poll (section 6) and only raises a flag
otherwise. It answers each line with the same line, until the client closes."""
import mmap
import os
import select
import signal
import socket
import struct
import sys
import time

n = int(os.environ["LISTEN_FDS"]) if os.environ.get("LISTEN_PID") == str(os.getpid()) else 0
listeners = [socket.socket(fileno=fd) for fd in range(3, 3 + n)]  # "already O_NONBLOCK"
kind = os.environ.get("CORRAL_LOCK_KIND", "none")
lock = int(os.environ.get("CORRAL_LOCK_FD", "-1"))
sb_fd, slot = int(os.environ["CORRAL_SCOREBOARD_FD"]), int(os.environ["CORRAL_SLOT"])
sb = mmap.mmap(sb_fd, os.fstat(sb_fd).st_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
# The slot's offset as docs/PROTOCOL.md 5.2 always said: header_size + slot * slot_size
# (offsets 12 and 16). It knows only the first layout's 64 bytes of its slot, as a worker
# written before the layout grew does.
header_size, slot_size = struct.unpack_from("=II", sb, 12)
off = header_size + slot_size * slot
IDLE, BUSY, STOPPING = 2, 3, 4
stopping = False
in_poll = False


def set_state(state):
    if struct.unpack_from("=I", sb, off)[0] == STOPPING and state != STOPPING:
        return
    struct.pack_into("=Q", sb, off + 24, time.monotonic_ns())
    struct.pack_into("=I", sb, off, state)


def on_term(signum, frame):
    global stopping
    stopping = True
    if in_poll:
        if kind == "pipe":
            os.write(lock, b"T")
        set_state(STOPPING)
        os._exit(0)


signal.signal(signal.SIGTERM, on_term)
poller = select.poll()
for s in listeners:
    poller.register(s.fileno(), select.POLLIN)
requests = 0
while not stopping:
    set_state(IDLE)
    if kind == "pipe":
        os.read(lock, 1)
    conn = None
    while conn is None and not stopping:
        in_poll = True
        ready = poller.poll()
        in_poll = False
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
    requests += 1
    struct.pack_into("=Q", sb, off + 16, requests)
    set_state(BUSY)
    with conn:
        f = conn.makefile("rb")
        for line in f:
            conn.sendall(line)
set_state(STOPPING)
sys.exit(0)
