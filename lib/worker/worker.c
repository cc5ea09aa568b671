/* corral worker library: accept cycle, accept mutex, scoreboard slot, SIGTERM.
 * The contract is in corral/worker.h and docs/PROTOCOL.md; this file explains
 * the why of each step. C11 + libc only. */
#define _GNU_SOURCE /* accept4, F_SETLKW details, EPOLLEXCLUSIVE */

#include <corral/worker.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* The token byte. Any nonzero byte is a token; the SIGTERM handler relies on
 * "nonzero" to tell whether a read() completed (see on_sigterm). */
#define TOKEN_BYTE 'T'
#define SD_LISTEN_FDS_START 3
#define MAX_LISTENERS 4096u /* a sanity bound on LISTEN_FDS, far above any real job */

/* What the worker is doing, for the SIGTERM handler. */
enum phase {
  PHASE_OTHER = 0,     /* busy with a connection, or between steps: just set the flag */
  PHASE_WAIT_LOCK = 1, /* blocked (or about to block) taking the mutex: leave at once */
  PHASE_HOLD_POLL = 2, /* holding the mutex, waiting in poll/epoll_wait: release, leave */
  PHASE_ACCEPT = 3,    /* no mutex, one listener: in (or about to enter) accept4 or poll */
};

struct corral_worker {
  int in_use;
  unsigned n_listeners;
  struct pollfd* pfds;  /* one per listener, fd 3+i, POLLIN */
  char* names_buf;      /* LISTEN_FDNAMES copy, ':' replaced by NUL */
  const char** names;   /* n_listeners pointers into names_buf, or NULL */
  unsigned last_served; /* index of the listener that gave the last connection */
  enum corral_lock_kind lock_kind;
  int lock_fd;                         /* -1 for NONE and EPOLL */
  int epoll_fd;                        /* EPOLL only */
  struct corral_sb_slot* slot;         /* NULL without a scoreboard */
  struct corral_sb_slot_ext* slot_ext; /* the grown slot's counters; NULL in a first-layout file */
  void* map_base;
  size_t map_len;
  int slot_index;                  /* -1 without a scoreboard */
  struct corral_sb_header* header; /* first page of the file, for idle_hint; NULL if none */
  int notify_fd;                   /* CORRAL_NOTIFY_FD, or -1 */
  uint64_t requests;
  struct sigaction old_term;
};

/* One worker per process: the handler needs to reach it without arguments. */
static struct corral_worker g_worker = {
    .lock_fd = -1, .epoll_fd = -1, .slot_index = -1, .notify_fd = -1};
static volatile sig_atomic_t g_stop;
static volatile sig_atomic_t g_phase;
/* read() target for the pipe token: the kernel fills it before read() returns,
 * so the handler can see that a token was taken even if read()'s return value
 * has not reached the program yet. Zeroed before each attempt. */
static char g_token[1];

/* ---- time and scoreboard writes (all async-signal-safe) ---------------- */

static uint64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts); /* async-signal-safe per POSIX */
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void slot_set_lock(struct corral_worker* w, uint32_t lock) {
  if (!w->slot) return;
  /* Timestamp first, then the value with release: a reader that loads `lock`
   * with acquire sees a timestamp at least as new. */
  __atomic_store_n(&w->slot->lock_since_ns, mono_ns(), __ATOMIC_RELAXED);
  __atomic_store_n(&w->slot->lock, lock, __ATOMIC_RELEASE);
}

static int slot_says_stopping(const struct corral_worker* w) {
  return w->slot && __atomic_load_n(&w->slot->state, __ATOMIC_ACQUIRE) == CORRAL_SLOT_STOPPING;
}

/* The idle hint (protocol.h, header offset 960): +1 on becoming idle, -1 on
 * leaving idle; below min_spare after our -1, one byte to CORRAL_NOTIFY_FD wakes
 * the supervisor to start spares now. Async-signal-safe. */
static void hint_transition(struct corral_worker* w, uint32_t from, uint32_t to) {
  if (!w->header || from == to) return;
  if (to == CORRAL_SLOT_IDLE) {
    __atomic_fetch_add(&w->header->idle_hint, 1, __ATOMIC_RELAXED);
  } else if (from == CORRAL_SLOT_IDLE) {
    int32_t left = __atomic_sub_fetch(&w->header->idle_hint, 1, __ATOMIC_RELAXED);
    uint32_t min_spare = __atomic_load_n(&w->header->min_spare, __ATOMIC_RELAXED);
    if (w->notify_fd >= 0 && left < (int32_t)min_spare &&
        __atomic_load_n(&w->header->at_max, __ATOMIC_RELAXED) == 0) {
      static const char byte = 'b';
      /* Non-blocking: a full pipe already says everything. */
      ssize_t n = write(w->notify_fd, &byte, 1);
      (void)n;
    }
  }
}

/* Moves the slot to `state` with a compare-exchange from the state found in
 * it, so that a STOPPING written by the supervisor is never overwritten (the
 * supervisor may write it at any time). Returns 0, or -1 if the slot says
 * STOPPING: then the worker must stop. */
static int slot_set_state(struct corral_worker* w, uint32_t state) {
  if (!w->slot) return 0;
  uint32_t cur = __atomic_load_n(&w->slot->state, __ATOMIC_ACQUIRE);
  for (;;) {
    if (cur == CORRAL_SLOT_STOPPING && state != CORRAL_SLOT_STOPPING) return -1;
    if (cur == state) return 0; /* already there ("mark idle if not already") */
    /* Timestamp first, then the state with release (see slot_set_lock). */
    __atomic_store_n(&w->slot->state_since_ns, mono_ns(), __ATOMIC_RELAXED);
    uint32_t from = cur;
    if (__atomic_compare_exchange_n(&w->slot->state, &cur, state, 0, __ATOMIC_RELEASE,
                                    __ATOMIC_ACQUIRE)) {
      hint_transition(w, from, state);
      return 0;
    }
    /* cur now holds what the supervisor wrote meanwhile: decide again. */
  }
}

/* ---- the accept mutex: plain system calls ------------------------------ */

static int pipe_release(int fd) {
  static const char token = TOKEN_BYTE;
  for (;;) {
    ssize_t n = write(fd, &token, 1);
    if (n == 1) return 0;
    if (n < 0 && errno == EINTR) continue;
    /* EAGAIN cannot happen: a pipe holds at least 4096 bytes and there is one
     * token in circulation. */
    return n < 0 ? -errno : -EIO;
  }
}

static int fcntl_lock(int fd, short type, int cmd) {
  struct flock fl;
  memset(&fl, 0, sizeof fl);
  fl.l_type = type;
  fl.l_whence = SEEK_SET; /* l_start = 0, l_len = 0: the whole file, however long */
  return fcntl(fd, cmd, &fl) == 0 ? 0 : -errno;
}

int corral_lock_release(enum corral_lock_kind kind, int fd) {
  switch (kind) {
    case CORRAL_LOCK_KIND_PIPE: return pipe_release(fd);
    case CORRAL_LOCK_KIND_FCNTL:
      for (;;) {
        int r = fcntl_lock(fd, F_UNLCK, F_SETLK);
        if (r != -EINTR) return r;
      }
    case CORRAL_LOCK_KIND_NONE:
    case CORRAL_LOCK_KIND_EPOLL: return 0;
  }
  return -EINVAL;
}

/* One attempt to take the mutex, reading the pipe token into `buf`. Returns 0
 * (held), -EINTR, or another -errno. A FIFO whose open file description is
 * O_NONBLOCK (the supervisor should not do that; the flag is shared by every
 * worker, so we may not clear it) is waited for with poll(), which is correct
 * but wakes every waiter. */
static int lock_try_acquire(enum corral_lock_kind kind, int fd, char* buf) {
  switch (kind) {
    case CORRAL_LOCK_KIND_PIPE: {
      ssize_t n = read(fd, buf, 1);
      if (n == 1) return 0;
      if (n == 0) return -EPIPE; /* cannot happen on a FIFO opened O_RDWR: we are a writer */
      if (errno == EAGAIN) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, -1) < 0) return -errno;
        return -EAGAIN;
      }
      return -errno;
    }
    case CORRAL_LOCK_KIND_FCNTL: {
      /* EDEADLK cannot happen with one lock per process; report it if it does. */
      return fcntl_lock(fd, F_WRLCK, F_SETLKW);
    }
    case CORRAL_LOCK_KIND_NONE:
    case CORRAL_LOCK_KIND_EPOLL: return 0;
  }
  return -EINVAL;
}

int corral_lock_acquire(enum corral_lock_kind kind, int fd) {
  char buf[1];
  for (;;) {
    int r = lock_try_acquire(kind, fd, buf);
    if (r != -EAGAIN) return r;
  }
}

/* ---- SIGTERM ------------------------------------------------------------ */

/* Leaves from inside the handler: the slot shows what happened, then _exit(0).
 * Everything here is async-signal-safe (lock-free atomics, clock_gettime). */
static void leave_from_handler(struct corral_worker* w, int status) {
  if (w->slot) {
    slot_set_lock(w, CORRAL_LOCK_NONE);
    uint32_t cur = __atomic_load_n(&w->slot->state, __ATOMIC_ACQUIRE);
    while (cur != CORRAL_SLOT_STOPPING) {
      __atomic_store_n(&w->slot->state_since_ns, mono_ns(), __ATOMIC_RELAXED);
      uint32_t from = cur;
      if (__atomic_compare_exchange_n(&w->slot->state, &cur, CORRAL_SLOT_STOPPING, 0,
                                      __ATOMIC_RELEASE, __ATOMIC_ACQUIRE)) {
        if (from == CORRAL_SLOT_IDLE && w->header)
          __atomic_fetch_sub(&w->header->idle_hint, 1, __ATOMIC_RELAXED);
        break;
      }
    }
  }
  _exit(status);
}

/* What SIGTERM does, with the exit status of an idle worker that leaves at once. */
static void stop_from_handler(int status) {
  int saved_errno = errno;
  struct corral_worker* w = &g_worker;
  g_stop = 1;
  switch (g_phase) {
    case PHASE_WAIT_LOCK:
      /* An idle worker leaves at once, as Apache prefork's children do. If the
       * signal arrived just after read() took the token but before the program
       * saw it, the byte is already in g_token: give it back, or it is lost. A
       * fcntl lock that was just granted is released by the kernel at exit. */
      if (w->lock_kind == CORRAL_LOCK_KIND_PIPE && *(volatile char*)g_token != 0)
        (void)pipe_release(w->lock_fd);
      leave_from_handler(w, status);
      break;
    case PHASE_HOLD_POLL:
      /* Holding the mutex while waiting for a connection: give it back first
       * (write/fcntl are async-signal-safe), then leave. The token is written
       * before the slot says NONE, the same order as a normal release. */
      (void)corral_lock_release(w->lock_kind, w->lock_fd);
      leave_from_handler(w, status);
      break;
    case PHASE_ACCEPT:
      /* Blocked in accept4 (or about to be). Leaving from here could lose a
       * connection that accept4 has just dequeued but not yet returned to us, so
       * return instead: an accept4 in progress fails with EINTR (no SA_RESTART),
       * one that completed keeps its connection (served, then ESHUTDOWN), and one
       * not yet entered fails with EBADF because our copy of the listener is
       * closed here (Apache prefork's stop_listening() does the same). Closing
       * our fd leaves the socket open in every other process. */
      (void)close(w->pfds[0].fd);
      break;
    default:
      /* Busy: the program finishes its connection; the next accept() says
       * ESHUTDOWN. The flag is enough, and the missing SA_RESTART makes a
       * blocking read() return EINTR so the program can look at it. */
      break;
  }
  errno = saved_errno;
}

static void on_sigterm(int sig) {
  (void)sig;
  stop_from_handler(0);
}

void corral_worker_leave_from_signal(corral_worker* w, int status) {
  if (w != &g_worker || !w->in_use) return;
  stop_from_handler(status);
}

static int stop_requested(const struct corral_worker* w) {
  return g_stop || slot_says_stopping(w);
}

/* ---- the accept cycle --------------------------------------------------- */

/* Gives the mutex back from the main flow. The phase is OTHER before the
 * write, so the handler cannot release a second time. Token first, then the
 * slot: see "Auditing the token" in docs/PROTOCOL.md. */
static void release_main(struct corral_worker* w) {
  g_phase = PHASE_OTHER;
  if (w->lock_fd < 0) return;
  int r = corral_lock_release(w->lock_kind, w->lock_fd);
  if (r < 0) {
    /* Nothing sensible to do but say so: the supervisor restores a lost token. */
    static int said;
    if (!said) {
      said = 1;
      fprintf(stderr, "corral worker: releasing the %s accept mutex (fd %d): %s\n",
              corral_lock_kind_name(w->lock_kind), w->lock_fd, strerror(-r));
    }
  }
  slot_set_lock(w, CORRAL_LOCK_NONE);
}

/* Takes the mutex in phase WAIT_LOCK. Returns 0 with the phase HOLD_POLL (the
 * mutex held, or no mutex), -ESHUTDOWN, or another -errno. */
static int acquire_main(struct corral_worker* w) {
  if (w->lock_fd < 0) {
    g_phase = PHASE_HOLD_POLL;
    return 0;
  }
  slot_set_lock(w, CORRAL_LOCK_WAITING);
  for (;;) {
    *(volatile char*)g_token = 0;
    g_phase = PHASE_WAIT_LOCK;
    /* A SIGTERM that came before the phase was set only raised the flag: look
     * at it now. One that comes from here on makes the handler leave. */
    if (stop_requested(w)) {
      g_phase = PHASE_OTHER;
      slot_set_lock(w, CORRAL_LOCK_NONE);
      return -ESHUTDOWN;
    }
    int r = lock_try_acquire(w->lock_kind, w->lock_fd, g_token);
    if (r == 0) {
      g_phase = PHASE_HOLD_POLL;
      /* Read first, HELD second (docs/PROTOCOL.md, "Auditing the token"). */
      slot_set_lock(w, CORRAL_LOCK_HELD);
      return 0;
    }
    g_phase = PHASE_OTHER;
    if (r == -EINTR || r == -EAGAIN) continue;
    slot_set_lock(w, CORRAL_LOCK_NONE);
    return r;
  }
}

/* Waits (phase HOLD_POLL) until at least one listener is readable and fills
 * pfds[].revents. Returns 0, -EINTR, or another -errno. */
static int wait_listeners(struct corral_worker* w) {
  if (w->lock_kind == CORRAL_LOCK_KIND_EPOLL) {
    struct epoll_event ev[64];
    int max = w->n_listeners < 64 ? (int)w->n_listeners : 64;
    int n = epoll_wait(w->epoll_fd, ev, max, -1);
    if (n < 0) return -errno;
    for (unsigned i = 0; i < w->n_listeners; i++) w->pfds[i].revents = 0;
    for (int k = 0; k < n; k++) {
      uint32_t i = ev[k].data.u32;
      if (i < w->n_listeners) w->pfds[i].revents = (short)(ev[k].events & 0x7fff);
    }
    return 0;
  }
  int n = poll(w->pfds, w->n_listeners, -1);
  return n < 0 ? -errno : 0;
}

static int accept_error_is_transient(int e) {
  /* accept(2), "Error handling": Linux passes pending network errors of the new
   * socket to accept(); treat them like EAGAIN and retry. */
  switch (e) {
    case EAGAIN:
#if EWOULDBLOCK != EAGAIN
    case EWOULDBLOCK:
#endif
    case EINTR:
    case ECONNABORTED:
    case EPROTO:
    case ENETDOWN:
    case ENOPROTOOPT:
    case EHOSTDOWN:
    case ENONET:
    case EHOSTUNREACH:
    case EOPNOTSUPP:
    case ENETUNREACH:
    case ETIMEDOUT:
    case ECONNRESET:
    case EPERM: /* a firewall rule refused the connection */ return 1;
    default: return 0;
  }
}

static int accept_error_is_resource(int e) {
  return e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM;
}

static void short_pause(void) {
  struct timespec ts = {.tv_sec = 0, .tv_nsec = 10 * 1000 * 1000};
  nanosleep(&ts, NULL); /* EINTR is fine: the cycle looks at the stop flag */
}

static int fail(int neg_errno) {
  errno = -neg_errno;
  return -1;
}

static int shut_down(struct corral_worker* w) {
  g_phase = PHASE_OTHER;
  (void)slot_set_state(w, CORRAL_SLOT_STOPPING);
  return fail(-ESHUTDOWN);
}

/* The one place a connection enters the worker: accept4 on listener i and, when
 * it returns one, everything a new connection means (the mutex given back, the
 * request counted, the slot busy). Returns the fd, or -errno with the mutex, if
 * any, still held. */
static int take_connection(struct corral_worker* w, unsigned i, struct sockaddr* addr,
                           socklen_t* addrlen, socklen_t addr_cap, unsigned* listener_index) {
  if (addrlen) *addrlen = addr_cap;
  int fd = accept4(w->pfds[i].fd, addrlen ? addr : NULL, addrlen, SOCK_CLOEXEC);
  if (fd < 0) return -errno;
  w->last_served = i;
  release_main(w); /* also leaves PHASE_ACCEPT: from here a SIGTERM only raises the flag */
  w->requests++;
  if (w->slot) __atomic_store_n(&w->slot->requests, w->requests, __ATOMIC_RELEASE);
  /* Per listener (grown layout, listeners 0..15): the supervisor folds these into
   * corral_listener_connections_accepted_total when it reaps us. */
  if (w->slot_ext && i < CORRAL_SB_LISTENER_COUNTERS)
    __atomic_fetch_add(&w->slot_ext->accepted[i], 1, __ATOMIC_RELEASE);
  /* A STOPPING found here stays: the program gets this connection, and the next
   * accept() says ESHUTDOWN. */
  (void)slot_set_state(w, CORRAL_SLOT_BUSY);
  if (listener_index) *listener_index = i;
  return fd;
}

/* One listener and no mutex (what `auto` gives a single-listener job): block in
 * accept4, which wakes one waiter per connection, in FIFO order, when the listener
 * is blocking, as the supervisor makes it then. On a non-blocking listener (a
 * launcher that set O_NONBLOCK, a listener shared with a job that needs it) accept4
 * says EAGAIN: wait in poll and try again, which is correct but wakes every idle
 * worker. Returns the connection, -ESHUTDOWN, or another -errno. */
static int accept_single(struct corral_worker* w, struct sockaddr* addr, socklen_t* addrlen,
                         socklen_t addr_cap, unsigned* listener_index) {
  for (;;) {
    g_phase = PHASE_ACCEPT;
    /* A SIGTERM before this point only raised the flag; one from here on closes
     * our listener fd, so that the call below cannot block (see on_sigterm). */
    if (stop_requested(w)) return -ESHUTDOWN;
    int r = take_connection(w, 0, addr, addrlen, addr_cap, listener_index);
    if (r >= 0) return r;
    if (r == -EAGAIN || r == -EWOULDBLOCK) {
      if (poll(w->pfds, 1, -1) < 0) r = -errno;
    }
    g_phase = PHASE_OTHER;
    if (stop_requested(w)) return -ESHUTDOWN; /* EINTR, or EBADF/POLLNVAL after the close */
    if (r == -EAGAIN || r == -EWOULDBLOCK || accept_error_is_transient(-r)) continue;
    if (accept_error_is_resource(-r)) {
      short_pause(); /* out of fds or memory: let another worker take the connection */
      continue;
    }
    return r;
  }
}

/* Several listeners, or a mutex: take the mutex, wait in poll (or epoll_wait) until
 * a listener is readable, accept it without blocking, give the mutex back. Returns
 * the connection, -EAGAIN (start a new turn: the mutex was given back), -ESHUTDOWN,
 * or another -errno. */
static int accept_polled(struct corral_worker* w, struct sockaddr* addr, socklen_t* addrlen,
                         socklen_t addr_cap, unsigned* listener_index) {
  int r = acquire_main(w);
  if (r < 0) return r;
  for (;;) { /* holding the mutex: wait for a connection we win */
    g_phase = PHASE_HOLD_POLL;
    if (stop_requested(w)) {
      release_main(w);
      return -ESHUTDOWN;
    }
    r = wait_listeners(w);
    /* Leave HOLD_POLL before looking at the flag and accepting: from here on a
     * SIGTERM only raises the flag. */
    g_phase = PHASE_OTHER;
    if (r == -EINTR) continue;
    if (r < 0) {
      release_main(w);
      return r;
    }
    if (stop_requested(w)) {
      release_main(w);
      return -ESHUTDOWN;
    }
    /* Round-robin from the listener after the one served last, so that two busy
     * listeners alternate instead of the first starving the others. */
    for (unsigned k = 0; k < w->n_listeners; k++) {
      unsigned i = (w->last_served + 1 + k) % w->n_listeners;
      short rev = w->pfds[i].revents;
      if (rev == 0) continue;
      if (rev & POLLNVAL) {
        release_main(w);
        return -EBADF;
      }
      int fd = take_connection(w, i, addr, addrlen, addr_cap, listener_index);
      if (fd >= 0) return fd;
      if (accept_error_is_transient(-fd)) continue;
      release_main(w);
      if (accept_error_is_resource(-fd)) {
        short_pause(); /* out of fds or memory: let another worker take the connection */
        return -EAGAIN;
      }
      return fd;
    }
    /* Another process won the race (NONE, EPOLL) or the connection went away: wait
     * again, still holding the mutex. */
  }
}

int corral_worker_accept(corral_worker* w, struct sockaddr* addr, socklen_t* addrlen,
                         unsigned* listener_index) {
  if (!w || !w->in_use) return fail(-EINVAL);
  const socklen_t addr_cap = addrlen ? *addrlen : 0;
  for (;;) { /* one turn per mutex acquisition */
    /* workers.max_requests (header offset 912): a worker that served its quota leaves
     * before taking another connection, and the supervisor starts a fresh one. */
    if (w->header) {
      uint64_t quota = __atomic_load_n(&w->header->max_requests, __ATOMIC_RELAXED);
      if (quota != 0 && w->requests >= quota) return shut_down(w);
    }
    if (slot_set_state(w, CORRAL_SLOT_IDLE) < 0 || stop_requested(w)) return shut_down(w);
    int r = (w->n_listeners == 1 && w->lock_kind == CORRAL_LOCK_KIND_NONE)
                ? accept_single(w, addr, addrlen, addr_cap, listener_index)
                : accept_polled(w, addr, addrlen, addr_cap, listener_index);
    if (r >= 0) return r;
    if (r == -ESHUTDOWN) return shut_down(w);
    if (r != -EAGAIN) return fail(r);
  }
}

void corral_worker_count_refused(corral_worker* w) {
  if (!w || !w->in_use || !w->slot_ext) return;
  __atomic_fetch_add(&w->slot_ext->refused, 1, __ATOMIC_RELEASE);
}

void corral_worker_done(corral_worker* w) {
  if (!w || !w->in_use) return;
  (void)slot_set_state(w, CORRAL_SLOT_IDLE);
}

int corral_worker_stopping(const corral_worker* w) {
  if (g_stop) return 1;
  return w ? slot_says_stopping(w) : 0;
}

unsigned corral_worker_listener_count(const corral_worker* w) {
  return w ? w->n_listeners : 0;
}

int corral_worker_listener_fd(const corral_worker* w, unsigned i) {
  return (w && i < w->n_listeners) ? w->pfds[i].fd : -1;
}

const char* corral_worker_listener_name(const corral_worker* w, unsigned i) {
  if (!w || i >= w->n_listeners) return NULL;
  return w->names ? w->names[i] : "unknown";
}

enum corral_lock_kind corral_worker_lock_kind(const corral_worker* w) {
  return w ? w->lock_kind : CORRAL_LOCK_KIND_NONE;
}

const char* corral_lock_kind_name(enum corral_lock_kind kind) {
  switch (kind) {
    case CORRAL_LOCK_KIND_NONE: return "none";
    case CORRAL_LOCK_KIND_PIPE: return "pipe";
    case CORRAL_LOCK_KIND_FCNTL: return "fcntl";
    case CORRAL_LOCK_KIND_EPOLL: return "epoll";
  }
  return "?";
}

int corral_worker_slot(const corral_worker* w) {
  return w ? w->slot_index : -1;
}

/* ---- initialisation ----------------------------------------------------- */

/* Parses a decimal, non-negative int that fills the whole string. */
static int parse_uint(const char* s, long max, long* out) {
  if (!s || *s < '0' || *s > '9') return -1;
  errno = 0;
  char* end = NULL;
  long v = strtol(s, &end, 10);
  if (errno != 0 || *end != '\0' || v < 0 || v > max) return -1;
  *out = v;
  return 0;
}

static int set_cloexec(int fd) {
  int flags = fcntl(fd, F_GETFD);
  if (flags < 0) return -errno;
  if (!(flags & FD_CLOEXEC) && fcntl(fd, F_SETFD, flags | FD_CLOEXEC) < 0) return -errno;
  return 0;
}

static int setup_listeners(struct corral_worker* w) {
  long pid = 0, n = 0;
  const char* pid_s = getenv("LISTEN_PID");
  const char* n_s = getenv("LISTEN_FDS");
  /* As sd_listen_fds: the variables are for the process they name, not for a
   * child that inherited the environment. */
  if (!pid_s || !n_s || parse_uint(pid_s, INT_MAX, &pid) < 0 || (pid_t)pid != getpid())
    return -ENOENT;
  if (parse_uint(n_s, MAX_LISTENERS, &n) < 0) return -EINVAL;
  if (n == 0) return -ENOENT;

  w->n_listeners = (unsigned)n;
  w->pfds = calloc((size_t)n, sizeof *w->pfds);
  if (!w->pfds) return -ENOMEM;
  for (unsigned i = 0; i < w->n_listeners; i++) {
    int fd = SD_LISTEN_FDS_START + (int)i;
    struct stat st;
    if (fstat(fd, &st) < 0) return -errno;
    if (!S_ISSOCK(st.st_mode)) return -EBADF;
    /* O_NONBLOCK is the supervisor's alone: it is shared with every other worker. */
    int r = set_cloexec(fd);
    if (r < 0) return r;
    w->pfds[i].fd = fd;
    w->pfds[i].events = POLLIN;
  }
  /* The last listener counts as served, so that the first turn starts at 0. */
  w->last_served = w->n_listeners - 1;

  const char* names = getenv("LISTEN_FDNAMES");
  if (names) {
    size_t count = 1;
    for (const char* p = names; *p; p++) count += (*p == ':');
    if (count == w->n_listeners) {
      w->names_buf = strdup(names);
      w->names = calloc(w->n_listeners, sizeof *w->names);
      if (!w->names_buf || !w->names) return -ENOMEM;
      char* p = w->names_buf;
      for (unsigned i = 0; i < w->n_listeners; i++) {
        w->names[i] = p;
        char* colon = strchr(p, ':');
        if (colon) {
          *colon = '\0';
          p = colon + 1;
        }
      }
    }
  }
  return 0;
}

static int setup_lock(struct corral_worker* w) {
  const char* kind_s = getenv(CORRAL_ENV_LOCK_KIND);
  const char* fd_s = getenv(CORRAL_ENV_LOCK_FD);
  long fd = -1;
  if (fd_s && parse_uint(fd_s, INT_MAX, &fd) < 0) return -EINVAL;

  struct stat st;
  if (fd >= 0 && fstat((int)fd, &st) < 0) return -EBADF;

  if (!kind_s || !*kind_s) {
    if (fd < 0) {
      w->lock_kind = CORRAL_LOCK_KIND_NONE;
      return 0;
    }
    /* No kind given: the fd's type says which mutex it is. */
    if (S_ISFIFO(st.st_mode))
      w->lock_kind = CORRAL_LOCK_KIND_PIPE;
    else if (S_ISREG(st.st_mode))
      w->lock_kind = CORRAL_LOCK_KIND_FCNTL;
    else
      return -EBADF;
  } else if (strcmp(kind_s, "pipe") == 0) {
    w->lock_kind = CORRAL_LOCK_KIND_PIPE;
  } else if (strcmp(kind_s, "fcntl") == 0) {
    w->lock_kind = CORRAL_LOCK_KIND_FCNTL;
  } else if (strcmp(kind_s, "epoll") == 0) {
    w->lock_kind = CORRAL_LOCK_KIND_EPOLL;
  } else if (strcmp(kind_s, "none") == 0) {
    w->lock_kind = CORRAL_LOCK_KIND_NONE;
  } else {
    return -EINVAL;
  }

  switch (w->lock_kind) {
    case CORRAL_LOCK_KIND_PIPE:
      if (fd < 0 || !S_ISFIFO(st.st_mode)) return -EBADF;
      break;
    case CORRAL_LOCK_KIND_FCNTL:
      if (fd < 0 || !S_ISREG(st.st_mode)) return -EBADF;
      break;
    case CORRAL_LOCK_KIND_EPOLL: {
      fd = -1; /* a stray CORRAL_LOCK_FD is not ours to use */
      w->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
      if (w->epoll_fd < 0) return -errno;
      for (unsigned i = 0; i < w->n_listeners; i++) {
        /* EPOLLEXCLUSIVE (Linux 4.5): a new connection wakes one (or a few)
         * of the workers waiting on their own epoll instances, not all. */
        struct epoll_event ev = {.events = EPOLLIN | EPOLLEXCLUSIVE, .data.u32 = i};
        if (epoll_ctl(w->epoll_fd, EPOLL_CTL_ADD, w->pfds[i].fd, &ev) < 0) return -errno;
      }
      break;
    }
    case CORRAL_LOCK_KIND_NONE: fd = -1; break;
  }
  w->lock_fd = (int)fd;
  return w->lock_fd >= 0 ? set_cloexec(w->lock_fd) : 0;
}

/* Returns NULL when the scoreboard is usable, or why not. */
static const char* map_scoreboard(struct corral_worker* w, int fd, long slot) {
  struct corral_sb_header h;
  if (pread(fd, &h, sizeof h, 0) != (ssize_t)sizeof h) return "cannot read the header";
  if (memcmp(h.magic, CORRAL_SB_MAGIC, sizeof h.magic) != 0) return "bad magic";
  if (h.version != CORRAL_SB_VERSION) return "unsupported version";
  /* Sizes may grow in later versions of the supervisor; a cache-line multiple
   * keeps every field naturally aligned for the atomic accesses. */
  if (h.header_size < CORRAL_SB_HEADER_SIZE || h.header_size % 64 != 0) return "bad header_size";
  if (h.slot_size < CORRAL_SB_SLOT_SIZE || h.slot_size % 64 != 0) return "bad slot_size";
  if (h.slot_count == 0 || h.slot_count > CORRAL_SB_MAX_SLOTS) return "bad slot_count";
  if ((unsigned long)slot >= h.slot_count) return "CORRAL_SLOT out of range";
  struct stat st;
  if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) return "not a regular file";
  uint64_t need = (uint64_t)h.header_size + (uint64_t)h.slot_count * h.slot_size;
  if ((uint64_t)st.st_size < need) return "file shorter than its header says";

  /* Map only the page(s) holding our slot: a worker has no business writing
   * anywhere else, and a full map of 65536 slots would cost 4 MiB of address
   * space per worker. */
  long page = sysconf(_SC_PAGESIZE);
  if (page <= 0) page = 4096;
  uint64_t slot_off = (uint64_t)h.header_size + (uint64_t)slot * h.slot_size;
  uint64_t map_off = slot_off & ~(uint64_t)(page - 1);
  /* The grown slot (256 bytes, never across a page: 2048 + i * 256) when the file has
   * it; else the first layout's 64 bytes, and no per-listener counters. */
  int grown = h.slot_size >= CORRAL_SB_EXT_SLOT_SIZE;
  size_t map_len =
      (size_t)(slot_off - map_off) + (grown ? CORRAL_SB_EXT_SLOT_SIZE : CORRAL_SB_SLOT_SIZE);
  void* base = mmap(NULL, map_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)map_off);
  if (base == MAP_FAILED) return "mmap failed (is the fd open read-write?)";
  w->map_base = base;
  w->map_len = map_len;
  w->slot = (struct corral_sb_slot*)((char*)base + (slot_off - map_off));
  w->slot_index = (int)slot;
  if (grown) {
    w->slot_ext = (struct corral_sb_slot_ext*)((char*)w->slot + CORRAL_SB_SLOT_SIZE);
    /* The supervisor zeroed the counters when it claimed the slot; say we keep them. */
    __atomic_fetch_or(&w->slot_ext->reports, CORRAL_SB_REPORTS_LISTENERS, __ATOMIC_RELEASE);
  }
  /* The header's first page, for the idle hint only (optional: without it the
   * supervisor still sees the pool within a second). */
  void* hdr = mmap(NULL, (size_t)page, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (hdr != MAP_FAILED) w->header = (struct corral_sb_header*)hdr;
  (void)set_cloexec(fd);
  return NULL;
}

static void setup_scoreboard(struct corral_worker* w) {
  const char* fd_s = getenv(CORRAL_ENV_SCOREBOARD_FD);
  if (!fd_s) return; /* not run by corral: no scoreboard, no complaint */
  const char* slot_s = getenv(CORRAL_ENV_SLOT);
  long fd = -1, slot = -1;
  const char* why = NULL;
  if (parse_uint(fd_s, INT_MAX, &fd) < 0)
    why = "CORRAL_SCOREBOARD_FD is not a number";
  else if (parse_uint(slot_s, INT_MAX, &slot) < 0)
    why = "CORRAL_SLOT missing or not a number";
  else
    why = map_scoreboard(w, (int)fd, slot);
  if (why)
    fprintf(stderr, "corral worker: scoreboard (fd %s, slot %s): %s; running without it\n", fd_s,
            slot_s ? slot_s : "?", why);
}

static void setup_notify(struct corral_worker* w) {
  const char* fd_s = getenv(CORRAL_ENV_NOTIFY_FD);
  long fd = -1;
  if (!fd_s || parse_uint(fd_s, INT_MAX, &fd) < 0) return;
  struct stat st;
  if (fstat((int)fd, &st) < 0 || !S_ISFIFO(st.st_mode)) return;
  w->notify_fd = (int)fd;
  (void)set_cloexec(w->notify_fd);
}

static void release_resources(struct corral_worker* w) {
  if (w->header) {
    long page = sysconf(_SC_PAGESIZE);
    munmap(w->header, (size_t)(page > 0 ? page : 4096));
  }
  if (w->map_base) munmap(w->map_base, w->map_len);
  if (w->epoll_fd >= 0) close(w->epoll_fd);
  free(w->pfds);
  free(w->names);
  free(w->names_buf);
  memset(w, 0, sizeof *w);
  w->lock_fd = -1;
  w->epoll_fd = -1;
  w->slot_index = -1;
  w->notify_fd = -1;
}

static int install_sigterm(struct corral_worker* w) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigterm;
  sigfillset(&sa.sa_mask); /* the handler reads shared state: nothing may nest */
  sa.sa_flags = 0;         /* no SA_RESTART: blocking calls return EINTR (signal(7)) */
  if (sigaction(SIGTERM, &sa, &w->old_term) < 0) return -errno;
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigprocmask(SIG_UNBLOCK, &set, NULL);
  return 0;
}

int corral_worker_init(corral_worker** out) {
  if (!out) return -EINVAL;
  *out = NULL;
  struct corral_worker* w = &g_worker;
  if (w->in_use) return -EBUSY;
  release_resources(w);

  int r = setup_listeners(w);
  if (r == 0) r = setup_lock(w);
  if (r == 0) {
    setup_scoreboard(w);
    setup_notify(w);
    g_stop = 0;
    g_phase = PHASE_OTHER;
    r = install_sigterm(w);
  }
  if (r < 0) {
    release_resources(w);
    return r;
  }
  w->in_use = 1;
  *out = w;
  return 0;
}

void corral_worker_free(corral_worker* w) {
  if (!w || !w->in_use) return;
  sigaction(SIGTERM, &w->old_term, NULL);
  g_phase = PHASE_OTHER;
  release_resources(w);
}
