/* Warm inetd mode: the program is started before the connection, on two pipes, and the
 * connection is relayed to it with splice(2). See warm.h and docs/INETD.md.
 *
 * States of the waiting program, for the SIGCHLD/SIGIO handler:
 *   WAITING  started and ready; not joined yet: an exit or a write ends the acceptor
 *   JOINED   a connection was accepted (or the acceptor gave the program up): ignore
 *   LOST     the handler found it gone or misbehaving; the acceptor is leaving */
#define _GNU_SOURCE
#include "warm.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "spawn/report.h"

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif

/* A program that never shows up blocked in a read of its stdin (it waits in a thread,
 * or /proc cannot be read) counts as ready after this long. */
#define READY_CAP_MS 3000
#define RELAY_CHUNK (1 << 16)

enum { WAITING = 0, JOINED = 1, LOST = 2 };

static volatile sig_atomic_t g_state = JOINED;
static volatile pid_t g_pid = -1;
static int g_in_w = -1;  /* the program's stdin, our end */
static int g_out_r = -1; /* the program's stdout, our end */
static corral_worker* g_w;
static const char* g_job = "?";
static enum warm_header g_header = WARM_HEADER_NONE;

/* ---- async-signal-safe messages ---------------------------------------- */

struct msg {
  char buf[512];
  size_t len;
};

static void put(struct msg* m, const char* s) {
  while (*s != '\0' && m->len < sizeof m->buf - 1) m->buf[m->len++] = *s++;
}

static void put_uint(struct msg* m, unsigned long v) {
  char tmp[24];
  size_t n = 0;
  do {
    tmp[n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v != 0 && n < sizeof tmp);
  while (n > 0 && m->len < sizeof m->buf - 1) m->buf[m->len++] = tmp[--n];
}

static void put_status(struct msg* m, int status) {
  if (WIFEXITED(status)) {
    put(m, "exited with status ");
    put_uint(m, (unsigned long)WEXITSTATUS(status));
  } else if (WIFSIGNALED(status)) {
    put(m, "was killed by signal ");
    put_uint(m, (unsigned long)WTERMSIG(status));
  } else {
    put(m, "ended");
  }
}

static void begin(struct msg* m, pid_t pid) {
  m->len = 0;
  put(m, "corral: job ");
  put(m, g_job);
  put(m, ": warm program ");
  put_uint(m, (unsigned long)pid);
  put(m, " ");
}

static void say(struct msg* m) {
  m->buf[m->len++] = '\n';
  ssize_t n = write(2, m->buf, m->len); /* nothing to do if the log is gone */
  (void)n;
}

static void reap(pid_t pid, int* status) {
  while (waitpid(pid, status, 0) < 0 && errno == EINTR) {
  }
}

/* Looks at the program while no client is joined: 1 and a logged reason when it exited,
 * closed its stdout or wrote, after which it is ended and reaped; 0 while it waits
 * quietly. Async-signal-safe (the SIGCHLD/SIGIO handler calls it). */
static int program_misbehaved(const char* when) {
  pid_t pid = g_pid;
  if (pid <= 0) return 1;
  int status = 0;
  struct msg m;
  pid_t r = waitpid(pid, &status, WNOHANG);
  if (r == pid) {
    g_pid = -1;
    begin(&m, pid);
    put_status(&m, status);
    put(&m, when);
    say(&m);
    return 1;
  }
  struct pollfd p = {.fd = g_out_r, .events = POLLIN, .revents = 0};
  if (poll(&p, 1, 0) <= 0) return 0;
  int pending = 0;
  if (ioctl(g_out_r, FIONREAD, &pending) != 0) pending = 0;
  /* Only a hang-up: the program is probably exiting (its fds close before it can be
   * reaped); give it 100 ms to say how, then end it. */
  r = 0;
  for (int i = 0; pending == 0 && r != pid && i < 20; ++i) {
    struct timespec ts = {.tv_sec = 0, .tv_nsec = 5 * 1000 * 1000};
    nanosleep(&ts, NULL);
    r = waitpid(pid, &status, WNOHANG);
  }
  int killed = r != pid;
  if (killed) {
    kill(pid, SIGKILL);
    reap(pid, &status);
  }
  g_pid = -1;
  begin(&m, pid);
  if (pending > 0) {
    put(&m, "wrote ");
    put_uint(&m, (unsigned long)pending);
    put(&m,
        " bytes before any client connected: a warm program must wait for its input; the "
        "output is discarded and the program ended");
  } else if (killed) {
    put(&m, "closed its stdout");
    put(&m, when);
    put(&m, "; ended");
  } else {
    put_status(&m, status);
    put(&m, when);
  }
  say(&m);
  return 1;
}

static void on_program_event(int sig) {
  (void)sig;
  int saved_errno = errno;
  if (g_state == WAITING && program_misbehaved(" while waiting for a connection; replacing it")) {
    g_state = LOST;
    corral_worker_leave_from_signal(g_w, CORRAL_WARM_LOST_EXIT);
  }
  errno = saved_errno;
}

/* ---- start-up ------------------------------------------------------------ */

static long ms_since(const struct timespec* t0) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (long)(t.tv_sec - t0->tv_sec) * 1000 + (t.tv_nsec - t0->tv_nsec) / 1000000;
}

enum wait_kind { WAIT_OTHER, WAIT_READ_STDIN, WAIT_MANY };

/* Where one thread is blocked, from /proc/PID[/task/TID]/syscall: "NR ARG0 ARG1 ...",
 * "running", or "-1 ...". Sets *unreadable when the file cannot be read at all. */
static enum wait_kind thread_wait(const char* path, int* unreadable) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    *unreadable = 1;
    return WAIT_OTHER;
  }
  char buf[128];
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) {
    *unreadable = 1;
    return WAIT_OTHER;
  }
  buf[n] = '\0';
  char* end = NULL;
  long nr = strtol(buf, &end, 10);
  if (end == buf) return WAIT_OTHER;
  unsigned long long arg0 = strtoull(end, NULL, 16);
  switch (nr) {
    case SYS_read:
    case SYS_readv:
    case SYS_pread64:
    case SYS_recvfrom:
    case SYS_recvmsg: return arg0 == 0 ? WAIT_READ_STDIN : WAIT_OTHER;
#ifdef SYS_poll
    case SYS_poll:
#endif
#ifdef SYS_select
    case SYS_select:
#endif
#ifdef SYS_epoll_wait
    case SYS_epoll_wait:
#endif
    case SYS_ppoll:
    case SYS_pselect6:
    case SYS_epoll_pwait: return WAIT_MANY;
    default: return WAIT_OTHER;
  }
}

/* At most this many threads are looked at (a JVM has dozens). */
#define READY_MAX_THREADS 256

/* Nonzero when the program has done its start-up: its main thread is blocked in a read
 * of fd 0 or in a wait for several fds (poll, select, epoll), or any other thread is
 * blocked reading fd 0 (a program that reads its input in a thread while the main one
 * joins it, as JVMs and threaded servers do). A wait for several fds counts on the main
 * thread only: helper threads (timers, a JIT) idle in them from the start. */
static int blocked_reading(pid_t pid, int* unreadable) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/syscall", (int)pid);
  if (thread_wait(path, unreadable) != WAIT_OTHER) return 1;
  if (*unreadable) return 0;
  snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
  DIR* dir = opendir(path);
  if (dir == NULL) return 0;
  int ready = 0;
  int looked = 0;
  struct dirent* e;
  while (!ready && looked < READY_MAX_THREADS && (e = readdir(dir)) != NULL) {
    if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
    long tid = strtol(e->d_name, NULL, 10);
    if (tid == (long)pid) continue;
    ++looked;
    int gone = 0; /* a thread that ended meanwhile says nothing */
    snprintf(path, sizeof path, "/proc/%d/task/%ld/syscall", (int)pid, tid);
    ready = thread_wait(path, &gone) == WAIT_READ_STDIN;
  }
  closedir(dir);
  return ready;
}

int warm_start(corral_worker* w, const char* job, const char* program, char** argv, char** envp,
               int report_fd, enum warm_header header) {
  g_w = w;
  g_job = job;
  g_header = header;
  int in[2];
  int out[2];
  if (pipe2(in, O_CLOEXEC) != 0) return -errno;
  if (pipe2(out, O_CLOEXEC) != 0) {
    int e = errno;
    close(in[0]);
    close(in[1]);
    return -e;
  }
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) {
    int e = errno;
    close(in[0]);
    close(in[1]);
    close(out[0]);
    close(out[1]);
    return -e;
  }
  if (pid == 0) {
    /* The program: stdin and stdout on the pipes, stderr the acceptor's (the job's
     * log), nothing else of ours (every fd from 3 up, the report pipe included, is
     * closed at exec). It dies with the acceptor, whatever ends it. */
    struct corral_spawn_report rep = {CORRAL_SPAWN_PDEATHSIG, 0};
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent) {
      rep.err = errno != 0 ? errno : ESRCH;
    } else if (dup2(in[0], 0) < 0 || dup2(out[1], 1) < 0) {
      rep.step = CORRAL_SPAWN_DUP;
      rep.err = errno;
    } else {
      syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC);
      sigset_t none;
      sigemptyset(&none);
      sigprocmask(SIG_SETMASK, &none, NULL);
      execve(program, argv, envp);
      rep.step = CORRAL_SPAWN_EXEC;
      rep.err = errno;
    }
    ssize_t n = write(report_fd, &rep, sizeof rep);
    (void)n;
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  g_in_w = in[1];
  g_out_r = out[0];
  g_pid = pid;

  /* Until it is ready the slot says STARTING: a program that fails here is a failed
   * start for the supervisor, with its usual backoff. */
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  int unreadable = 0;
  int interval_ms = 1;
  for (;;) {
    long elapsed = ms_since(&t0);
    /* 1, 2, 4, 8, then every 8 ms: a program of 35 ms is looked at 8 times, not 35. */
    struct pollfd p = {.fd = g_out_r, .events = POLLIN, .revents = 0};
    int n = poll(&p, 1, interval_ms);
    if (interval_ms < 8) interval_ms *= 2;
    if (n < 0 && errno != EINTR) break;
    if (program_misbehaved(" while starting (before it waited for a connection)"))
      exit(CORRAL_WARM_LOST_EXIT);
    if (corral_worker_stopping(w)) {
      warm_abandon();
      exit(0);
    }
    if (unreadable || elapsed >= READY_CAP_MS || blocked_reading(pid, &unreadable)) break;
  }

  /* Waiting: an exit (SIGCHLD) or a write (SIGIO, from the pipe's O_ASYNC) makes the
   * acceptor leave. The handler is armed before the look that closes the race. */
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_program_event;
  sigfillset(&sa.sa_mask);
  sa.sa_flags = SA_NOCLDSTOP; /* no SA_RESTART: the accept cycle sees EINTR */
  sigaction(SIGCHLD, &sa, NULL);
  sigaction(SIGIO, &sa, NULL);
  fcntl(g_out_r, F_SETOWN, (int)getpid());
  fcntl(g_out_r, F_SETFL, O_ASYNC | O_NONBLOCK);
  sigset_t events;
  sigemptyset(&events);
  sigaddset(&events, SIGCHLD);
  sigaddset(&events, SIGIO);
  sigprocmask(SIG_BLOCK, &events, NULL);
  g_state = WAITING;
  on_program_event(0);
  /* Unblocked whatever mask the acceptor inherited. */
  sigprocmask(SIG_UNBLOCK, &events, NULL);
  return 0;
}

int warm_lost(void) {
  return g_state == LOST;
}

static void close_ends(void) {
  if (g_in_w >= 0) close(g_in_w);
  if (g_out_r >= 0) close(g_out_r);
  g_in_w = -1;
  g_out_r = -1;
}

void warm_abandon(void) {
  if (g_state != LOST) g_state = JOINED;
  pid_t pid = g_pid;
  if (pid > 0) {
    int status = 0;
    kill(pid, SIGKILL);
    reap(pid, &status);
    g_pid = -1;
  }
  close_ends();
}

/* ---- the join -------------------------------------------------------------- */

/* Host and port (IPv4-mapped IPv6 as IPv4); the family written, or 0 (unix). */
static int host_port(const struct sockaddr* sa, socklen_t len, char host[INET6_ADDRSTRLEN],
                     unsigned* port) {
  if (sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
    const struct sockaddr_in* sin = (const struct sockaddr_in*)sa;
    inet_ntop(AF_INET, &sin->sin_addr, host, INET6_ADDRSTRLEN);
    *port = ntohs(sin->sin_port);
    return AF_INET;
  }
  if (sa->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
    const struct sockaddr_in6* sin6 = (const struct sockaddr_in6*)sa;
    *port = ntohs(sin6->sin6_port);
    if (IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr)) {
      inet_ntop(AF_INET, &sin6->sin6_addr.s6_addr[12], host, INET6_ADDRSTRLEN);
      return AF_INET;
    }
    inet_ntop(AF_INET6, &sin6->sin6_addr, host, INET6_ADDRSTRLEN);
    return AF_INET6;
  }
  return 0;
}

/* The PROXY protocol v1 line (haproxy's proxy-protocol.txt, section 2.1). */
static size_t proxy_line(char* out, size_t cap, const struct sockaddr* peer, socklen_t peer_len,
                         const struct sockaddr* local, socklen_t local_len) {
  char src[INET6_ADDRSTRLEN];
  char dst[INET6_ADDRSTRLEN];
  unsigned sport = 0;
  unsigned dport = 0;
  int fs = host_port(peer, peer_len, src, &sport);
  int fd = host_port(local, local_len, dst, &dport);
  int n;
  if (fs != 0 && fs == fd) {
    n = snprintf(out, cap, "PROXY %s %s %s %u %u\r\n", fs == AF_INET ? "TCP4" : "TCP6", src, dst,
                 sport, dport);
  } else {
    n = snprintf(out, cap, "PROXY UNKNOWN\r\n");
  }
  return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

static void set_nonblocking(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl >= 0) fcntl(fd, F_SETFL, (fl | O_NONBLOCK) & ~O_ASYNC);
}

/* Both directions until both are done. Client to program: EOF closes the program's
 * stdin. Program to client: EOF (the program closed its stdout or exited) is a
 * half-close, shutdown(SHUT_WR). A client that is gone (reset, an error writing to it)
 * ends both, so the program gets EOF and EPIPE. */
static void relay(int conn) {
  int a_open = 1; /* client -> program */
  int b_open = 1; /* program -> client */
  int a_full = 0; /* the program's stdin pipe is full: wait for POLLOUT on it */
  int b_full = 0; /* the socket's send buffer is full: wait for POLLOUT on it */
  set_nonblocking(conn);
  set_nonblocking(g_in_w);
  set_nonblocking(g_out_r);
  const unsigned flags = SPLICE_F_MOVE | SPLICE_F_NONBLOCK;
  while (a_open || b_open) {
    /* An fd is in the set only while we wait for something on it: POLLHUP and POLLERR
     * come whatever the events, and one we could not act on yet would spin the loop
     * (the program's stdout closed while the client is slow to read, the client gone
     * while the program's stdin is full). */
    struct pollfd p[3];
    p[0].events = (short)((a_open && !a_full ? POLLIN : 0) | (b_open && b_full ? POLLOUT : 0));
    p[0].fd = p[0].events != 0 || (!a_open && b_open) ? conn : -1;
    p[1].fd = a_open ? g_in_w : -1;
    p[1].events = a_full ? POLLOUT : 0;
    p[2].fd = b_open && !b_full ? g_out_r : -1;
    p[2].events = POLLIN;
    for (int i = 0; i < 3; ++i) p[i].revents = 0;
    if (poll(p, 3, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    int client_gone = 0;
    if (a_open && (p[1].revents & POLLERR)) { /* the program closed its stdin */
      close(g_in_w);
      g_in_w = -1;
      a_open = 0;
    } else if (a_open && (p[1].revents & POLLOUT)) {
      a_full = 0;
    }
    if (a_open && !a_full && (p[0].revents & (POLLIN | POLLHUP | POLLERR))) {
      ssize_t n = splice(conn, NULL, g_in_w, NULL, RELAY_CHUNK, flags);
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        if (n < 0 && errno != EPIPE) client_gone = 1;
        close(g_in_w);
        g_in_w = -1;
        a_open = 0;
      } else if (n < 0 && errno == EAGAIN) {
        a_full = 1;
      }
    }
    if (b_open && b_full && (p[0].revents & (POLLOUT | POLLERR | POLLHUP))) b_full = 0;
    if (b_open && !b_full && (p[2].revents & (POLLIN | POLLHUP | POLLERR))) {
      ssize_t n = splice(g_out_r, NULL, conn, NULL, RELAY_CHUNK, flags);
      if (n == 0) {
        shutdown(conn, SHUT_WR);
        close(g_out_r);
        g_out_r = -1;
        b_open = 0;
      } else if (n < 0 && errno == EAGAIN) {
        b_full = 1;
      } else if (n < 0 && errno != EINTR) {
        client_gone = 1;
      }
    }
    if (!a_open && (p[0].revents & (POLLERR | POLLHUP))) client_gone = 1;
    if (client_gone) {
      close_ends();
      a_open = 0;
      b_open = 0;
    }
  }
  close_ends();
  close(conn);
}

int warm_serve(int conn, const struct sockaddr* peer, socklen_t peer_len,
               const struct sockaddr* local, socklen_t local_len) {
  /* From here the handler leaves the program alone; a last look decides whether it can
   * still take this connection. */
  g_state = JOINED;
  if (program_misbehaved(" while waiting for a connection; this connection is served cold")) {
    close_ends();
    return -1;
  }
  struct sigaction ign;
  memset(&ign, 0, sizeof ign);
  ign.sa_handler = SIG_IGN;
  sigaction(SIGPIPE, &ign, NULL); /* splice to a closed socket or pipe says EPIPE */
  sigaction(SIGIO, &ign, NULL);
  if (g_header == WARM_HEADER_PROXY_V1) {
    char line[128];
    size_t len = proxy_line(line, sizeof line, peer, peer_len, local, local_len);
    /* A short line into an empty pipe: written whole, or the program is gone. */
    if (len > 0 && write(g_in_w, line, len) != (ssize_t)len) {
      close(g_in_w);
      g_in_w = -1;
    }
  }
  relay(conn);
  int status = 0;
  pid_t pid = g_pid;
  if (pid > 0) reap(pid, &status);
  g_pid = -1;
  /* The program's own status is the acceptor's, as if the program had been exec'd. */
  if (WIFSIGNALED(status)) {
    int sig = WTERMSIG(status);
    struct rlimit no_core = {0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigaction(sig, &dfl, NULL);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, sig);
    sigprocmask(SIG_UNBLOCK, &set, NULL);
    raise(sig);
    _exit(128 + sig);
  }
  _exit(WIFEXITED(status) ? WEXITSTATUS(status) : 1);
}
