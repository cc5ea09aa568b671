/* bclient: the small load clients of corral's benchmarks, on 127.0.0.1 only.
 * Every mode is bounded in count and in time, and prints key=value lines.
 *
 *   bclient seq   -p PORT[,PORT...] -n N [-g GAP_US] [-c THREADS] [-t TIMEOUT_MS]
 *                 [-d SECONDS] [-o FILE]
 *       N short connections (GET, "Connection: close", read to EOF), THREADS at a
 *       time (default 1: one at a time), sleeping GAP_US after each; with several
 *       ports, connections alternate between them. Latency: connect to EOF.
 *       -d: no new connection is started after SECONDS (a time bound besides N).
 *       -o: one line per connection, "START_MS LATENCY_MS" (start from the run's
 *       start; failed connections have the latency -1).
 *   -u PATH (seq, paced): the request's path (default "/").
 *   bclient paced -p PORT -r RATE -d SECONDS [-t TIMEOUT_MS] [-o FILE]
 *       open loop: a connection attempt every 1/RATE s, whatever the previous ones
 *       do; latency from the scheduled start to EOF (so client-side lateness counts
 *       against the server, never for it); a connection still open after
 *       TIMEOUT_MS is closed and enters the percentiles at that time. Also fb_*:
 *       from the scheduled start to the answer's first byte (answered connections).
 *   bclient hold  -p PORT -n N -H HOLD_MS [-e] [-t TIMEOUT_MS] [-o FILE]
 *       a burst: N connections opened at once, each sends one keep-alive request
 *       (-e: the line "hello\n", for an echo server), waits for the whole answer,
 *       then holds the connection open HOLD_MS before closing. Wait: from the burst
 *       start to the answer.
 *   bclient osc   -p PORT -d SECONDS -a HIGH -b LOW -P HALF_MS [-e]
 *       oscillating load: bursts of HIGH then LOW held connections, each phase
 *       HALF_MS long (its connections are closed at the end of the phase).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

static char kReqClose[1200] = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
static const char kReqKeep[] = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
static const char kLine[] = "hello\n";

static int ports[16], nports = 0;
static long timeout_ms = 10000;

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int cmp_d(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return x < y ? -1 : x > y;
}

static double pct(double* v, size_t n, double p) {
  if (!n) return NAN;
  size_t i = (size_t)ceil(p / 100.0 * (double)n);
  if (i > 0) i--;
  if (i >= n) i = n - 1;
  return v[i];
}

static void print_lat(const char* prefix, double* v, size_t n) {
  qsort(v, n, sizeof *v, cmp_d);
  printf("%s_n=%zu\n", prefix, n);
  if (!n) return;
  double sum = 0;
  for (size_t i = 0; i < n; i++) sum += v[i];
  printf("%s_p50_ms=%.3f\n%s_p90_ms=%.3f\n%s_p99_ms=%.3f\n%s_max_ms=%.3f\n%s_mean_ms=%.3f\n",
         prefix, pct(v, n, 50) * 1e3, prefix, pct(v, n, 90) * 1e3, prefix, pct(v, n, 99) * 1e3,
         prefix, v[n - 1] * 1e3, prefix, sum / (double)n * 1e3);
  printf("%s_p999_ms=%.3f\n", prefix, pct(v, n, 99.9) * 1e3);
}

static void dump(const char* file, double* v, size_t n) {
  if (!file) return;
  FILE* f = fopen(file, "w");
  if (!f) {
    perror(file);
    return;
  }
  for (size_t i = 0; i < n; i++) fprintf(f, "%.6f\n", v[i] * 1e3);
  fclose(f);
}

static struct sockaddr_in addr_of(int port) {
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return sa;
}

/* ---- seq ------------------------------------------------------------------ */

struct seq_arg {
  long n, gap_us, first;
  double t_run, deadline; /* the run's start; no new connection after deadline (0: none) */
  double* lat;
  double *t_start, *t_lat; /* per attempt, for -o */
  long done, errors, tried;
};

static int one_connection(int port) {
  struct sockaddr_in sa = addr_of(port);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  int rc = -1;
  if (connect(fd, (struct sockaddr*)&sa, sizeof sa) == 0 &&
      send(fd, kReqClose, strlen(kReqClose), MSG_NOSIGNAL) == (ssize_t)strlen(kReqClose)) {
    char buf[4096];
    ssize_t k, total = 0;
    while ((k = recv(fd, buf, sizeof buf, 0)) > 0) total += k;
    if (k == 0 && total > 0 && memcmp(buf, "HTTP/1.", 7) == 0) rc = 0;
  }
  close(fd);
  return rc;
}

static void* seq_thread(void* p) {
  struct seq_arg* a = p;
  for (long i = 0; i < a->n; i++) {
    double t0 = now_s();
    if (a->deadline > 0 && t0 >= a->deadline) break;
    int port = ports[(a->first + i) % nports];
    int ok = one_connection(port) == 0;
    double t1 = now_s();
    if (ok)
      a->lat[a->done++] = t1 - t0;
    else
      a->errors++;
    a->t_start[a->tried] = t0 - a->t_run;
    a->t_lat[a->tried] = ok ? t1 - t0 : -1e-3;
    a->tried++;
    if (a->gap_us > 0) usleep((useconds_t)a->gap_us);
  }
  return NULL;
}

static int run_seq(long n, long gap_us, int threads, double secs, const char* out) {
  if (threads < 1) threads = 1;
  pthread_t th[256];
  struct seq_arg args[256];
  if (threads > 256) threads = 256;
  double t0 = now_s();
  for (int i = 0; i < threads; i++) {
    long share = n / threads + (i < n % threads);
    args[i] = (struct seq_arg){.n = share,
                               .gap_us = gap_us,
                               .first = i,
                               .t_run = t0,
                               .deadline = secs > 0 ? t0 + secs : 0};
    args[i].lat = calloc((size_t)share + 1, sizeof(double));
    args[i].t_start = calloc((size_t)share + 1, sizeof(double));
    args[i].t_lat = calloc((size_t)share + 1, sizeof(double));
    pthread_create(&th[i], NULL, seq_thread, &args[i]);
  }
  double* all = calloc((size_t)n + 1, sizeof(double));
  size_t m = 0;
  long errors = 0;
  for (int i = 0; i < threads; i++) {
    pthread_join(th[i], NULL);
    memcpy(all + m, args[i].lat, (size_t)args[i].done * sizeof(double));
    m += (size_t)args[i].done;
    errors += args[i].errors;
  }
  double el = now_s() - t0;
  if (out) {
    FILE* f = fopen(out, "w");
    if (f) {
      for (int i = 0; i < threads; i++)
        for (long j = 0; j < args[i].tried; j++)
          fprintf(f, "%.3f %.3f\n", args[i].t_start[j] * 1e3, args[i].t_lat[j] * 1e3);
      fclose(f);
    } else {
      perror(out);
    }
  }
  printf("ok=%zu\nerrors=%ld\nelapsed_s=%.3f\nrate=%.1f\n", m, errors, el, (double)m / el);
  print_lat("lat", all, m);
  return 0;
}

/* ---- event-driven connections (paced, hold, osc) --------------------------- */

enum { C_CONNECTING, C_READING, C_HOLDING, C_DONE };

struct conn {
  int fd, state;
  double start;  /* scheduled start (paced) or burst start (hold) */
  double served; /* complete answer received */
  double first;  /* first byte of the answer received (0: none yet) */
  size_t have;
  char buf[1024];
};

static int start_conn(int ep, struct conn* c, int port) {
  struct sockaddr_in sa = addr_of(port);
  c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  c->have = 0;
  c->first = 0;
  if (c->fd < 0) return -1;
  int r = connect(c->fd, (struct sockaddr*)&sa, sizeof sa);
  if (r < 0 && errno != EINPROGRESS) {
    close(c->fd);
    c->fd = -1;
    return -1;
  }
  c->state = C_CONNECTING;
  struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
  epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
  return 0;
}

static void finish(struct conn* c, int state) {
  if (c->fd >= 0) close(c->fd);
  c->fd = -1;
  c->state = state;
}

/* Is the answer complete? close_mode: the server closes (read to EOF); else an
 * HTTP response with Content-Length, or (echo) a line. */
static int answer_complete(struct conn* c, int echo) {
  if (echo) return c->have > 0 && memchr(c->buf, '\n', c->have) != NULL;
  char* end = memmem(c->buf, c->have, "\r\n\r\n", 4);
  if (!end) return 0;
  size_t head = (size_t)(end - c->buf) + 4;
  long clen = 0;
  for (char* p = c->buf; p && p < end;) {
    char* nl = memchr(p, '\n', (size_t)(end - p));
    if (!nl) break;
    if (strncasecmp(p, "content-length:", 15) == 0) clen = atol(p + 15);
    p = nl + 1;
  }
  return c->have >= head + (size_t)clen;
}

/* Handles one epoll event. Returns 1 when the connection just got its answer
 * (close_mode: EOF after a response), -1 on error, 0 otherwise. */
static int on_event(int ep, struct conn* c, uint32_t events, int close_mode, int echo) {
  if (c->state == C_CONNECTING) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err || (events & (EPOLLERR | EPOLLHUP)) == (EPOLLERR | EPOLLHUP)) {
      finish(c, C_DONE);
      return -1;
    }
    const char* req = echo ? kLine : close_mode ? kReqClose : kReqKeep;
    size_t rlen = strlen(req);
    if (send(c->fd, req, rlen, MSG_NOSIGNAL) != (ssize_t)rlen) {
      finish(c, C_DONE);
      return -1;
    }
    c->state = C_READING;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    return 0;
  }
  if (c->state == C_READING) {
    for (;;) {
      char tmp[4096];
      char* dst = c->have < sizeof c->buf ? c->buf + c->have : tmp;
      size_t room = c->have < sizeof c->buf ? sizeof c->buf - c->have : sizeof tmp;
      ssize_t k = recv(c->fd, dst, room, 0);
      if (k > 0) {
        if (c->first == 0) c->first = now_s();
        if (dst != tmp) c->have += (size_t)k;
        continue;
      }
      if (k == 0) {
        int ok = c->have > 0 && (echo || memcmp(c->buf, "HTTP/1.", 7) == 0) &&
                 (close_mode || answer_complete(c, echo));
        finish(c, C_DONE);
        return ok ? 1 : -1;
      }
      if (errno == EAGAIN) break;
      if (errno == EINTR) continue;
      finish(c, C_DONE);
      return -1;
    }
    if (!close_mode && answer_complete(c, echo)) {
      c->state = C_HOLDING;
      struct epoll_event ev = {.events = EPOLLRDHUP, .data.ptr = c};
      epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
      return 1;
    }
    return 0;
  }
  if (c->state == C_HOLDING && (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))) {
    /* the server closed a held connection early: keep the count, free the fd */
    finish(c, C_DONE);
  }
  return 0;
}

static void set_timer(int tfd, double at) {
  struct itimerspec its = {0};
  its.it_value.tv_sec = (time_t)at;
  its.it_value.tv_nsec = (long)((at - (double)(time_t)at) * 1e9);
  if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0) its.it_value.tv_nsec = 1;
  timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
}

static int run_paced(double rate, double secs, const char* out) {
  long n = (long)(rate * secs);
  if (n < 1) n = 1;
  struct conn* cs = calloc((size_t)n, sizeof *cs);
  double* lat = calloc((size_t)n, sizeof *lat);
  double* fb = calloc((size_t)n, sizeof *fb);
  int ep = epoll_create1(EPOLL_CLOEXEC);
  int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  struct epoll_event tev = {.events = EPOLLIN, .data.ptr = NULL};
  epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &tev);
  double t0 = now_s() + 0.05, tmo = (double)timeout_ms / 1e3;
  long next = 0, finished = 0, errors = 0, timeouts = 0, late = 0;
  size_t m = 0, mf = 0;
  set_timer(tfd, t0);
  while (finished < n) {
    struct epoll_event evs[64];
    int k = epoll_wait(ep, evs, 64, 100);
    double now = now_s();
    for (int i = 0; i < k; i++) {
      struct conn* c = evs[i].data.ptr;
      if (!c) {
        uint64_t x;
        (void)!read(tfd, &x, sizeof x);
        continue;
      }
      if (c->state == C_DONE) continue;
      int r = on_event(ep, c, evs[i].events, 1, 0);
      if (r != 0) finished++;
      if (r == 1) lat[m++] = now - c->start;
      if (r == 1 && c->first > 0) fb[mf++] = c->first - c->start;
      if (r < 0) errors++;
    }
    while (next < n && t0 + (double)next / rate <= now) {
      struct conn* c = &cs[next];
      c->start = t0 + (double)next / rate;
      if (now - c->start > 0.002) late++;
      if (start_conn(ep, c, ports[0]) < 0) {
        c->state = C_DONE;
        finished++;
        errors++;
      }
      next++;
    }
    if (next < n) set_timer(tfd, t0 + (double)next / rate);
    for (long i = 0; i < next; i++) {
      if (cs[i].state != C_DONE && now - cs[i].start > tmo) {
        /* censored: counted in the percentiles at the timeout, so that a server
         * that drops connections cannot look faster for it */
        lat[m++] = now - cs[i].start;
        finish(&cs[i], C_DONE);
        finished++;
        timeouts++;
      }
    }
    if (now - t0 > secs + tmo + 5) break; /* hard bound */
  }
  printf("attempted=%ld\nok=%zu\nerrors=%ld\ntimeouts=%ld\nlate_starts=%ld\nrate=%.1f\n", n,
         m - (size_t)timeouts, errors, timeouts, late, rate);
  dump(out, lat, m);
  print_lat("lat", lat, m);
  print_lat("fb", fb, mf);
  return 0;
}

/* One burst of n held connections; they close at close_at (absolute, if > 0) or
 * hold_s after their answer. Returns the number served; waits go to lat. */
static size_t burst(int n, double hold_s, double close_at, int echo, double* lat, long* errors,
                    double* all_served_s) {
  struct conn* cs = calloc((size_t)n, sizeof *cs);
  int ep = epoll_create1(EPOLL_CLOEXEC);
  double t0 = now_s(), tmo = (double)timeout_ms / 1e3;
  size_t m = 0;
  long open = 0;
  for (int i = 0; i < n; i++) {
    cs[i].start = t0;
    if (start_conn(ep, &cs[i], ports[0]) < 0) {
      cs[i].state = C_DONE;
      (*errors)++;
    } else {
      open++;
    }
  }
  double last_served = t0;
  while (open > 0) {
    struct epoll_event evs[64];
    int k = epoll_wait(ep, evs, 64, 5);
    double now = now_s();
    for (int i = 0; i < k; i++) {
      struct conn* c = evs[i].data.ptr;
      if (c->state == C_DONE) continue;
      int r = on_event(ep, c, evs[i].events, 0, echo);
      if (r == 1) {
        c->served = now;
        lat[m++] = now - t0;
        last_served = now;
      } else if (r < 0) {
        (*errors)++;
      }
      if (c->state == C_DONE) open--;
    }
    for (int i = 0; i < n; i++) {
      struct conn* c = &cs[i];
      if (c->state == C_HOLDING) {
        double until = close_at > 0 ? close_at : c->served + hold_s;
        if (now >= until) {
          finish(c, C_DONE);
          open--;
        }
      } else if (c->state != C_DONE && now - t0 > tmo) {
        finish(c, C_DONE);
        open--;
        (*errors)++;
      } else if (c->state == C_DONE && c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
      }
    }
  }
  /* connections the server closed while held were counted in on_event */
  close(ep);
  free(cs);
  *all_served_s = last_served - t0;
  return m;
}

static int run_hold(int n, long hold_ms, int echo, const char* out) {
  double* lat = calloc((size_t)n + 1, sizeof *lat);
  long errors = 0;
  double all;
  size_t m = burst(n, (double)hold_ms / 1e3, 0, echo, lat, &errors, &all);
  printf("clients=%d\nserved=%zu\nerrors=%ld\nall_served_ms=%.3f\n", n, m, errors,
         m == (size_t)n ? all * 1e3 : NAN);
  dump(out, lat, m);
  print_lat("wait", lat, m);
  return 0;
}

static int run_osc(double secs, int high, int low, long half_ms, int echo) {
  double t_end = now_s() + secs;
  double* lat = calloc((size_t)(high > low ? high : low) + 1, sizeof *lat);
  int phase = 0;
  long total_err = 0;
  double worst = 0;
  while (now_s() + 0.1 < t_end) {
    int n = phase % 2 == 0 ? high : low;
    double close_at = now_s() + (double)half_ms / 1e3;
    if (close_at > t_end) close_at = t_end;
    long errors = 0;
    double all;
    size_t m = burst(n, 0, close_at, echo, lat, &errors, &all);
    if (all > worst) worst = all;
    total_err += errors;
    printf("phase%d_clients=%d\nphase%d_served=%zu\nphase%d_all_served_ms=%.3f\n", phase, n, phase,
           m, phase, all * 1e3);
    phase++;
  }
  printf("phases=%d\nerrors=%ld\nworst_all_served_ms=%.3f\n", phase, total_err, worst * 1e3);
  return 0;
}

int main(int argc, char** argv) {
  if (argc < 2) goto usage;
  const char* mode = argv[1];
  long n = 0, gap = 0, hold = 0, half = 1000;
  int threads = 1, echo = 0, high = 0, low = 0;
  double rate = 0, secs = 0;
  const char* out = NULL;
  int opt;
  optind = 2;
  while ((opt = getopt(argc, argv, "p:n:g:c:t:r:d:o:H:ea:b:P:u:")) != -1) {
    switch (opt) {
      case 'p':
        for (char* s = strtok(optarg, ","); s && nports < 16; s = strtok(NULL, ","))
          ports[nports++] = atoi(s);
        break;
      case 'n': n = atol(optarg); break;
      case 'g': gap = atol(optarg); break;
      case 'c': threads = atoi(optarg); break;
      case 't': timeout_ms = atol(optarg); break;
      case 'r': rate = atof(optarg); break;
      case 'd': secs = atof(optarg); break;
      case 'o': out = optarg; break;
      case 'H': hold = atol(optarg); break;
      case 'e': echo = 1; break;
      case 'a': high = atoi(optarg); break;
      case 'b': low = atoi(optarg); break;
      case 'P': half = atol(optarg); break;
      case 'u':
        if (optarg[0] != '/' || strlen(optarg) > 1024 || strpbrk(optarg, " \r\n")) goto usage;
        snprintf(kReqClose, sizeof kReqClose,
                 "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", optarg);
        break;
      default: goto usage;
    }
  }
  signal(SIGPIPE, SIG_IGN);
  if (nports == 0) goto usage;
  setvbuf(stdout, NULL, _IOLBF, 0);
  /* bounds: loopback only (addr_of), and counts/durations capped */
  if (n > 1000000 || secs > 600 || hold > 600000 || rate > 100000) goto usage;
  if (!strcmp(mode, "seq") && n > 0) return run_seq(n, gap, threads, secs, out);
  if (!strcmp(mode, "paced") && rate > 0 && secs > 0) return run_paced(rate, secs, out);
  if (!strcmp(mode, "hold") && n > 0) return run_hold((int)n, hold, echo, out);
  if (!strcmp(mode, "osc") && secs > 0 && high > 0) return run_osc(secs, high, low, half, echo);
usage:
  fprintf(stderr, "usage: see the comment at the top of bench/clients/bclient.c\n");
  return 2;
}
