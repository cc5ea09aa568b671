#!/usr/bin/python3
"""A warm inetd legacy program that grows once a client asks: it reads one line from
stdin and answers `pid PID` at once; after `grow N` it then allocates and touches N MiB,
answers `grew N`, and holds the memory and the connection until stdin ends (EOF) or it
is killed. After any other line it exits."""
import os
import sys

line = sys.stdin.buffer.readline()
sys.stdout.buffer.write(b"pid %d\n" % os.getpid())
sys.stdout.buffer.flush()
words = line.split()
if len(words) == 2 and words[0] == b"grow":
    mib = int(words[1])
    # Bytes that are written, one MiB at a time, so that every page is resident (a
    # bytearray(n) of zeros may stay untouched pages of a fresh mapping).
    size = 1 << 20
    ballast = [b"x" * size for _ in range(mib)]
    sys.stdout.buffer.write(b"grew %d\n" % len(ballast))
    sys.stdout.buffer.flush()
    while sys.stdin.buffer.read(65536):
        pass
