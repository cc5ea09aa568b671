#!/usr/bin/env python3
"""A plain-mode program that records which signal asked it to leave: it appends the
signal's name and its pid to $PROBE_SIGNALS, then exits 0."""
import os
import signal
import sys

out = os.environ["PROBE_SIGNALS"]


def leave(sig, _frame):
    with open(out, "a") as f:
        f.write(f"{signal.Signals(sig).name} {os.getpid()}\n")
    sys.exit(0)


for s in (signal.SIGTERM, signal.SIGQUIT, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1,
          signal.SIGUSR2, signal.SIGWINCH):
    signal.signal(s, leave)
with open(out, "a") as f:
    f.write(f"ready {os.getpid()}\n")  # handlers are in place
while True:
    signal.pause()
