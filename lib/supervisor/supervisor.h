// The supervisor: one single-threaded event loop that owns the listeners, the
// scoreboards and the workers of every job.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "config/config.h"

namespace corral {

/// How the supervisor was configured: from a file (reloadable) or the command line.
struct SupervisorOptions {
  Config config;
  std::string config_path;  // "" = command line: SIGHUP re-validates nothing
  std::string config_text;  // the YAML the running configuration came from
  CheckOptions check;
  std::vector<std::string> argv;  // the command line, for the binary upgrade (SIGUSR2)
};

/// Runs until stopped. Construction binds nothing; run() does.
class Supervisor {
 public:
  explicit Supervisor(SupervisorOptions options);
  ~Supervisor();
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  /// Adopts systemd sockets, binds, creates scoreboards, spawns, and runs the loop.
  /// Returns the process exit code: 0 after SIGTERM/SIGINT/SIGQUIT, 1 when every job
  /// failed. Throws SetupError for start-up failures (address in use, ...), before any
  /// worker was started.
  int run();

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

/// `corral --handover-check VERSION`, run by an old image before a binary upgrade:
/// exit 0 when this binary reads hand-over VERSION and the state on stdin (with its
/// configuration), else 3 with the reason on stderr.
int handover_check_main(const std::string& version);

}  // namespace corral
