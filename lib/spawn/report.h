/* The spawn report: what a child writes on its report pipe when a step between fork and
 * a successful exec fails. EOF without a report means the exec succeeded. Shared by the
 * supervisor (C++) and the inetd acceptor (C), which reports the failure of the legacy
 * program's exec on the same pipe. */
#ifndef CORRAL_SPAWN_REPORT_H
#define CORRAL_SPAWN_REPORT_H

#ifdef __cplusplus
extern "C" {
#endif

enum corral_spawn_step {
  CORRAL_SPAWN_DUP = 0,
  CORRAL_SPAWN_SETPGID = 1,
  CORRAL_SPAWN_CHDIR = 2,
  CORRAL_SPAWN_SETGROUPS = 3,
  CORRAL_SPAWN_SETGID = 4,
  CORRAL_SPAWN_SETUID = 5,
  CORRAL_SPAWN_PDEATHSIG = 6,
  CORRAL_SPAWN_EXEC = 7,        /* the program's exec */
  CORRAL_SPAWN_EXEC_HELPER = 8, /* the embedded inetd acceptor's exec */
  CORRAL_SPAWN_RLIMIT = 9,      /* the job's limits: (setrlimit) */
  CORRAL_SPAWN_CGROUP = 10,     /* moving into the slot's cgroup (cgroup:) */
};

struct corral_spawn_report {
  int step; /* enum corral_spawn_step */
  int err;  /* errno */
};

#ifdef __cplusplus
}
#endif

#endif
