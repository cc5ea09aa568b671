#!/usr/bin/env python3
"""A prefork echo worker whose memory grows while it sits idle: it starts with
GROW_START_MIB of ballast, then adds GROW_STEP_MIB every GROW_EVERY_MS up to
GROW_MAX_MIB (a leak). The echo itself is examples/echo.py, run in this process."""
import os
import runpy
import sys
import threading
import time

start = int(os.environ.get("GROW_START_MIB", "0"))
step = int(os.environ.get("GROW_STEP_MIB", "4"))
every = int(os.environ.get("GROW_EVERY_MS", "100")) / 1000.0
top = int(os.environ.get("GROW_MAX_MIB", "64"))
after = int(os.environ.get("GROW_AFTER_MS", "0")) / 1000.0
ballast = [b"x" * (start << 20)] if start else []


def grow():
    time.sleep(after)
    held = start
    while held + step <= top:
        time.sleep(every)
        ballast.append(b"x" * (step << 20))
        held += step


threading.Thread(target=grow, daemon=True).start()
sys.argv = [os.environ["ECHO_PY"]]
runpy.run_path(os.environ["ECHO_PY"], run_name="__main__")
