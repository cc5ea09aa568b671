#!/usr/bin/env python3
"""Hands inherited sockets to a program the way systemd does, then execs it in place, so
the program keeps this process's pid (as systemd-socket-activate does):

    sd_launcher.py [--fds FD,FD...] [--names NAME:NAME...] [--listen-pid PID] -- PROGRAM [ARG...]

The listed fds (inherited from the caller) become 3, 4, ... in that order, and
LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID are set. LISTEN_PID is this process's pid
(which PROGRAM keeps across exec) unless --listen-pid gives another, to test a mismatch.
"""
import fcntl
import os
import sys


def main(argv):
    fds, names, listen_pid = [], None, None
    args = argv[1:]
    while args and args[0] != "--":
        opt, value = args[0], args[1]
        args = args[2:]
        if opt == "--fds":
            fds = [int(x) for x in value.split(",") if x]
        elif opt == "--names":
            names = value
        elif opt == "--listen-pid":
            listen_pid = value
        else:
            sys.exit(f"sd_launcher: unknown option {opt}")
    program = args[1:]
    if not program:
        sys.exit("sd_launcher: no program")
    # Park every fd above the target range first, so that no dup2 overwrites a source.
    parked = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in fds]
    for fd in fds:
        os.close(fd)
    for i, fd in enumerate(parked):
        os.dup2(fd, 3 + i, inheritable=True)
        os.close(fd)
    env = dict(os.environ)
    env["LISTEN_FDS"] = str(len(fds))
    env["LISTEN_PID"] = listen_pid if listen_pid is not None else str(os.getpid())
    if names is not None:
        env["LISTEN_FDNAMES"] = names
    else:
        env.pop("LISTEN_FDNAMES", None)
    os.execve(program[0], program, env)


if __name__ == "__main__":
    main(sys.argv)
