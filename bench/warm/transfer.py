#!/usr/bin/env python3
"""transfer.py PORT [MB] [ROUNDS]: MB megabytes to an echo program (/bin/cat under the
server) and back on one connection, the client sending and receiving at once, then a
half-close; prints the median MB/s over ROUNDS and checks every byte came back."""
import hashlib
import os
import socket
import statistics
import sys
import threading
import time


def one(port, size):
    block = os.urandom(1 << 20)
    want = hashlib.sha1()
    for _ in range(size // len(block)):
        want.update(block)
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    got = [0]
    h = hashlib.sha1()

    def reader():
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                return
            h.update(chunk)
            got[0] += len(chunk)

    t = threading.Thread(target=reader)
    t0 = time.monotonic()
    t.start()
    sent = 0
    while sent < size:
        s.sendall(block)
        sent += len(block)
    s.shutdown(socket.SHUT_WR)
    t.join(120)
    dt = time.monotonic() - t0
    s.close()
    if got[0] != size or h.digest() != want.digest():
        raise SystemExit(f"transfer: got {got[0]} of {size} bytes, digest match={h.digest() == want.digest()}")
    return size / dt / 1e6


def main():
    port = int(sys.argv[1])
    mb = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    rates = [one(port, mb << 20) for _ in range(rounds)]
    print(f"mb_per_s={statistics.median(rates):.1f} rounds={' '.join(f'{r:.1f}' for r in rates)}")


if __name__ == "__main__":
    main()
