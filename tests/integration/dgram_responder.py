#!/usr/bin/env python3
"""A datagram responder written the systemd way (ListenDatagram=, sd_listen_fds): it
takes its sockets from LISTEN_FDS/LISTEN_PID (fds 3..), and answers every datagram with
"NAME pid PID: " and the datagram, NAME being its LISTEN_FDNAMES entry. Plain mode."""
import os
import select
import signal
import socket
import sys


def main():
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        sys.exit("dgram_responder: LISTEN_PID is not this process")
    n = int(os.environ["LISTEN_FDS"])
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    socks = {}
    for i in range(n):
        s = socket.socket(fileno=3 + i)
        if s.type != socket.SOCK_DGRAM:
            sys.exit(f"dgram_responder: fd {3 + i} is not a datagram socket")
        s.setblocking(False)
        socks[s.fileno()] = (s, names[i] if i < len(names) else "unknown")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        ready, _, _ = select.select(list(socks), [], [])
        for fd in ready:
            s, name = socks[fd]
            try:
                data, peer = s.recvfrom(65536)
            except BlockingIOError:
                continue  # another copy took it
            if peer:
                s.sendto(f"{name} pid {os.getpid()}: ".encode() + data, peer)


if __name__ == "__main__":
    main()
