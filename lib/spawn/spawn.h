// Fork and exec of a worker with exactly the fds and environment PRODUCT.md promises.
#pragma once

#include <sys/resource.h>
#include <sys/types.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/error.h"
#include "common/unique_fd.h"

namespace corral {

/// Ids to switch to in the child, resolved before fork (NSS lookups allocate).
struct Credentials {
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;  // supplementary groups
  std::string home;
  std::string user;
};

/// Resolves `user` (and `group`, or the user's primary group) with getpwnam_r,
/// getgrnam_r and getgrouplist. Throws SetupError naming what is missing.
Credentials resolve_credentials(const std::string& user, const std::string& group);

/// Everything the child needs, prepared before fork.
struct SpawnPlan {
  std::string path;               // absolute path of the program
  std::vector<std::string> argv;  // argv[0] included
  std::vector<std::string> env;   // "KEY=value"; LISTEN_PID is added by the child
  bool listen_pid = false;        // add LISTEN_PID=<child pid> to env
  std::vector<int> inherit;       // fds placed at 3, 4, ... in this order, CLOEXEC cleared
  int stdin_fd = -1;              // -1: /dev/null
  int stdout_fd = -1;             // -1: keep the supervisor's
  int stderr_fd = -1;             // -1: keep the supervisor's
  std::string cwd;                // "" = keep
  std::optional<Credentials> credentials;
  pid_t parent = 0;              // the supervisor's pid, for the PDEATHSIG race check
  std::optional<rlimit> nofile;  // RLIMIT_NOFILE to restore (the supervisor raised its own)
  std::vector<std::pair<int, rlimit>> rlimits;  // the job's limits:, applied after `nofile`
  /// cgroup.procs files (fds the parent opened, close-on-exec) the child writes its pid
  /// to first thing, so that it runs in its slot's cgroups before anything else.
  std::vector<int> cgroup_procs;
  int exec_fd = -1;          // >= 0: exec this file (execveat) instead of `path`
  bool pass_report = false;  // the report pipe is inherited too, after `inherit`, so
                             // that the program can report a later exec of its own
  /// setsid() instead of setpgid(0, 0): a session of its own (and so, with
  /// kernel.sched_autogroup_enabled, a CPU autogroup of its own), as xinetd's children
  /// and systemd's Accept=yes instances have. Its process group is its pid either way.
  bool new_session = false;
};

/// Forks and execs `plan`. The child leaves the supervisor's process group (and with
/// `new_session` its session), resets
/// signals, dies with the supervisor (PR_SET_PDEATHSIG), and closes every fd but
/// 0, 1, 2 and the inherited ones. A failed exec (or chdir, setuid...) is reported
/// through a CLOEXEC pipe; EOF means success. With `report` null, waits for that
/// outcome: returns the pid once exec succeeded, or an Error naming the step and the
/// program (the child then reaped). With `report`, does not wait for the exec to finish:
/// a failure already reported when the child released the parent is returned as above;
/// otherwise `report` receives the pipe's read end (non-blocking): read it with
/// read_spawn_report() once the child has exited. Never throws.
Result<pid_t> spawn_process(const SpawnPlan& plan, UniqueFd* report = nullptr) noexcept;

/// The failure a child reported on its pipe, if any ("exec /srv/app", errno).
std::optional<Error> read_spawn_report(int fd, const std::string& path) noexcept;

/// Sets or replaces KEY in an environment vector.
void set_env(std::vector<std::string>& env, const std::string& key, const std::string& value);

}  // namespace corral
