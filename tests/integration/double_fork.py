#!/usr/bin/env python3
"""A plain-mode program whose grandchild is orphaned: a child forks it and exits at once;
the grandchild writes its pid to $ORPHAN_DIR and exits shortly after. Then the program
waits for SIGTERM."""
import os
import signal
import time

if os.fork() == 0:
    if os.fork() == 0:
        with open(os.path.join(os.environ["ORPHAN_DIR"], f"{os.getpid()}.orphan"), "w") as f:
            f.write(str(os.getpid()))
        # Outlive the parent: wait (bounded) until we have been reparented, then exit.
        parent, deadline = os.getppid(), time.monotonic() + 10
        while os.getppid() == parent and time.monotonic() < deadline:
            time.sleep(0.005)  # poll interval of the condition above
        os._exit(0)
    os._exit(0)
# sigwait, not a handler and pause(): a SIGTERM just before pause() would be missed.
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
signal.sigwait({signal.SIGTERM})
os._exit(0)
