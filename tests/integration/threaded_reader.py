#!/usr/bin/env python3
"""A legacy inetd program that reads its input in a second thread while the main thread
waits for that thread (as a JVM or a threaded server does). Just before the thread's first
read it writes "PID MONOTONIC_SECONDS" to $READER_DIR/PID (atomically). It echoes what it
reads, prefixed with "threaded PID\\n", until EOF."""
import os
import sys
import threading
import time


def serve():
    path = os.path.join(os.environ["READER_DIR"], str(os.getpid()))
    with open(path + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {time.monotonic()}")
    os.rename(path + ".tmp", path)
    first = os.read(0, 65536)
    os.write(1, f"threaded {os.getpid()}\n".encode() + first)
    while data := os.read(0, 65536):
        os.write(1, data)


t = threading.Thread(target=serve)
t.start()
t.join()
sys.exit(0)
