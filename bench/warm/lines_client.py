#!/usr/bin/env python3
"""lines_client.py PORT: 6,000 short lines (102,000 bytes) to a program that reads them one
at a time (bench/warm/lines.sh: a shell `read` loop, one read(2) per byte), then a
half-close; prints the time to the answer (the line count)."""
import socket, sys, time
port = int(sys.argv[1])
data = b"0123456789abcdef\n" * 6000   # 102,000 bytes, 6000 lines
t = time.monotonic()
s = socket.create_connection(("127.0.0.1", port)); s.sendall(data); s.shutdown(socket.SHUT_WR)
out = b""
while True:
    c = s.recv(1000)
    if not c: break
    out += c
print(f"{(time.monotonic()-t)*1000:.0f} ms", out.strip())
