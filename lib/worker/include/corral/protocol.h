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
#define CORRAL_SB_HEADER_SIZE 1024u
#define CORRAL_SB_SLOT_SIZE 64u
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
  uint32_t reserved0;           /*  68 */
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

#ifdef __cplusplus
}
static_assert(sizeof(struct corral_sb_header) == CORRAL_SB_HEADER_SIZE, "header size");
static_assert(sizeof(struct corral_sb_slot) == CORRAL_SB_SLOT_SIZE, "slot size");
#else
_Static_assert(sizeof(struct corral_sb_header) == CORRAL_SB_HEADER_SIZE, "header size");
_Static_assert(sizeof(struct corral_sb_slot) == CORRAL_SB_SLOT_SIZE, "slot size");
#endif

#endif /* CORRAL_PROTOCOL_H */
