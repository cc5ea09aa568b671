#!/usr/bin/env python3
"""An einhorn-style worker, as programs written for einhorn take their sockets (einhorn is
not in Debian): the listeners come as EINHORN_FD_COUNT and EINHORN_FD_0.., the copy's
number as EINHORN_CHILD_INDEX. Each connection gets one line describing this copy, then
is closed. SIGTERM ends it."""
import os
import socket
import sys

count = int(os.environ["EINHORN_FD_COUNT"])
if count < 1:
    sys.exit("einhorn_worker: no socket in EINHORN_FD_COUNT")
fds = [int(os.environ[f"EINHORN_FD_{i}"]) for i in range(count)]
listener = socket.socket(fileno=fds[0])
listener.setblocking(True)
line = (f"einhorn child {os.environ.get('EINHORN_CHILD_INDEX', '?')} pid {os.getpid()} "
        f"fds {','.join(map(str, fds))} "
        f"master {os.environ.get('EINHORN_MASTER_PID', 'unset')}\n").encode()
while True:
    conn, _ = listener.accept()
    try:
        conn.sendall(line)
    finally:
        conn.close()
