/* corral's inetd acceptor: one pre-forked process of a `mode: inetd` job.
 *
 * The supervisor starts it like a prefork worker (clone-vfork and exec, with the
 * listeners, accept mutex, scoreboard and notify pipe of the worker protocol); it waits
 * for one connection with lib/worker, then execs the legacy program on it, so that
 * only this exec lies between accept() and the program. It is a small static C
 * program, embedded in the corral binary and exec'd from a sealed memfd: no dynamic
 * loader runs on the way to the connection, and no copy of the supervisor's address
 * space is made for it.
 *
 *   corral-inetd JOB MAX_PER_SOURCE REPORT_FD PROGRAM ARGV0 [ARG...]
 *
 * The environment is the program's, plus the worker protocol's variables, which are
 * removed again before the program's exec. REPORT_FD is the supervisor's spawn-report
 * pipe (lib/spawn/report.h): a failed exec of PROGRAM is written there, and the exec
 * closes it (FD_CLOEXEC) when it succeeds. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <corral/protocol.h>
#include <corral/worker.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "spawn/report.h"
#include "warm.h"

/* Built with musl when Debian's musl-tools is there, which has no kernel headers. */
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#ifndef SYS_close_range
#define SYS_close_range 436 /* the same number on every architecture */
#endif

extern char** environ;

/* Byte range of the scoreboard header that acceptors lock (fcntl, process-owned, so
 * released if the holder dies) around the per-source count. Inside reserved bytes. */
#define PER_SOURCE_LOCK_OFFSET 1000

/* Variables that are the acceptor's, not the program's, and the connection's, which
 * are set afresh for each program. */
static const char* const kStripped[] = {
    "LISTEN_PID=",
    "LISTEN_FDS=",
    "LISTEN_FDNAMES=",
    CORRAL_ENV_SLOT "=",
    CORRAL_ENV_SCOREBOARD_FD "=",
    CORRAL_ENV_LOCK_FD "=",
    CORRAL_ENV_LOCK_KIND "=",
    CORRAL_ENV_NOTIFY_FD "=",
    CORRAL_ENV_GENERATION "=",
    "PROTO=",
    "REMOTE_ADDR=",
    "REMOTE_PORT=",
    "TCPREMOTEIP=",
    "TCPREMOTEPORT=",
    "TCPLOCALIP=",
    "TCPLOCALPORT=",
    CORRAL_ENV_INETD_WARM "=",
    "CORRAL_ACCESS=",
};
#define N_STRIPPED (sizeof kStripped / sizeof kStripped[0])

static const char* g_job = "?";

static int stripped(const char* kv) {
  for (size_t i = 0; i < N_STRIPPED; ++i) {
    if (strncmp(kv, kStripped[i], strlen(kStripped[i])) == 0) return 1;
  }
  return 0;
}

static int parse_uint(const char* s, unsigned* out) {
  if (s == NULL || *s == '\0') return -1;
  char* end = NULL;
  errno = 0;
  unsigned long v = strtoul(s, &end, 10);
  if (errno != 0 || *end != '\0' || v > 0x7fffffffUL) return -1;
  *out = (unsigned)v;
  return 0;
}

/* Host and port of an IPv4 or IPv6 address (IPv4-mapped IPv6 as IPv4, no brackets),
 * as the supervisor prints them; 0 for anything else (unix sockets). */
static int split_address(const struct sockaddr* sa, socklen_t len, char host[INET6_ADDRSTRLEN],
                         unsigned* port) {
  if (sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
    const struct sockaddr_in* sin = (const struct sockaddr_in*)sa;
    inet_ntop(AF_INET, &sin->sin_addr, host, INET6_ADDRSTRLEN);
    *port = ntohs(sin->sin_port);
    return 1;
  }
  if (sa->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
    const struct sockaddr_in6* sin6 = (const struct sockaddr_in6*)sa;
    if (IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr)) {
      inet_ntop(AF_INET, &sin6->sin6_addr.s6_addr[12], host, INET6_ADDRSTRLEN);
    } else {
      inet_ntop(AF_INET6, &sin6->sin6_addr, host, INET6_ADDRSTRLEN);
    }
    *port = ntohs(sin6->sin6_port);
    return 1;
  }
  return 0;
}

/* The peer as 16 bytes (IPv4 as IPv4-mapped IPv6) for the per-source count; 0 for
 * unix sockets (no source to count). */
static int peer_key(const struct sockaddr* sa, uint8_t out[16]) {
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in* sin = (const struct sockaddr_in*)sa;
    memset(out, 0, 10);
    out[10] = 0xff;
    out[11] = 0xff;
    memcpy(out + 12, &sin->sin_addr, 4);
    return 1;
  }
  if (sa->sa_family == AF_INET6) {
    memcpy(out, &((const struct sockaddr_in6*)sa)->sin6_addr, 16);
    return 1;
  }
  return 0;
}

static void region_lock(int fd, short type) {
  struct flock fl;
  memset(&fl, 0, sizeof fl);
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  fl.l_start = PER_SOURCE_LOCK_OFFSET;
  fl.l_len = 8;
  while (fcntl(fd, type == F_UNLCK ? F_SETLK : F_SETLKW, &fl) != 0 && errno == EINTR) {
  }
}

static struct corral_sb_slot* slot_at(void* base, size_t header_size, size_t slot_size,
                                      unsigned i) {
  return (struct corral_sb_slot*)((char*)base + header_size + (size_t)i * slot_size);
}

/* Records this acceptor's peer in its slot and counts the busy slots with the same
 * peer, under a lock so that two acceptors cannot both slip under the limit. The
 * scoreboard is mapped per connection: a reload may have resized it. On any doubt
 * (no mapping), the connection is let through. */
static int within_source_limit(int sb_fd, unsigned slot, unsigned limit, const uint8_t key[16],
                               unsigned* count) {
  struct stat st;
  *count = 0;
  if (fstat(sb_fd, &st) != 0 || st.st_size < (off_t)CORRAL_SB_HEADER_SIZE) return 1;
  size_t size = (size_t)st.st_size;
  void* base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, sb_fd, 0);
  if (base == MAP_FAILED) return 1;
  const struct corral_sb_header* h = base;
  unsigned slots = h->slot_count;
  /* The layout the file says (the first one or the grown one, docs/PROTOCOL.md 5.3). */
  size_t header_size = h->header_size;
  size_t slot_size = h->slot_size;
  if (header_size < CORRAL_SB_HEADER_SIZE || header_size % 64 != 0 ||
      slot_size < CORRAL_SB_SLOT_SIZE || slot_size % 64 != 0 || slots > CORRAL_SB_MAX_SLOTS ||
      header_size + (size_t)slots * slot_size > size)
    slots = 0;
  region_lock(sb_fd, F_WRLCK);
  for (unsigned i = 0; i < slots; ++i) {
    if (i == slot) continue;
    struct corral_sb_slot* other = slot_at(base, header_size, slot_size, i);
    if (__atomic_load_n(&other->state, __ATOMIC_ACQUIRE) != CORRAL_SLOT_BUSY) continue;
    if (memcmp(other->reserved, key, 16) == 0) ++*count;
  }
  int ok = *count < limit;
  if (ok && slot < slots) memcpy(slot_at(base, header_size, slot_size, slot)->reserved, key, 16);
  region_lock(sb_fd, F_UNLCK);
  munmap(base, size);
  return ok;
}

/* ---- allow:/deny: (docs/CONFIGURATION.md). The supervisor passes each listener's rules
 * in CORRAL_ACCESS, already in decision order (lib/listen/access.cpp encode_access):
 * one word per listener, separated by ' ', "A" or "D" (an unmatched peer is let in, or
 * refused) then ",+CIDR" or ",-CIDR" entries; the first entry that matches decides. */

struct access_rule {
  uint8_t addr[16]; /* IPv4: the first 4 bytes */
  uint8_t v6;
  uint8_t deny;
  uint8_t prefix;
};
struct access_list {
  struct access_rule* rules;
  unsigned count;
  int refuse_unmatched;
};

#define ACCESS_MAX_LISTENERS 256
static struct access_list g_access[ACCESS_MAX_LISTENERS];
static unsigned g_access_listeners = 0; /* 0: no rules anywhere */

/* Parses one "+10.0.0.0/8" entry; 0 on success. */
static int parse_access_rule(const char* s, size_t len, struct access_rule* out) {
  char buf[INET6_ADDRSTRLEN + 8];
  if (len < 2 || len >= sizeof buf || (s[0] != '+' && s[0] != '-')) return -1;
  memcpy(buf, s + 1, len - 1);
  buf[len - 1] = '\0';
  char* slash = strchr(buf, '/');
  if (slash == NULL) return -1;
  *slash = '\0';
  unsigned prefix = 0;
  if (parse_uint(slash + 1, &prefix) != 0) return -1;
  memset(out, 0, sizeof *out);
  out->deny = s[0] == '-';
  if (inet_pton(AF_INET, buf, out->addr) == 1) {
    if (prefix > 32) return -1;
  } else if (inet_pton(AF_INET6, buf, out->addr) == 1) {
    if (prefix > 128) return -1;
    out->v6 = 1;
  } else {
    return -1;
  }
  out->prefix = (uint8_t)prefix;
  return 0;
}

/* Reads CORRAL_ACCESS; 0 when absent or well formed, -1 (fatal) otherwise. */
static int load_access(void) {
  const char* text = getenv("CORRAL_ACCESS");
  if (text == NULL || *text == '\0') return 0;
  size_t entries = 1;
  for (const char* p = text; *p; ++p) entries += *p == ',';
  struct access_rule* all = calloc(entries, sizeof *all);
  if (all == NULL) return -1;
  unsigned listener = 0;
  const char* p = text;
  while (*p != '\0') {
    if (listener >= ACCESS_MAX_LISTENERS || (*p != 'A' && *p != 'D')) return -1;
    struct access_list* list = &g_access[listener++];
    list->refuse_unmatched = *p == 'D';
    list->rules = all;
    ++p;
    while (*p == ',') {
      const char* start = ++p;
      while (*p != '\0' && *p != ',' && *p != ' ') ++p;
      if (parse_access_rule(start, (size_t)(p - start), &list->rules[list->count]) != 0) return -1;
      ++list->count;
    }
    all = list->rules + list->count;
    if (*p == ' ') {
      ++p;
    } else if (*p != '\0') {
      return -1;
    }
  }
  g_access_listeners = listener;
  return 0;
}

static int prefix_matches(const uint8_t* a, const uint8_t* b, unsigned prefix) {
  unsigned full = prefix / 8;
  if (memcmp(a, b, full) != 0) return 0;
  unsigned rest = prefix % 8;
  if (rest == 0) return 1;
  uint8_t mask = (uint8_t)(0xffU << (8 - rest));
  return ((a[full] ^ b[full]) & mask) == 0;
}

/* Whether the rules of listener `index` let `peer` in (IPv4-mapped IPv6 as IPv4). */
static int access_allows(unsigned index, const struct sockaddr* peer) {
  if (index >= g_access_listeners) return 1;
  const struct access_list* list = &g_access[index];
  if (list->count == 0 && !list->refuse_unmatched) return 1;
  uint8_t addr[16];
  int v6 = 0;
  if (peer->sa_family == AF_INET) {
    memcpy(addr, &((const struct sockaddr_in*)peer)->sin_addr, 4);
  } else if (peer->sa_family == AF_INET6) {
    const struct in6_addr* a6 = &((const struct sockaddr_in6*)peer)->sin6_addr;
    if (IN6_IS_ADDR_V4MAPPED(a6)) {
      memcpy(addr, &a6->s6_addr[12], 4);
    } else {
      memcpy(addr, a6, 16);
      v6 = 1;
    }
  } else {
    return 1; /* unix: no address to judge */
  }
  for (unsigned i = 0; i < list->count; ++i) {
    const struct access_rule* r = &list->rules[i];
    if (r->v6 == v6 && prefix_matches(r->addr, addr, r->prefix)) return !r->deny;
  }
  return !list->refuse_unmatched;
}

/* The one place a refusal (allow:/deny: or max_per_source) is counted: the slot's
 * `refused` counter, which the supervisor folds into status "refused" and
 * corral_pool_connections_refused_total. */
static void count_refused(corral_worker* w) {
  corral_worker_count_refused(w);
}

/* A refusal is logged once per source per interval, with the number suppressed since.
 * The record is shared by all of the job's acceptors, in the grown scoreboard header
 * (refusal_log, under the max_per_source lock); with a first-layout scoreboard or none,
 * each acceptor keeps its own table instead. */
#define REFUSAL_LOG_INTERVAL_NS (10ULL * 1000000000ULL)
#define REFUSAL_LOG_SOURCES 32
static int g_sb_fd = -1; /* the scoreboard, when the supervisor passed one */

struct refusal_entry {
  uint8_t source[16];
  uint64_t logged_ns; /* 0: unused */
  uint32_t suppressed;
};
static struct refusal_entry g_refusals[REFUSAL_LOG_SOURCES];

/* Whether to log a refusal of `key` now, by a table of `n` entries (the caller holds the
 * lock for the shared one). `*suppressed`: the refusals not logged since the last line.
 * The entries may hold anything (another acceptor's bytes): any value is safe. */
static int refusal_due(struct refusal_entry* table, unsigned n, const uint8_t key[16], uint64_t now,
                       unsigned* suppressed) {
  unsigned victim = 0;
  for (unsigned i = 0; i < n; ++i) {
    if (table[i].logged_ns != 0 && memcmp(table[i].source, key, 16) == 0) {
      if (table[i].logged_ns <= now && now - table[i].logged_ns < REFUSAL_LOG_INTERVAL_NS) {
        if (table[i].suppressed < UINT32_MAX) ++table[i].suppressed;
        return 0;
      }
      *suppressed = table[i].suppressed;
      table[i].logged_ns = now;
      table[i].suppressed = 0;
      return 1;
    }
    if (table[i].logged_ns == 0 || table[i].logged_ns < table[victim].logged_ns) victim = i;
  }
  *suppressed = 0;
  memcpy(table[victim].source, key, 16);
  table[victim].logged_ns = now;
  table[victim].suppressed = 0;
  return 1;
}

/* The shared table of the grown header: 1 and *due set when it was used, 0 when there is
 * none (no scoreboard, the first layout, a mapping that failed). */
static int shared_refusal_due(const uint8_t key[16], uint64_t now, unsigned* suppressed, int* due) {
  struct stat st;
  if (g_sb_fd < 0 || fstat(g_sb_fd, &st) != 0 || st.st_size < (off_t)CORRAL_SB_EXT_HEADER_SIZE)
    return 0;
  void* base =
      mmap(NULL, CORRAL_SB_EXT_HEADER_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, g_sb_fd, 0);
  if (base == MAP_FAILED) return 0;
  const struct corral_sb_header* h = base;
  int used = 0;
  if (h->header_size >= CORRAL_SB_EXT_HEADER_SIZE) {
    struct corral_sb_header_ext* x =
        (struct corral_sb_header_ext*)((char*)base + CORRAL_SB_HEADER_SIZE);
    struct refusal_entry table[CORRAL_SB_REFUSAL_LOG];
    region_lock(g_sb_fd, F_WRLCK);
    for (unsigned i = 0; i < CORRAL_SB_REFUSAL_LOG; ++i) {
      memcpy(table[i].source, x->refusal_log[i].source, 16);
      table[i].logged_ns = x->refusal_log[i].logged_ns;
      table[i].suppressed = x->refusal_log[i].suppressed;
    }
    *due = refusal_due(table, CORRAL_SB_REFUSAL_LOG, key, now, suppressed);
    for (unsigned i = 0; i < CORRAL_SB_REFUSAL_LOG; ++i) {
      memcpy(x->refusal_log[i].source, table[i].source, 16);
      x->refusal_log[i].logged_ns = table[i].logged_ns;
      x->refusal_log[i].suppressed = table[i].suppressed;
    }
    region_lock(g_sb_fd, F_UNLCK);
    used = 1;
  }
  munmap(base, CORRAL_SB_EXT_HEADER_SIZE);
  return used;
}

static void log_refusal(const struct sockaddr* peer, socklen_t peer_len, int conn) {
  uint8_t key[16];
  memset(key, 0, sizeof key);
  peer_key(peer, key);
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  uint64_t now = (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
  if (now == 0) now = 1; /* 0 marks an unused entry */
  unsigned suppressed = 0;
  int due = 0;
  if (!shared_refusal_due(key, now, &suppressed, &due))
    due = refusal_due(g_refusals, REFUSAL_LOG_SOURCES, key, now, &suppressed);
  if (!due) return;
  char host[INET6_ADDRSTRLEN] = "?";
  char local[INET6_ADDRSTRLEN] = "?";
  unsigned port = 0;
  unsigned local_port = 0;
  split_address(peer, peer_len, host, &port);
  struct sockaddr_storage ls;
  socklen_t ls_len = sizeof ls;
  memset(&ls, 0, sizeof ls);
  if (getsockname(conn, (struct sockaddr*)&ls, &ls_len) == 0)
    split_address((struct sockaddr*)&ls, ls_len, local, &local_port);
  int v6 = strchr(host, ':') != NULL;
  int lv6 = strchr(local, ':') != NULL;
  char more[96] = "";
  if (suppressed > 0)
    snprintf(more, sizeof more, " (and %u more from that address since, not logged)", suppressed);
  fprintf(stderr, "corral: job %s: refused %s%s%s:%u on %s%s%s:%u: not allowed by allow:/deny:%s\n",
          g_job, v6 ? "[" : "", host, v6 ? "]" : "", port, lv6 ? "[" : "", local, lv6 ? "]" : "",
          local_port, more);
}

/* The program's environment: ours minus kStripped, plus the connection's variables
 * (PRODUCT.md: REMOTE_ADDR, REMOTE_PORT, PROTO, TCP*; for unix sockets PROTO=UNIX). The
 * strings live in `buf`; returns NULL when the environment is too large to copy. */
static char** connection_environment(const struct sockaddr* peer, socklen_t peer_len,
                                     const struct sockaddr* local, socklen_t local_len,
                                     char buf[7][INET6_ADDRSTRLEN + 24]) {
  size_t n = 0;
  while (environ[n] != NULL) ++n;
  char** envp = malloc((n + 8) * sizeof *envp);
  if (envp == NULL) return NULL;
  size_t k = 0;
  for (size_t i = 0; i < n; ++i) {
    if (!stripped(environ[i])) envp[k++] = environ[i];
  }
  char host[INET6_ADDRSTRLEN];
  unsigned port = 0;
  if (split_address(peer, peer_len, host, &port)) {
    snprintf(buf[0], sizeof buf[0], "PROTO=TCP");
    snprintf(buf[1], sizeof buf[1], "REMOTE_ADDR=%s", host);
    snprintf(buf[2], sizeof buf[2], "REMOTE_PORT=%u", port);
    snprintf(buf[3], sizeof buf[3], "TCPREMOTEIP=%s", host);
    snprintf(buf[4], sizeof buf[4], "TCPREMOTEPORT=%u", port);
    for (int i = 0; i < 5; ++i) envp[k++] = buf[i];
    if (split_address(local, local_len, host, &port)) {
      snprintf(buf[5], sizeof buf[5], "TCPLOCALIP=%s", host);
      snprintf(buf[6], sizeof buf[6], "TCPLOCALPORT=%u", port);
      envp[k++] = buf[5];
      envp[k++] = buf[6];
    }
  } else {
    snprintf(buf[0], sizeof buf[0], "PROTO=UNIX");
    envp[k++] = buf[0];
  }
  envp[k] = NULL;
  return envp;
}

/* The environment of a warm program, started before any connection: ours minus
 * kStripped, and none of the connection's variables. NULL when out of memory. */
static char** waiting_environment(void) {
  size_t n = 0;
  while (environ[n] != NULL) ++n;
  char** envp = malloc((n + 1) * sizeof *envp);
  if (envp == NULL) return NULL;
  size_t k = 0;
  for (size_t i = 0; i < n; ++i) {
    if (!stripped(environ[i])) envp[k++] = environ[i];
  }
  envp[k] = NULL;
  return envp;
}

static void report(int fd, int step, int err) {
  struct corral_spawn_report r = {step, err};
  ssize_t n = write(fd, &r, sizeof r); /* atomic on a pipe; nothing to do if it fails */
  (void)n;
}

int main(int argc, char** argv) {
  unsigned max_per_source = 0;
  unsigned report_fd = 0;
  if (argc < 6 || parse_uint(argv[2], &max_per_source) != 0 ||
      parse_uint(argv[3], &report_fd) != 0) {
    fprintf(stderr,
            "corral-inetd: started by hand? It is corral's inetd acceptor; usage: corral-inetd "
            "JOB MAX_PER_SOURCE REPORT_FD PROGRAM ARGV0 [ARG...]\n");
    return CORRAL_EXIT_FATAL;
  }
  g_job = argv[1];
  const char* program = argv[4];
  char** program_argv = argv + 5;

  corral_worker* w = NULL;
  int r = corral_worker_init(&w);
  if (r != 0) {
    fprintf(stderr, "corral: job %s: inetd acceptor: %s\n", g_job, strerror(-r));
    return CORRAL_EXIT_FATAL;
  }
  if (load_access() != 0) {
    fprintf(stderr, "corral: job %s: inetd acceptor: CORRAL_ACCESS is malformed\n", g_job);
    return CORRAL_EXIT_FATAL;
  }
  unsigned slot = 0;
  unsigned sb_fd = 0;
  int have_sb = parse_uint(getenv(CORRAL_ENV_SLOT), &slot) == 0 &&
                parse_uint(getenv(CORRAL_ENV_SCOREBOARD_FD), &sb_fd) == 0;
  if (have_sb && sb_fd <= INT32_MAX) g_sb_fd = (int)sb_fd;
  const char* warm_env = getenv(CORRAL_ENV_INETD_WARM);
  const int warm = warm_env != NULL && *warm_env != '\0';
  if (warm) {
    char** envp = waiting_environment();
    r = envp == NULL ? -ENOMEM
                     : warm_start(w, g_job, program, program_argv, envp, (int)report_fd,
                                  strcmp(warm_env, "proxy-v1") == 0 ? WARM_HEADER_PROXY_V1
                                                                    : WARM_HEADER_NONE);
    free(envp);
    if (r != 0) {
      fprintf(stderr, "corral: job %s: inetd acceptor: starting the warm program: %s\n", g_job,
              strerror(-r));
      return 1;
    }
  }

  for (;;) {
    struct sockaddr_storage peer;
    socklen_t peer_len = sizeof peer;
    memset(&peer, 0, sizeof peer);
    unsigned listener = 0;
    int conn = corral_worker_accept(w, (struct sockaddr*)&peer, &peer_len, &listener);
    if (conn < 0) {
      int e = errno;
      if (warm && warm_lost()) return CORRAL_WARM_LOST_EXIT;
      if (warm) warm_abandon();
      return e == ESHUTDOWN ? 0 : 1;
    }
    if (!access_allows(listener, (struct sockaddr*)&peer)) {
      /* Closed without a byte written; nothing was read either. */
      log_refusal((struct sockaddr*)&peer, peer_len, conn);
      count_refused(w);
      close(conn);
      corral_worker_done(w);
      continue;
    }
    uint8_t key[16];
    unsigned count = 0;
    if (max_per_source != 0 && have_sb && peer_key((struct sockaddr*)&peer, key) &&
        !within_source_limit((int)sb_fd, slot, max_per_source, key, &count)) {
      char host[INET6_ADDRSTRLEN] = "?";
      unsigned port = 0;
      split_address((struct sockaddr*)&peer, peer_len, host, &port);
      int v6 = strchr(host, ':') != NULL;
      fprintf(stderr,
              "corral: job %s: refused %s%s%s:%u: %u connections from that address already "
              "(max_per_source %u)\n",
              g_job, v6 ? "[" : "", host, v6 ? "]" : "", port, count, max_per_source);
      count_refused(w);
      close(conn);
      corral_worker_done(w);
      continue;
    }
    struct sockaddr_storage local;
    socklen_t local_len = sizeof local;
    memset(&local, 0, sizeof local);
    getsockname(conn, (struct sockaddr*)&local, &local_len);
    /* Warm: joined to the waiting program (no return), unless it is found gone, when the
     * connection is served cold below. */
    if (warm)
      warm_serve(conn, (struct sockaddr*)&peer, peer_len, (struct sockaddr*)&local, local_len);
    static char env_buf[7][INET6_ADDRSTRLEN + 24];
    char** envp = connection_environment((struct sockaddr*)&peer, peer_len,
                                         (struct sockaddr*)&local, local_len, env_buf);
    /* The connection becomes stdin and stdout; nothing else of ours may reach the
     * program: every fd from 3 up, the report pipe included, is closed at exec. */
    if (envp == NULL || dup2(conn, 0) < 0 || dup2(conn, 1) < 0) {
      report((int)report_fd, CORRAL_SPAWN_EXEC, errno != 0 ? errno : ENOMEM);
      return 127;
    }
    syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC);
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigaction(SIGTERM, &dfl, NULL);
    execve(program, program_argv, envp);
    report((int)report_fd, CORRAL_SPAWN_EXEC, errno);
    /* Close the connection cleanly (FIN, not RST): nothing was read from it. */
    shutdown(0, SHUT_WR);
    return 127;
  }
}
