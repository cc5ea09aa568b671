// Fork and exec of a worker with exactly the fds and environment PRODUCT.md promises.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "common/error.h"

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
  pid_t parent = 0;               // the supervisor's pid, for the PDEATHSIG race check
};

/// Forks and execs `plan`. The child leaves the supervisor's process group, resets
/// signals, dies with the supervisor (PR_SET_PDEATHSIG), and closes every fd but
/// 0, 1, 2 and the inherited ones. Returns the pid once exec succeeded; a failed exec
/// (or chdir, setuid...) is reported through a CLOEXEC pipe as an Error naming the
/// step and the program, and the child has been reaped. Never throws.
Result<pid_t> spawn_process(const SpawnPlan& plan) noexcept;

/// Like spawn_process, but instead of exec'ing runs `body` in the child after the same
/// preparation (fds, group, signals, credentials, PDEATHSIG), then _exit()s with its
/// return value. For inetd acceptors, which exec only once they hold a connection.
/// `body` must not return to the caller's stack frames.
Result<pid_t> fork_process(const SpawnPlan& plan, int (*body)(void* arg), void* arg) noexcept;

/// Environment of the supervisor at start-up minus what belongs to it alone
/// (NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID, LISTEN_*). Call once, early.
std::vector<std::string> inheritable_environment();

/// Sets or replaces KEY in an environment vector.
void set_env(std::vector<std::string>& env, const std::string& key, const std::string& value);

}  // namespace corral
