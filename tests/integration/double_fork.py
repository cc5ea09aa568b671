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
        time.sleep(0.2)  # outlive the parent, so that the grandchild is reparented
        os._exit(0)
    os._exit(0)
signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
while True:
    signal.pause()
