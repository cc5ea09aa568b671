#!/usr/bin/env python3
"""A plain-mode program that copies its /proc/self/limits to $LIMITS_OUT, then waits."""
import os
import signal

with open("/proc/self/limits") as src, open(os.environ["LIMITS_OUT"] + ".tmp", "w") as dst:
    dst.write(src.read())
os.rename(os.environ["LIMITS_OUT"] + ".tmp", os.environ["LIMITS_OUT"])
signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
while True:
    signal.pause()
