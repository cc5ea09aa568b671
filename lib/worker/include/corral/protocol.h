/* corral worker protocol: the scoreboard layout and the environment contract.
 *
 * This header is shared by the supervisor and by the worker library, and is the
 * normative companion of docs/PROTOCOL.md. It depends on nothing but <stdint.h>.
 * All integers are in the host's native byte order; the file is never shared
 * between machines. Offsets are fixed by the static assertions at the end.
 */
#ifndef CORRAL_PROTOCOL_H
#define CORRAL_PROTOCOL_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- environment ------------------------------------------------------ */
#define CORRAL_ENV_JOB "CORRAL_JOB"                     /* job name */
#define CORRAL_ENV_SLOT "CORRAL_SLOT"                   /* this worker's slot index */
#define CORRAL_ENV_SCOREBOARD_FD "CORRAL_SCOREBOARD_FD" /* fd of the scoreboard file */
#define CORRAL_ENV_LOCK_FD "CORRAL_LOCK_FD"             /* fd of the accept mutex */
#define CORRAL_ENV_LOCK_KIND "CORRAL_LOCK_KIND"         /* "pipe" or "fcntl" */
#define CORRAL_ENV_NOTIFY_FD "CORRAL_NOTIFY_FD"   /* fd the worker may write to (see PROTOCOL.md) */
#define CORRAL_ENV_GENERATION "CORRAL_GENERATION" /* generation the worker belongs to */

/* ---- scoreboard file -------------------------------------------------- */
#define CORRAL_SB_MAGIC "CORRALSB" /* 8 bytes, no terminator */
#define CORRAL_SB_VERSION 1u
/* The first layout's sizes, which are also the smallest a reader accepts: a file may
 * have a larger header_size and slot_size (both multiples of 64), and the offsets of
 * the first layout stay. Readers take the sizes from the header, never from here. */
#define CORRAL_SB_HEADER_SIZE 1024u
#define CORRAL_SB_SLOT_SIZE 64u
/* The grown layout: every file corral creates has header_size 2048 (the
 * counters of struct corral_sb_header_ext at 1024) and slot_size 256 (struct
 * corral_sb_slot_ext at 64). The version stays 1: every worker written for the first
 * layout works unchanged on it. A field of the grown layout exists only when the
 * file's header_size / slot_size is at least CORRAL_SB_EXT_*_SIZE. */
#define CORRAL_SB_EXT_HEADER_SIZE 2048u
#define CORRAL_SB_EXT_SLOT_SIZE 256u
#define CORRAL_SB_LISTENER_COUNTERS 16u /* per-listener counters: listeners 0..15 */
#define CORRAL_SB_EXIT_REASONS 16u      /* room for exit reasons (11 are defined) */
#define CORRAL_SB_REFUSAL_LOG 16u       /* refused sources the acceptors remember, shared */
#define CORRAL_SB_MAX_SLOTS 65536u
#define CORRAL_SB_JOB_NAME_SIZE 64u
#define CORRAL_SB_LISTENERS_SIZE 768u

/* Slot states. A worker writes IDLE and BUSY (and STOPPING when it leaves on
 * its own); the supervisor writes EMPTY, STARTING, STOPPING and RUNNING. */
enum corral_slot_state {
  CORRAL_SLOT_EMPTY = 0,
  CORRAL_SLOT_STARTING = 1,
  CORRAL_SLOT_IDLE = 2,
  CORRAL_SLOT_BUSY = 3,
  CORRAL_SLOT_STOPPING = 4,
  CORRAL_SLOT_RUNNING = 5, /* plain mode: the supervisor knows nothing finer */
};

/* What a worker says about the accept mutex (slot.lock). */
enum corral_lock_state {
  CORRAL_LOCK_NONE = 0,    /* not waiting for the lock, not holding it */
  CORRAL_LOCK_WAITING = 1, /* about to block, or blocked, acquiring it */
  CORRAL_LOCK_HELD = 2,    /* holding it (waiting for a connection or accepting) */
};

enum corral_job_mode {
  CORRAL_MODE_PREFORK = 0,
  CORRAL_MODE_INETD = 1,
  CORRAL_MODE_PLAIN = 2,
};

enum corral_job_state {
  CORRAL_JOB_RUNNING = 0,
  CORRAL_JOB_BACKING_OFF = 1,
  CORRAL_JOB_FAILED = 2,
  CORRAL_JOB_STOPPING = 3,
  CORRAL_JOB_DRAINING = 4, /* stop.drain: still serving, but no longer ready */
};

/* Exit codes with a meaning for prefork workers (compare Apache's
 * APEXIT_CHILDSICK / APEXIT_CHILDFATAL). */
#define CORRAL_EXIT_SICK 75  /* resources short: slow down spawning (EX_TEMPFAIL) */
#define CORRAL_EXIT_FATAL 78 /* configuration broken: stop respawning the job (EX_CONFIG) */

/* Header flags (corral_sb_header.flags). */
#define CORRAL_SB_FLAG_WARM 1u /* inetd.warm: a worker's program is the worker's child */

/* The header: written by the supervisor only (a worker must not write it). */
struct corral_sb_header {
  char magic[8];                /*   0: "CORRALSB" */
  uint32_t version;             /*   8: CORRAL_SB_VERSION */
  uint32_t header_size;         /*  12: offset of slot 0 */
  uint32_t slot_size;           /*  16: bytes per slot */
  uint32_t slot_count;          /*  20: number of slots */
  int32_t supervisor_pid;       /*  24 */
  uint32_t generation;          /*  28: current generation (1, then +1 per reload) */
  uint64_t started_realtime_ns; /*  32: CLOCK_REALTIME when the supervisor started */
  uint32_t mode;                /*  40: enum corral_job_mode */
  uint32_t job_state;           /*  44: enum corral_job_state */
  uint64_t retry_at_mono_ns;    /*  48: CLOCK_MONOTONIC of the next try when backing off */
  uint32_t min_spare;           /*  56 */
  uint32_t max_spare;           /*  60 */
  uint32_t max_workers;         /*  64 */
  uint32_t flags;               /*  68: CORRAL_SB_FLAG_* bits */
  uint64_t updated_mono_ns;     /*  72: CLOCK_MONOTONIC of the supervisor's last write */
  char job_name[CORRAL_SB_JOB_NAME_SIZE];   /*  80: NUL-terminated */
  char listeners[CORRAL_SB_LISTENERS_SIZE]; /* 144: bound addresses, '\n'-separated, NUL-terminated
                                             */
  uint64_t max_requests;       /* 912: workers.max_requests, 0 = unlimited; a worker that
                                * reached it stops accepting and exits (docs/PROTOCOL.md) */
  uint32_t at_max;             /* 920: 1 while the job has workers.max workers: nothing can be
                                * started, so a worker need not write CORRAL_NOTIFY_FD */
  uint32_t limit_cpus;         /* 924: the container's CPUs (C, docs/CONTAINERS.md); 0 = unknown */
  uint64_t limit_memory_bytes; /* 928: the container's memory limit; 0 = none */
  uint8_t reserved1[24];       /* 936 .. 959 */
  /* 960: the one field of the header that workers write, on a cache line of its own:
   * a hint of how many workers are idle. A worker adds 1 when it becomes idle and
   * subtracts 1 when it leaves idle (atomic fetch-and-add); when the value after its
   * subtraction is below min_spare it writes one byte to CORRAL_NOTIFY_FD, so that the
   * supervisor starts spares at once instead of at its next look. The supervisor
   * corrects drift (workers that died idle) by adding the difference. Optional for a
   * worker: one that never touches it is still seen within a second. */
  int32_t idle_hint;                             /* 960 */
  uint8_t reserved[CORRAL_SB_HEADER_SIZE - 964]; /* 964 .. 1023 */
};

/* One slot, one cache line. Fields marked (w) are the worker's; (s) the supervisor's.
 * Every access is a relaxed/acquire/release atomic access of the field's width. */
struct corral_sb_slot {
  uint32_t state;          /*  0 (w,s): enum corral_slot_state */
  int32_t pid;             /*  4 (s): the worker's pid */
  uint32_t generation;     /*  8 (s) */
  uint32_t lock;           /* 12 (w): enum corral_lock_state */
  uint64_t requests;       /* 16 (w): connections accepted by this worker */
  uint64_t state_since_ns; /* 24 (w,s): CLOCK_MONOTONIC of the last state change */
  uint64_t lock_since_ns;  /* 32 (w): CLOCK_MONOTONIC of the last lock change */
  uint64_t spawned_ns;     /* 40 (s): CLOCK_MONOTONIC of the fork */
  uint8_t reserved[16];    /* 48 .. 63 */
};

/* ---- the grown layout ------------------------------------------------- */

/* Exit reasons, the index into corral_sb_header_ext.exits (the `reason` label of
 * corral_worker_exits_total and the keys of the status JSON's "exits"). */
enum corral_exit_reason {
  CORRAL_EXIT_REASON_NORMAL = 0,
  CORRAL_EXIT_REASON_MAX_REQUESTS = 1,
  CORRAL_EXIT_REASON_MAX_LIFETIME = 2,
  CORRAL_EXIT_REASON_BUSY_TIMEOUT = 3,
  CORRAL_EXIT_REASON_START_TIMEOUT = 4,
  CORRAL_EXIT_REASON_MEMORY = 5,
  CORRAL_EXIT_REASON_OOM = 6,
  CORRAL_EXIT_REASON_SIGNAL = 7,
  CORRAL_EXIT_REASON_CRASH = 8,
  CORRAL_EXIT_REASON_FAILED_START = 9,
  CORRAL_EXIT_REASON_STUCK_LOCK = 10,
};

/* Header bytes 1024 .. 2047 (header_size >= 2048): the job's counters since the
 * supervisor started (they survive reloads and SIGUSR2), for `corral status`. Written
 * by the supervisor only, republished at least every 100 ms (a worker that scribbles
 * here is corrected then); a worker never reads or writes them. */
struct corral_sb_header_ext {
  uint64_t exits[CORRAL_SB_EXIT_REASONS]; /* 1024: workers that left, by corral_exit_reason */
  uint64_t refused;                       /* 1152: connections refused (inetd), every slot */
  uint64_t accepted;                      /* 1160: connections accepted, every slot */
  uint32_t listeners_reported;            /* 1168: bit i: listener_accepted[i] is reported */
  uint32_t reserved0;                     /* 1172 */
  uint64_t published_mono_ns;             /* 1176: CLOCK_MONOTONIC of the last publication */
  uint8_t reserved1[96];                  /* 1184 .. 1279 */
  /* 1280: per listener of the current generation (the order of `listeners` at 144,
   * which is LISTEN_FDS order), accepted connections, folded by listener address */
  uint64_t listener_accepted[CORRAL_SB_LISTENER_COUNTERS];
  /* 1408: the inetd acceptors' shared record of refused sources, so that a refusal is
   * logged once per source per interval across all of a job's acceptors (not once per
   * acceptor). Read and written only by acceptors, under the fcntl lock of header bytes
   * 1000..1007 (the max_per_source lock); the supervisor never touches it. */
  struct corral_sb_refusal_log {
    uint8_t source[16];  /* IPv6, IPv4 mapped */
    uint64_t logged_ns;  /* CLOCK_MONOTONIC of the last line logged for it; 0: unused */
    uint32_t suppressed; /* refusals since that line, not logged */
    uint32_t reserved;
  } refusal_log[CORRAL_SB_REFUSAL_LOG];
  uint8_t reserved[128]; /* 1920 .. 2047 */
};

/* Slot bits a worker sets in corral_sb_slot_ext.reports. */
#define CORRAL_SB_REPORTS_LISTENERS 1u /* it counts accepted[] (and refused) */

/* Slot bytes 64 .. 255 (slot_size >= 256). The supervisor zeroes the worker's fields
 * when it claims the slot for a new worker. */
struct corral_sb_slot_ext {
  uint64_t refused;      /*  64 (w): connections taken and closed unserved (inetd: max_per_source
                          *       and peer rules), counted with an atomic add */
  uint64_t oom_kills;    /*  72 (s): workers of this slot the kernel's OOM killer ended, since the
                          *       supervisor started (kept across the slot's workers) */
  uint32_t reports;      /*  80 (w): CORRAL_SB_REPORTS_* bits, set once at start */
  uint32_t reserved0;    /*  84 */
  uint8_t reserved1[40]; /* 88 .. 127 */
  /* 128 (w): connections accepted per listener (index as LISTEN_FDS), atomic add;
   * connections on listener 16 and up are counted in `requests` only */
  uint64_t accepted[CORRAL_SB_LISTENER_COUNTERS];
};

/* A slot of the grown layout. */
struct corral_sb_slot_v2 {
  struct corral_sb_slot base;    /*  0 .. 63 */
  struct corral_sb_slot_ext ext; /* 64 .. 255 */
};

#ifdef __cplusplus
}
static_assert(sizeof(struct corral_sb_header) == CORRAL_SB_HEADER_SIZE, "header size");
static_assert(sizeof(struct corral_sb_slot) == CORRAL_SB_SLOT_SIZE, "slot size");
static_assert(CORRAL_SB_HEADER_SIZE + sizeof(struct corral_sb_header_ext) ==
                  CORRAL_SB_EXT_HEADER_SIZE,
              "grown header size");
static_assert(sizeof(struct corral_sb_slot_v2) == CORRAL_SB_EXT_SLOT_SIZE, "grown slot size");
#else
_Static_assert(sizeof(struct corral_sb_header) == CORRAL_SB_HEADER_SIZE, "header size");
_Static_assert(sizeof(struct corral_sb_slot) == CORRAL_SB_SLOT_SIZE, "slot size");
_Static_assert(CORRAL_SB_HEADER_SIZE + sizeof(struct corral_sb_header_ext) ==
                   CORRAL_SB_EXT_HEADER_SIZE,
               "grown header size");
_Static_assert(sizeof(struct corral_sb_slot_v2) == CORRAL_SB_EXT_SLOT_SIZE, "grown slot size");
#endif

#endif /* CORRAL_PROTOCOL_H */
