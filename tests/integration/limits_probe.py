#!/usr/bin/env python3
"""A plain-mode program that copies its /proc/self/limits to $LIMITS_OUT, then waits."""
import os
import signal

with open("/proc/self/limits") as src, open(os.environ["LIMITS_OUT"] + ".tmp", "w") as dst:
    dst.write(src.read())
os.rename(os.environ["LIMITS_OUT"] + ".tmp", os.environ["LIMITS_OUT"])
# sigwait, not a handler and pause(): a SIGTERM just before pause() would be missed.
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
signal.sigwait({signal.SIGTERM})
os._exit(0)
