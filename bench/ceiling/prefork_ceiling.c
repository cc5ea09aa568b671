/* prefork_ceiling: the least a prefork HTTP server can do, as the ceiling that
 * corral + hello-http is measured against. No supervisor logic, no scoreboard, no
 * accept mutex: the parent binds one blocking socket, forks N children that all
 * block in accept() on it (the kernel wakes one per connection), and waits.
 *
 * Each child answers every request with the same bytes as examples/hello_http.cpp
 * (status line, Server, Content-Type, Content-Length: 6, Date, "hello\n"), keeps
 * the connection alive for HTTP/1.1 unless the client sends "Connection: close"
 * (HTTP/1.0: only with "Connection: keep-alive"), answers pipelined requests in
 * one write, and closes an idle keep-alive connection after 5 s.
 *
 *   prefork_ceiling -l 127.0.0.1:PORT [-n CHILDREN] [-e PROGRAM]
 *
 * With -e, each child execs PROGRAM instead (the listener on fd 3, LISTEN_FDS=1 and
 * LISTEN_PID set, as systemd does): the floor of a pool of real workers, fork and
 * exec and nothing else, for the start-up figure.
 *
 * SIGTERM/SIGINT to the parent: it stops the children and exits. Each child
 * prints "child PID served N" on stderr when it stops (per-child counters, as in
 * Stevens, UNP vol. 1, Table 30.2), which the fairness scenario reads.
 * Loopback benchmarks only; not a web server.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAXCHILD 4096
#define INSIZE 16384
#define OUTSIZE 32768

static volatile sig_atomic_t stop;
static unsigned long served;

static void on_term(int sig) {
  (void)sig;
  stop = 1;
}

static void report(void) {
  char buf[96];
  int n = snprintf(buf, sizeof buf, "child %d served %lu\n", (int)getpid(), served);
  if (n > 0) (void)!write(2, buf, (size_t)n);
}

static const char k200[] =
    "HTTP/1.1 200 OK\r\nServer: corral-hello\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n";
static const char kClose[] = "Connection: close\r\n";
static const char kKeep[] = "Connection: keep-alive\r\n";
static const char kBody[] = "\r\nhello\n";

static char date_line[64];
static size_t date_len;
static time_t date_sec = -1;

static void date_get(void) {
  struct timespec now;
  clock_gettime(CLOCK_REALTIME_COARSE, &now);
  if (now.tv_sec != date_sec) {
    struct tm utc;
    date_sec = now.tv_sec;
    gmtime_r(&now.tv_sec, &utc);
    date_len = strftime(date_line, sizeof date_line, "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &utc);
  }
}

/* Finds the end of a request head in [p, p+n): returns its length or 0. */
static size_t head_end(const char* p, size_t n) {
  for (size_t i = 0; i + 4 <= n; i++) {
    if (p[i] == '\r' && p[i + 1] == '\n' && p[i + 2] == '\r' && p[i + 3] == '\n') return i + 4;
  }
  return 0;
}

/* keep-alive as the client wants it */
static int wants_keepalive(const char* p, size_t n) {
  const char* eol = memchr(p, '\n', n);
  int http10 = eol && eol - p >= 9 && memcmp(eol - 9, "HTTP/1.0", 8) == 0;
  int keep = !http10;
  for (const char* line = eol ? eol + 1 : p + n; line < p + n;) {
    const char* nl = memchr(line, '\n', (size_t)(p + n - line));
    if (!nl) break;
    if ((size_t)(nl - line) > 11 && strncasecmp(line, "connection:", 11) == 0) {
      const char* v = line + 11;
      size_t len = (size_t)(nl - v);
      for (size_t i = 0; i + 5 <= len; i++) {
        if (strncasecmp(v + i, "close", 5) == 0) keep = 0;
        if (i + 10 <= len && strncasecmp(v + i, "keep-alive", 10) == 0) keep = 1;
      }
    }
    line = nl + 1;
  }
  return keep;
}

static void append(char* out, size_t* len, const char* s, size_t n) {
  memcpy(out + *len, s, n);
  *len += n;
}

static int send_all(int fd, const char* b, size_t n) {
  while (n > 0) {
    ssize_t k = send(fd, b, n, MSG_NOSIGNAL);
    if (k < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    b += k;
    n -= (size_t)k;
  }
  return 0;
}

static void serve(int fd) {
  static char in[INSIZE], out[OUTSIZE];
  size_t have = 0;
  int one = 1;
  struct timeval idle = {5, 0};
  (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  (void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &idle, sizeof idle);
  for (;;) {
    size_t pos = 0, olen = 0;
    int close_after = 0;
    for (;;) {
      size_t h = head_end(in + pos, have - pos);
      if (!h) break;
      int keep = wants_keepalive(in + pos, h) && !stop;
      int http10 = 0;
      const char* eol = memchr(in + pos, '\n', h);
      if (eol && eol - (in + pos) >= 9 && memcmp(eol - 9, "HTTP/1.0", 8) == 0) http10 = 1;
      if (olen + 256 > OUTSIZE) {
        if (send_all(fd, out, olen)) return;
        olen = 0;
      }
      date_get();
      append(out, &olen, k200, sizeof k200 - 1);
      append(out, &olen, date_line, date_len);
      if (!keep)
        append(out, &olen, kClose, sizeof kClose - 1);
      else if (http10)
        append(out, &olen, kKeep, sizeof kKeep - 1);
      append(out, &olen, kBody, sizeof kBody - 1);
      served++;
      pos += h;
      if (!keep) {
        close_after = 1;
        break;
      }
    }
    if (olen && send_all(fd, out, olen)) return;
    if (close_after) return;
    if (pos) {
      memmove(in, in + pos, have - pos);
      have -= pos;
    }
    if (have == INSIZE) return;
    ssize_t n = recv(fd, in + have, INSIZE - have, 0);
    if (n <= 0) {
      if (n < 0 && errno == EINTR && !stop) continue;
      return;
    }
    have += (size_t)n;
  }
}

static void child(int lfd) {
  for (;;) {
    if (stop) break;
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      perror("accept4");
      break;
    }
    serve(fd);
    close(fd);
  }
  report();
  _exit(0);
}

static void exec_child(int lfd, const char* program) {
  if (lfd != 3 && dup2(lfd, 3) < 0) _exit(127);
  char pid[32];
  snprintf(pid, sizeof pid, "%d", (int)getpid());
  setenv("LISTEN_FDS", "1", 1);
  setenv("LISTEN_PID", pid, 1);
  signal(SIGPIPE, SIG_DFL);
  struct sigaction dfl = {.sa_handler = SIG_DFL};
  sigaction(SIGTERM, &dfl, NULL);
  sigaction(SIGINT, &dfl, NULL);
  execl(program, program, (char*)NULL);
  _exit(127);
}

int main(int argc, char** argv) {
  const char* addr = "127.0.0.1:8080";
  const char* program = NULL;
  int n = 8, opt;
  while ((opt = getopt(argc, argv, "l:n:e:")) != -1) {
    if (opt == 'l')
      addr = optarg;
    else if (opt == 'n')
      n = atoi(optarg);
    else if (opt == 'e')
      program = optarg;
    else {
      fprintf(stderr, "usage: %s -l HOST:PORT [-n CHILDREN] [-e PROGRAM]\n", argv[0]);
      return 2;
    }
  }
  if (n < 1 || n > MAXCHILD) return 2;
  char host[64];
  const char* colon = strrchr(addr, ':');
  if (!colon || (size_t)(colon - addr) >= sizeof host) return 2;
  memcpy(host, addr, (size_t)(colon - addr));
  host[colon - addr] = 0;
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
  if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) return 2;
  int lfd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(lfd, (struct sockaddr*)&sa, sizeof sa) || listen(lfd, 1024)) {
    perror(addr);
    return 1;
  }
  /* SA_RESTART off: a SIGTERM must interrupt accept() and recv(). */
  struct sigaction sa_term = {.sa_handler = on_term};
  sigaction(SIGTERM, &sa_term, NULL);
  sigaction(SIGINT, &sa_term, NULL);
  signal(SIGPIPE, SIG_IGN);
  static pid_t pids[MAXCHILD];
  for (int i = 0; i < n; i++) {
    pid_t p = fork();
    if (p == 0 && program) exec_child(lfd, program);
    if (p == 0) child(lfd);
    if (p < 0) {
      perror("fork");
      stop = 1;
      break;
    }
    pids[i] = p;
  }
  while (!stop) pause();
  for (int i = 0; i < n; i++)
    if (pids[i] > 0) kill(pids[i], SIGTERM);
  while (wait(NULL) > 0 || errno == EINTR) {
  }
  return 0;
}
