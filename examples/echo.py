#!/usr/bin/env python3
"""echo.py: a prefork-mode corral worker in Python, standard library only.

It sends back every byte (so every line) a client sends, until the client
closes; its scoreboard slot says busy for exactly as long as it holds the
connection. It implements docs/PROTOCOL.md on its own, mirroring the C library
(lib/worker/worker.c): the accept mutex (pipe, fcntl, epoll, none), the
scoreboard slot, and SIGTERM.

Run it under corral (examples/echo-py.yaml), or alone with socket activation:
    systemd-socket-activate -l 127.0.0.1:7071 python3 examples/echo.py

Three things Python cannot do exactly like C, and why this is still correct:
- Atomics. The slot's fields are written through memoryview casts to 'I' and
  'Q'; CPython copies each element with one memcpy of the field's width, which
  compilers turn into a single aligned load or store on x86-64 and arm64. The
  language does not promise that, but a torn read could only mislead the
  supervisor's monitoring for one sample. There is no compare-and-swap either:
  the worker reads the state and writes only if it is not STOPPING, so the
  window in which it could overwrite a STOPPING is a few bytecodes long.
- Signal handlers run between bytecodes, not at once. The handler therefore
  cannot know whether os.readv() has returned; it looks at the buffer instead:
  the kernel filled it before the call returned, so a nonzero byte means the
  token was taken and must be given back (the C library does the same).
  A SIGTERM that arrives just before a blocking call is entered would run no
  handler until that call returns; watch_for_a_missed_sigterm() below sees it on
  the wakeup fd and interrupts the call (one extra thread, idle until a signal).
"""
import errno
import fcntl
import mmap
import os
import select
import signal
import socket
import stat
import sys
import threading
import time

# docs/PROTOCOL.md / lib/worker/include/corral/protocol.h
EXIT_SICK = 75
EXIT_FATAL = 78
SB_MAGIC = b"CORRALSB"
SB_VERSION = 1
SB_HEADER_SIZE = 1024
SB_SLOT_SIZE = 64
SB_MAX_SLOTS = 65536
SLOT_IDLE, SLOT_BUSY, SLOT_STOPPING = 2, 3, 4
LOCK_NONE, LOCK_WAITING, LOCK_HELD = 0, 1, 2
# Slot fields as indexes into the slot viewed as uint32 ('I') or uint64 ('Q').
I_STATE, I_LOCK = 0, 3                        # offsets 0 and 12
Q_REQUESTS, Q_STATE_SINCE, Q_LOCK_SINCE = 2, 3, 4  # offsets 16, 24, 32

PHASE_OTHER, PHASE_WAIT_LOCK, PHASE_HOLD_POLL, PHASE_ACCEPT = 0, 1, 2, 3
TOKEN = b"T"
TRANSIENT_ACCEPT_ERRORS = {
    errno.EAGAIN, errno.EINTR, errno.ECONNABORTED, errno.EPROTO, errno.ENETDOWN,
    errno.ENOPROTOOPT, errno.EHOSTDOWN, errno.ENONET, errno.EHOSTUNREACH,
    errno.EOPNOTSUPP, errno.ENETUNREACH, errno.ETIMEDOUT, errno.ECONNRESET, errno.EPERM,
}
RESOURCE_ACCEPT_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


def watch_for_a_missed_sigterm(handled):
    """Makes sure a SIGTERM reaches the Python handler even when it arrives just before
    the main thread blocks in accept(), read(), lockf() or poll().

    CPython's C-level handler only notes the signal; the Python handler runs in the
    main thread between bytecodes. A SIGTERM landing after the interpreter's last check
    and before the thread enters the system call interrupts nothing, and the handler
    would wait for the call to return: the next connection or token, or the
    supervisor's SIGKILL at graceful_timeout. The C handler also writes the signal's
    number to the wakeup fd (signal.set_wakeup_fd), which no such window can miss: a
    thread that blocks every signal reads it and, until the handler has run (the
    `handled` event), sends SIGTERM again to the main thread every 20 ms; each one
    interrupts the blocked call (EINTR), and Python then runs the handler. It costs
    nothing while no signal comes. A program that set a wakeup fd of its own (asyncio
    does) keeps it, and the narrow race with it."""
    try:
        r, w = os.pipe()
        os.set_blocking(w, False)
        previous = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    except (ValueError, OSError):  # not the main thread, or out of fds
        return
    if previous != -1:
        signal.set_wakeup_fd(previous)
        os.close(r)
        os.close(w)
        return
    main = threading.get_ident()

    def in_child():
        # A forked child's signals must not reach this process's watcher.
        try:
            signal.set_wakeup_fd(-1)
        except ValueError:
            pass
        for fd in (r, w):
            try:
                os.close(fd)
            except OSError:
                pass

    os.register_at_fork(after_in_child=in_child)

    def watch():
        # Every signal sent to the process goes to another thread (the main one).
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        while data := os.read(r, 512):
            if signal.SIGTERM in data:
                while not handled.wait(0.02):  # a bounded retry interval, not a wait for state
                    signal.pthread_kill(main, signal.SIGTERM)

    threading.Thread(target=watch, name="corral-sigterm", daemon=True).start()


class SetupError(Exception):
    pass


def mono_ns():
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def env_int(name):
    value = os.environ.get(name)
    if value is None:
        return None
    if not value.isdigit():
        raise SetupError(f"{name}={value!r} is not a number")
    return int(value)


class Slot:
    """This worker's scoreboard slot, or a stand-in that records nothing."""

    def __init__(self):
        self.map = None
        self.u32 = self.u64 = None

    @classmethod
    def from_env(cls):
        slot = cls()
        fd = env_int("CORRAL_SCOREBOARD_FD")
        if fd is None:
            return slot  # not run by corral
        try:
            index = env_int("CORRAL_SLOT")
            if index is None:
                raise SetupError("CORRAL_SLOT missing")
            slot._map(fd, index)
        except (SetupError, OSError, ValueError) as e:
            print(f"echo.py: scoreboard (fd {fd}): {e}; running without it", file=sys.stderr)
            slot.u32 = slot.u64 = None
        return slot

    def _map(self, fd, index):
        header = os.pread(fd, SB_HEADER_SIZE, 0)
        if len(header) < 24:
            raise SetupError("cannot read the header")
        magic = header[0:8]
        version, header_size, slot_size, slot_count = memoryview(header)[8:24].cast("I")
        if magic != SB_MAGIC:
            raise SetupError("bad magic")
        if version != SB_VERSION:
            raise SetupError("unsupported version")
        if header_size < SB_HEADER_SIZE or header_size % 64:
            raise SetupError("bad header_size")
        if slot_size < SB_SLOT_SIZE or slot_size % 64:
            raise SetupError("bad slot_size")
        if not 0 < slot_count <= SB_MAX_SLOTS:
            raise SetupError("bad slot_count")
        if index >= slot_count:
            raise SetupError("CORRAL_SLOT out of range")
        if os.fstat(fd).st_size < header_size + slot_count * slot_size:
            raise SetupError("file shorter than its header says")
        # Map only the page holding our slot, as the C library does.
        slot_off = header_size + index * slot_size
        map_off = slot_off - slot_off % mmap.ALLOCATIONGRANULARITY
        self.map = mmap.mmap(fd, slot_off - map_off + SB_SLOT_SIZE, mmap.MAP_SHARED,
                             mmap.PROT_READ | mmap.PROT_WRITE, offset=map_off)
        view = memoryview(self.map)[slot_off - map_off:slot_off - map_off + SB_SLOT_SIZE]
        self.u32 = view.cast("I")
        self.u64 = view.cast("Q")
        os.set_inheritable(fd, False)

    def stopping(self):
        return self.u32 is not None and self.u32[I_STATE] == SLOT_STOPPING

    def set_state(self, state):
        """Writes `state` unless the supervisor wrote STOPPING; False then."""
        if self.u32 is None:
            return True
        current = self.u32[I_STATE]
        if current == SLOT_STOPPING and state != SLOT_STOPPING:
            return False
        if current != state:
            self.u64[Q_STATE_SINCE] = mono_ns()  # timestamp first, then the state
            self.u32[I_STATE] = state
        return True

    def set_lock(self, lock):
        if self.u32 is not None:
            self.u64[Q_LOCK_SINCE] = mono_ns()
            self.u32[I_LOCK] = lock

    def set_requests(self, n):
        if self.u64 is not None:
            self.u64[Q_REQUESTS] = n


class Worker:
    def __init__(self):
        self.stop = False
        self.phase = PHASE_OTHER
        self.token = bytearray(1)  # os.readv() target, see the module docstring
        self.requests = 0
        self.listeners = self._listeners_from_env()
        self.by_fd = {s.fileno(): i for i, s in enumerate(self.listeners)}
        self.last_served = len(self.listeners) - 1
        self.lock_kind, self.lock_fd = self._lock_from_env()
        if self.lock_kind == "epoll":
            self.poller = select.epoll()
            for s in self.listeners:
                # EPOLLEXCLUSIVE: a connection wakes one waiting worker, not all.
                self.poller.register(s.fileno(), select.EPOLLIN | select.EPOLLEXCLUSIVE)
        else:
            self.poller = select.poll()
            for s in self.listeners:
                self.poller.register(s.fileno(), select.POLLIN)
        self.slot = Slot.from_env()
        # signal.signal() makes the signal interrupt system calls (no
        # SA_RESTART); Python then runs the handler and retries (PEP 475).
        self.sigterm_handled = threading.Event()
        signal.signal(signal.SIGTERM, self._on_sigterm)
        watch_for_a_missed_sigterm(self.sigterm_handled)

    @staticmethod
    def _listeners_from_env():
        pid, n = env_int("LISTEN_PID"), env_int("LISTEN_FDS")
        # As sd_listen_fds: the variables are for the process they name.
        if pid != os.getpid() or not n:
            raise SetupError("no listening socket passed (LISTEN_FDS/LISTEN_PID)")
        listeners = []
        for fd in range(3, 3 + n):
            os.set_inheritable(fd, False)
            # O_NONBLOCK is the supervisor's (shared by every worker): left as it
            # is. Python takes the socket as blocking and does not change it.
            listeners.append(socket.socket(fileno=fd))
        return listeners

    @staticmethod
    def _lock_from_env():
        kind = os.environ.get("CORRAL_LOCK_KIND") or None
        fd = env_int("CORRAL_LOCK_FD")
        if kind in ("epoll", "none"):
            return kind, None
        if fd is None:
            if kind is None:
                return "none", None
            raise SetupError(f"CORRAL_LOCK_KIND={kind} without CORRAL_LOCK_FD")
        mode = os.fstat(fd).st_mode
        if kind is None:  # decide by the fd's type
            kind = "pipe" if stat.S_ISFIFO(mode) else "fcntl" if stat.S_ISREG(mode) else None
        if (kind, stat.S_ISFIFO(mode), stat.S_ISREG(mode)) not in (
                ("pipe", True, False), ("fcntl", False, True)):
            raise SetupError(f"CORRAL_LOCK_FD={fd} does not fit CORRAL_LOCK_KIND={kind}")
        os.set_inheritable(fd, False)
        return kind, fd

    # ---- the accept mutex: the plain system calls of docs/PROTOCOL.md ----

    def _release_lock(self):
        if self.lock_kind == "pipe":
            os.write(self.lock_fd, TOKEN)
        elif self.lock_kind == "fcntl":
            fcntl.lockf(self.lock_fd, fcntl.LOCK_UN)  # fcntl(F_SETLK, F_UNLCK)

    def _try_acquire(self):
        if self.lock_kind == "pipe":
            try:
                os.readv(self.lock_fd, [self.token])  # blocks; one waiter woken per token
            except BlockingIOError:
                # The FIFO's open file description is O_NONBLOCK (shared by all
                # workers, so we may not clear it): wait in poll, then retry.
                p = select.poll()
                p.register(self.lock_fd, select.POLLIN)
                p.poll()
                return False
        else:
            fcntl.lockf(self.lock_fd, fcntl.LOCK_EX)  # fcntl(F_SETLKW, F_WRLCK, whole file)
        return True

    def _on_sigterm(self, signum, frame):
        self.stop = True
        self.sigterm_handled.set()
        if self.phase == PHASE_WAIT_LOCK:
            # Idle: leave at once. Give back a token that readv() already took.
            if self.lock_kind == "pipe" and self.token[0] != 0:
                self._release_lock()
            self._leave()
        elif self.phase == PHASE_HOLD_POLL:
            self._release_lock()  # token first, then the slot says NONE
            self._leave()
        elif self.phase == PHASE_ACCEPT:
            # In (or next to) a blocking accept(): leaving could lose a connection
            # it has just taken. Close our copy of the listener instead: the
            # accept() that Python retries after EINTR, or one not yet entered,
            # fails with EBADF; one that returned keeps its connection.
            self.listeners[0].close()
        # Busy: finish the connection; accept() reports the stop afterwards.

    def _leave(self):
        self.slot.set_lock(LOCK_NONE)
        self.slot.set_state(SLOT_STOPPING)
        os._exit(0)

    def stopping(self):
        return self.stop or self.slot.stopping()

    def _release(self):
        self.phase = PHASE_OTHER  # before the write: the handler must not release again
        if self.lock_fd is not None:
            self._release_lock()
            self.slot.set_lock(LOCK_NONE)

    def _acquire(self):
        """Takes the mutex; False if asked to stop first. Ends in HOLD_POLL."""
        if self.lock_fd is None:
            self.phase = PHASE_HOLD_POLL
            return True
        self.slot.set_lock(LOCK_WAITING)
        while True:
            self.token[0] = 0
            self.phase = PHASE_WAIT_LOCK
            if self.stopping():
                self.phase = PHASE_OTHER
                self.slot.set_lock(LOCK_NONE)
                return False
            if self._try_acquire():
                self.phase = PHASE_HOLD_POLL
                self.slot.set_lock(LOCK_HELD)  # read first, HELD second
                return True
            self.phase = PHASE_OTHER

    def _wait_listeners(self):
        """Indexes of the readable listeners (phase HOLD_POLL)."""
        return {self.by_fd[fd] for fd, _ in self.poller.poll()}

    def _shut_down(self):
        self.phase = PHASE_OTHER
        self.slot.set_state(SLOT_STOPPING)
        return None

    def _took(self, conn, addr, i):
        self.last_served = i
        self._release()
        conn.setblocking(True)
        self.requests += 1
        self.slot.set_requests(self.requests)
        self.slot.set_state(SLOT_BUSY)
        return conn, addr, i

    def _accept_single(self):
        """One listener, no mutex: block in accept(), which wakes one waiter per
        connection when the listener is blocking (as corral makes it then). On a
        non-blocking listener, wait in poll and retry (every idle worker wakes)."""
        while True:
            if not self.slot.set_state(SLOT_IDLE) or self.stopping():
                return self._shut_down()
            self.phase = PHASE_ACCEPT  # from here SIGTERM closes our listener
            if self.stopping():
                return self._shut_down()
            try:
                conn, addr = self.listeners[0].accept()
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    try:
                        self.poller.poll()
                    except (OSError, ValueError):
                        pass  # the listener was closed by the handler
                    continue
                self.phase = PHASE_OTHER
                if self.stopping():
                    return self._shut_down()  # EBADF after the handler's close
                if e.errno in TRANSIENT_ACCEPT_ERRORS:
                    continue
                if e.errno in RESOURCE_ACCEPT_ERRORS:
                    time.sleep(0.01)
                    continue
                raise
            self.phase = PHASE_OTHER
            return self._took(conn, addr, 0)

    def accept(self):
        """(connection, address, listener index), or None once asked to stop."""
        n = len(self.listeners)
        if n == 1 and self.lock_kind == "none":
            return self._accept_single()
        while True:
            if not self.slot.set_state(SLOT_IDLE) or self.stopping():
                return self._shut_down()
            if not self._acquire():
                return self._shut_down()
            while True:  # holding the mutex
                self.phase = PHASE_HOLD_POLL
                if self.stopping():
                    self._release()
                    return self._shut_down()
                ready = self._wait_listeners()
                self.phase = PHASE_OTHER  # from here on SIGTERM only sets the flag
                if self.stopping():
                    self._release()
                    return self._shut_down()
                pause = False
                # Round-robin from the listener after the last one served.
                for k in range(n):
                    i = (self.last_served + 1 + k) % n
                    if i not in ready:
                        continue
                    try:
                        conn, addr = self.listeners[i].accept()
                    except OSError as e:
                        if e.errno in TRANSIENT_ACCEPT_ERRORS:
                            continue
                        if e.errno in RESOURCE_ACCEPT_ERRORS:
                            pause = True
                            break
                        self._release()
                        raise
                    return self._took(conn, addr, i)
                if pause:  # out of fds or memory: let another worker accept
                    self._release()
                    time.sleep(0.01)
                    break

    def done(self):
        """Marks the slot idle again after the connection was closed."""
        self.slot.set_state(SLOT_IDLE)


def echo(conn):
    while True:
        data = conn.recv(16384)  # EINTR (SIGTERM while busy) is retried by Python
        if not data:
            return  # the client closed
        conn.sendall(data)


def main():
    try:
        worker = Worker()
    except (SetupError, OSError) as e:
        print(f"echo.py: {e}", file=sys.stderr)
        return EXIT_FATAL
    while True:
        got = worker.accept()
        if got is None:
            return 0  # asked to stop
        conn = got[0]
        try:
            echo(conn)
        except OSError:
            pass  # the client went away (Python ignores SIGPIPE: EPIPE instead)
        finally:
            conn.close()
            worker.done()


if __name__ == "__main__":
    sys.exit(main())
