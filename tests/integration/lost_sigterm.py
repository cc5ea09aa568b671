"""Runs a Python worker script (argv[1], as __main__) in the state a SIGTERM leaves when it
arrives just before the main thread enters a blocking call.

CPython runs a Python-level signal handler in the main thread, between bytecodes; the C
handler only notes the signal. A SIGTERM that lands after the interpreter's last check
and before the thread enters accept(), read() or poll() therefore interrupts nothing:
the call blocks, and the handler waits for it to return. That window is a few
instructions wide. This helper makes the state certain: once the worker's own SIGTERM
handler is installed and the main thread is blocked in a system call, a second thread
sends SIGTERM to itself with pthread_kill. The C handler runs on that thread, and the
main thread's call is not interrupted, exactly as in the race.

Only the first worker to start (the one that creates $LOST_SIGTERM_ONCE, O_EXCL) does
it; later ones run the script untouched. It prints nothing; the file says whose turn it
was (its pid)."""
import os
import runpy
import signal
import sys
import threading
import time

# x86-64 numbers of the calls a waiting worker blocks in (/proc/PID/syscall).
BLOCKING = {0, 7, 19, 23, 43, 72, 232, 270, 271, 281, 288}


def main_blocked(tid):
    try:
        with open(f"/proc/self/task/{tid}/syscall") as f:
            first = f.read().split()[0]
    except (OSError, IndexError):
        return False
    return first.isdigit() and int(first) in BLOCKING


def watch(main_tid):
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        handler = signal.getsignal(signal.SIGTERM)
        if callable(handler) and main_blocked(main_tid):
            signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
            return
        time.sleep(0.005)  # the poll interval of this watcher, not a synchronization


def claim(path):
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


if __name__ == "__main__":
    script = sys.argv[1]
    if claim(os.environ["LOST_SIGTERM_ONCE"]):
        threading.Thread(target=watch, args=(threading.get_native_id(),), daemon=True).start()
    sys.argv = sys.argv[1:]
    runpy.run_path(script, run_name="__main__")
