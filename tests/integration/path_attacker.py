"""The attacker of tests/test_security.py, run as an unprivileged user.

    path_attacker.py swap DIR NAME TARGET
        Watches DIR (which this user can write) with inotify and, each time NAME is
        created in it, renames a symbolic link to TARGET over it at once: the race
        against a root process that changes NAME by path after creating it. Prints
        "ready" once watching, then "swap N" after each swap. A file created under a
        name starting with ".fence" is answered with "fence NAME": inotify keeps its
        events in order, so once that line is read every earlier creation was handled.
    path_attacker.py lock FILE PID
        Opens FILE read-write if it can (read-only otherwise), writes a scoreboard header
        naming PID if it could open it for writing, takes an exclusive flock and holds it.
        Prints "locked" (or "error ...") and waits for stdin to close.

Standard library only: inotify through ctypes on libc."""
import ctypes
import fcntl
import os
import struct
import sys

IN_CREATE = 0x100
IN_CLOEXEC = 0o2000000
EVENT = struct.Struct("iIII")


def swap(directory, name, target):
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(IN_CLOEXEC)
    if fd < 0 or libc.inotify_add_watch(fd, directory.encode(), IN_CREATE) < 0:
        print(f"error inotify: {os.strerror(ctypes.get_errno())}", flush=True)
        return 1
    link = os.path.join(directory, ".attack-link")
    victim = os.path.join(directory, name)

    def arm():
        try:
            os.symlink(target, link)
        except FileExistsError:
            pass

    arm()
    print("ready", flush=True)
    swaps = 0
    while True:
        data = os.read(fd, 65536)
        at = 0
        while at + EVENT.size <= len(data):
            _, _, _, length = EVENT.unpack_from(data, at)
            event_name = data[at + EVENT.size:at + EVENT.size + length].rstrip(b"\0").decode()
            at += EVENT.size + length
            if event_name.startswith(".fence"):
                print(f"fence {event_name}", flush=True)
                continue
            if event_name != name:
                continue
            try:
                os.rename(link, victim)
                swaps += 1
                print(f"swap {swaps}", flush=True)
            except OSError as e:
                print(f"miss {e}", flush=True)
            arm()


def lock(path, pid):
    try:
        fd = os.open(path, os.O_RDWR)
        header = b"CORRALSB" + bytes(16) + struct.pack("=i", int(pid))
        os.pwrite(fd, header, 0)
    except PermissionError:
        fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("locked", flush=True)
    sys.stdin.read()
    # What the holder can still write goes to the file it opened, whatever that is now.
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "swap":
        sys.exit(swap(*sys.argv[2:5]))
    sys.exit(lock(*sys.argv[2:4]))
