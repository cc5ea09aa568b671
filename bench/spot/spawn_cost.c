/* Process-creation spot check: CPU per iteration of
 *   spawn PROGRAM: posix_spawn (clone-vfork + exec, as corral starts workers) + wait
 *   fork:          fork() + _exit in the child + wait (as tcpserver, from this process)
 * Usage: spawn_cost spawn PROGRAM N | spawn_cost fork N
 * Prints wall and CPU (self + children, from getrusage) per iteration. Bounded by N. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char** environ;

static double usec(struct timeval tv) {
  return tv.tv_sec * 1e6 + tv.tv_usec;
}

int main(int argc, char** argv) {
  int spawn = argc == 4 && strcmp(argv[1], "spawn") == 0;
  if (!spawn && !(argc == 3 && strcmp(argv[1], "fork") == 0)) {
    fprintf(stderr, "usage: spawn_cost spawn PROGRAM N | spawn_cost fork N\n");
    return 2;
  }
  int n = atoi(argv[argc - 1]);
  if (n <= 0 || n > 100000) return 2;
  /* The children's stdin and stdout are /dev/null (hello1 answers on stdout). */
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  for (int i = 0; i < n; ++i) {
    pid_t pid;
    if (spawn) {
      char* av[] = {argv[2], NULL};
      if (posix_spawn(&pid, argv[2], &fa, NULL, av, environ) != 0) return 1;
    } else {
      pid = fork();
      if (pid == 0) _exit(0);
      if (pid < 0) return 1;
    }
    int st;
    waitpid(pid, &st, 0);
  }
  clock_gettime(CLOCK_MONOTONIC, &b);
  struct rusage self, kids;
  getrusage(RUSAGE_SELF, &self);
  getrusage(RUSAGE_CHILDREN, &kids);
  double wall = ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / 1e3 / n;
  double cpu_self = (usec(self.ru_utime) + usec(self.ru_stime)) / n;
  double cpu_kids = (usec(kids.ru_utime) + usec(kids.ru_stime)) / n;
  printf("%-9s %-40s wall %6.0f us  cpu %6.0f us (parent %4.0f, child %5.0f)\n", argv[1],
         spawn ? argv[2] : "-", wall, cpu_self + cpu_kids, cpu_self, cpu_kids);
  return 0;
}
