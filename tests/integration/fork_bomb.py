#!/usr/bin/env python3
"""A plain-mode program that forks until the kernel refuses, writes how many children
it got to $BOMB_OUT (then "errno N"), and waits to be stopped; its children sleep."""
import os
import signal
import time

children = []
err = 0
for _ in range(256):
    try:
        pid = os.fork()
    except OSError as e:
        err = e.errno
        break
    if pid == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        time.sleep(3600)
        os._exit(0)
    children.append(pid)
tmp = os.environ["BOMB_OUT"] + ".tmp"
with open(tmp, "w") as f:
    f.write(f"{len(children)} errno {err}\n")
os.rename(tmp, os.environ["BOMB_OUT"])


def leave(*_):
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os._exit(0)


# sigwait, not a handler and pause(): a SIGTERM just before pause() would be missed.
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
signal.sigwait({signal.SIGTERM})
leave()
