/* corral worker library: the C API of a prefork-mode worker.
 *
 * A worker started by corral (mode: prefork) inherits its listening sockets, an
 * accept mutex and a scoreboard slot, all described in the environment
 * (docs/PROTOCOL.md). This library reads that environment once, then runs the
 * accept cycle for the program: mark the slot idle, take the accept mutex, wait
 * for a connection on any listener, accept it, give the mutex back, mark the
 * slot busy. The program serves the connection, closes it and calls
 * corral_worker_done().
 *
 * It also works without corral: with plain systemd socket activation
 * (LISTEN_FDS/LISTEN_PID only, e.g. under systemd-socket-activate) it simply
 * accepts without a mutex and without a scoreboard.
 *
 * Scope and limits:
 * - C11 and libc only; no allocation after corral_worker_init().
 * - One worker per process, used from one thread (the prefork model). Call
 *   corral_worker_init() before starting any thread: it installs a SIGTERM
 *   handler and unblocks SIGTERM in the calling thread.
 * - SIGTERM is installed without SA_RESTART, so a blocking read() or write() of
 *   the program may fail with EINTR once a stop was asked for: retry it, or check
 *   corral_worker_stopping() (this is how hello-http closes an idle keep-alive
 *   connection promptly).
 * - The library does not touch SIGPIPE: a program writing to connections should
 *   use send(..., MSG_NOSIGNAL) or ignore SIGPIPE itself.
 */
#ifndef CORRAL_WORKER_H
#define CORRAL_WORKER_H

#include <sys/socket.h>

#include <corral/protocol.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The accept mutex named by CORRAL_LOCK_KIND (see docs/PROTOCOL.md). */
enum corral_lock_kind {
  CORRAL_LOCK_KIND_NONE = 0,  /* no mutex: one listener: block in accept4; several: poll, accept */
  CORRAL_LOCK_KIND_PIPE = 1,  /* token in a FIFO: read one byte to take, write it back to give */
  CORRAL_LOCK_KIND_FCNTL = 2, /* POSIX record lock (F_SETLKW) on a regular file */
  CORRAL_LOCK_KIND_EPOLL = 3, /* no mutex: one epoll per worker with EPOLLEXCLUSIVE */
};

typedef struct corral_worker corral_worker;

/// Reads the environment (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES, CORRAL_*) and
/// prepares the accept cycle. The environment is read, never modified.
/// - Listeners 3..3+LISTEN_FDS-1 get FD_CLOEXEC (as sd_listen_fds does), and so do
///   the lock and scoreboard fds. Their O_NONBLOCK is left alone: it is shared with
///   every other worker, and the supervisor sets it (docs/PROTOCOL.md, section 2).
/// - LISTEN_FDS is ignored unless LISTEN_PID is this process's pid.
/// - A scoreboard that fails validation is not fatal: one line goes to stderr
///   and the worker runs without it (corral_worker_slot() returns -1).
/// - Installs the SIGTERM handler (see docs/PROTOCOL.md, "SIGTERM").
/// On success stores the handle in *out and returns 0. The handle belongs to
/// the library; give it back with corral_worker_free(). Errors (nothing is
/// installed then):
///   -EINVAL  out is NULL, or CORRAL_LOCK_KIND / a CORRAL_*_FD value is malformed
///   -ENOENT  no listening socket was passed (LISTEN_FDS missing, 0, or for another pid)
///   -EBADF   a listener or the lock fd is not open, or not of the right type
///   -EBUSY   a worker already exists in this process
///   -ENOMEM, or the errno of epoll_create1/epoll_ctl/sigaction
int corral_worker_init(corral_worker** out);

/// Runs one accept cycle and returns the accepted connection, a blocking
/// SOCK_CLOEXEC socket the caller owns (close it, then call corral_worker_done()).
/// addr/addrlen work as for accept(2) (both may be NULL); *listener_index, if
/// listener_index is not NULL, receives the index (0-based, configuration
/// order) of the listener it came from. When several listeners have
/// connections waiting they are served in turn.
/// Blocks until a connection arrives: with one listener and no mutex, in accept4
/// itself (falling back to poll when the listener turns out non-blocking);
/// otherwise in poll (or epoll_wait) after taking the mutex. While blocked and
/// idle, SIGTERM ends the process at once with _exit(0) after giving back the
/// accept mutex; blocked in accept4, it makes this call return at once with
/// ESHUTDOWN instead (or with a connection accepted just before it, which the
/// program serves), and closes this process's copy of the listener fd.
/// Returns -1 with errno set:
///   ESHUTDOWN  a stop was asked for (SIGTERM while busy, or the supervisor
///              wrote STOPPING in the slot); the slot now says STOPPING. The
///              program should finish what it holds and exit 0.
///   EINVAL     w is NULL
///   other      an unrecoverable error (EBADF, ENOTSOCK, EINVAL from accept4 or
///              poll, or an error of the lock's system calls); exiting with
///              CORRAL_EXIT_FATAL is the usual answer.
/// Transient accept errors (EAGAIN, ECONNABORTED, EINTR, network errors) are
/// retried; EMFILE/ENFILE/ENOBUFS/ENOMEM give the mutex back and retry after
/// 10 ms so that other workers can accept meanwhile.
int corral_worker_accept(corral_worker* w, struct sockaddr* addr, socklen_t* addrlen,
                         unsigned* listener_index);

/// Counts one connection that the program took from corral_worker_accept() and
/// closed without serving it (a refusal: an access rule, a per-source limit) in
/// the slot's `refused` counter (docs/PROTOCOL.md 5.2; shown by `corral status` as
/// "refused" and in corral_pool_connections_refused_total). Call it, then
/// corral_worker_done(). Harmless with w NULL or without a grown scoreboard slot.
/// Async-signal-safe.
void corral_worker_count_refused(corral_worker* w);

/// Marks the slot idle again after the program closed the connection returned
/// by corral_worker_accept(). Calling it twice, or with w NULL, is harmless.
void corral_worker_done(corral_worker* w);

/// Nonzero once a stop was asked for (SIGTERM received, or STOPPING written in
/// the slot by the supervisor). Cheap: one volatile and one atomic load.
/// Async-signal-safe.
int corral_worker_stopping(const corral_worker* w);

/// Ends the accept cycle from a signal handler the program installed (without
/// SA_RESTART, every signal blocked while it runs), as SIGTERM does but with `status`:
/// a worker waiting for the mutex or holding it in poll gives the mutex back and
/// leaves at once with _exit(status); one blocked in accept4 makes
/// corral_worker_accept() return ESHUTDOWN (or a connection accepted just before);
/// a busy one only gets its stop flag set. Async-signal-safe. For a program that
/// watches something besides the listeners while idle (corral's warm inetd acceptor
/// watches its waiting program).
void corral_worker_leave_from_signal(corral_worker* w, int status);

/// Number of listening sockets (LISTEN_FDS).
unsigned corral_worker_listener_count(const corral_worker* w);

/// The fd of listener i (3 + i), or -1 if i is out of range. Still owned by
/// the library's process-wide setup: do not close it.
int corral_worker_listener_fd(const corral_worker* w, unsigned i);

/// The name of listener i from LISTEN_FDNAMES, or "unknown" when the variable
/// is missing or does not have one entry per listener (as sd_listen_fds_with_names
/// does). NULL if i is out of range. Valid until corral_worker_free().
const char* corral_worker_listener_name(const corral_worker* w, unsigned i);

/// The accept mutex in use.
enum corral_lock_kind corral_worker_lock_kind(const corral_worker* w);

/// "none", "pipe", "fcntl", "epoll" (or "?" for an unknown value). Static string.
const char* corral_lock_kind_name(enum corral_lock_kind kind);

/// This worker's scoreboard slot (CORRAL_SLOT), or -1 when running without a
/// scoreboard.
int corral_worker_slot(const corral_worker* w);

/// Unmaps the scoreboard, closes the epoll instance, restores SIGTERM's default
/// action and releases the handle. The inherited fds (listeners, lock,
/// scoreboard) stay open: they belong to the process. NULL is allowed.
void corral_worker_free(corral_worker* w);

/* ---- low-level accept mutex --------------------------------------------
 * The plain system calls of docs/PROTOCOL.md, for programs that run their own
 * accept loop (and for tests). They do not touch the scoreboard or the
 * SIGTERM phase: corral_worker_accept() uses its own interruptible variant. */

/// Takes the mutex, blocking: for PIPE read(fd, 1 byte) (waiting in poll() if
/// the FIFO was opened O_NONBLOCK), for FCNTL F_SETLKW on the whole file.
/// NONE and EPOLL: no-op. Returns 0, or -errno (-EINTR when a signal handler
/// ran; the mutex is not held then).
int corral_lock_acquire(enum corral_lock_kind kind, int fd);

/// Gives the mutex back: PIPE writes the token byte 'T', FCNTL unlocks with
/// F_SETLK/F_UNLCK; retried on EINTR. NONE and EPOLL: no-op. Async-signal-safe.
/// Returns 0 or -errno.
int corral_lock_release(enum corral_lock_kind kind, int fd);

#ifdef __cplusplus
}
#endif

#endif /* CORRAL_WORKER_H */
