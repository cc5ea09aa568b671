// Internal to lib/supervisor: the state of Supervisor::Impl, shared by the files that
// implement it (supervisor.cpp: set-up and the loop; maintain.cpp: the workers of each
// job; audit.cpp: accept-mutex health; upgrade.cpp: the binary upgrade). Not part of
// the public API (supervisor.h).
#pragma once

#include <corral/protocol.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/duration.h"
#include "common/unique_fd.h"
#include "config/config.h"
#include "listen/listener.h"
#include "notify/notify.h"
#include "scoreboard/scoreboard.h"
#include "spawn/spawn.h"
#include "supervisor/accept_lock.h"
#include "supervisor/supervisor.h"

namespace corral {

constexpr std::uint64_t kMs = 1000000ULL;
constexpr std::uint64_t kSec = 1000000000ULL;
constexpr std::uint64_t kBackoffBase = 100 * kMs;
constexpr std::uint64_t kPlainCrashWindow = 1 * kSec;
constexpr std::uint64_t kFastTick = 50 * kMs;
constexpr std::uint64_t kSlowTick = 1 * kSec;
// Idle workers above max_spare are retired only once the excess has lasted
// kRetireHysteresis, then a quarter of the excess every kRetireInterval: an oscillating
// load causes no fork/kill churn, and a burst's surplus is gone within seconds.
constexpr std::uint64_t kRetireInterval = 500 * kMs;
constexpr std::uint64_t kRetireHysteresis = 10 * kSec;
// Notifications from workers wake the supervisor at most once per kNotifyInterval.
constexpr std::uint64_t kNotifyInterval = 5 * kMs;
// A worker holding the accept mutex this long while connections wait and none is
// accepted is stuck (alive, not accepting): it is replaced.
constexpr std::uint64_t kStuckHolder = 3 * kSec;
constexpr unsigned kSpawnBurst = 64;  // fork-rate cap: starts per kSpawnWindow
// A top-up (spares short of min_spare, but at least half of it idle and no connection
// waiting) waits for a moment when no worker is busy, kTopUpMaxWait at the most: the
// new workers' exec then does not compete for the CPU with a connection being served
// (in inetd mode, the program's own exec, which made the paced p99 1.5x tcpserver's),
// and top-ups close together are done at once.
constexpr std::uint64_t kTopUpMaxWait = 50 * kMs;
constexpr std::uint64_t kSpawnWindow = 100 * kMs;

constexpr const char* kUpgradeEnv = "CORRAL_UPGRADE_STATE";

inline std::uint64_t to_ns(Duration d) {
  return d.count() > 0 ? static_cast<std::uint64_t>(d.count()) : 0;
}

enum class JobState { running, backing_off, failed };

inline std::string describe_status(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const char* name = sigabbrev_np(WTERMSIG(status));
    return std::string("killed by signal ") +
           (name != nullptr ? std::string("SIG") + name : std::to_string(WTERMSIG(status)));
  }
  return "ended with status " + std::to_string(status);
}

struct WorkerRec {
  pid_t pid = 0;
  unsigned slot = 0;
  std::uint32_t generation = 0;
  std::uint64_t started_ns = 0;
  bool ready = false;      // has been idle (prefork/inetd) or lived 1 s (plain)
  bool term_sent = false;  // asked to stop (SIGTERM, or stop without a signal in inetd)
  bool kill_sent = false;
  std::uint64_t kill_at = 0;  // SIGKILL deadline once asked to stop; 0 = none
  corral_slot_state last_state = CORRAL_SLOT_STARTING;
  bool garbage_logged = false;
  std::uint64_t held_since = 0;  // lock_since_ns of the slot when first seen HELD
  std::uint64_t held_seen_at = 0;
  std::uint64_t held_requests_base = 0;  // other workers' requests at that moment
};

constexpr std::uint64_t kAuditSpacing = 200 * kMs;

// Connections waiting in the accept queues of `listeners` (audit.cpp).
unsigned queued_connections(const std::vector<std::shared_ptr<Listener>>& listeners);

// ---------------------------------------------------------------------------
class Job {
 public:
  JobConfig cfg;
  std::uint32_t generation = 0;
  std::vector<std::shared_ptr<Listener>> listeners;
  Scoreboard sb;
  AcceptLock lock;
  std::map<pid_t, WorkerRec> workers;
  std::map<pid_t, UniqueFd> spawn_reports;  // per worker: what failed before/at exec, if anything
  std::vector<bool> slot_used;
  JobState state = JobState::running;
  unsigned failures = 0;
  std::uint64_t backoff_ns = 0;
  std::uint64_t retry_at = 0;
  bool initial = true;
  bool removed = false;  // dropped by a reload: stop and forget once empty
  std::uint64_t excess_since = 0;
  std::uint64_t last_retire = 0;
  UniqueFd notify_read;   // workers write a byte when idle workers run short
  UniqueFd notify_write;  // inherited by workers as CORRAL_NOTIFY_FD (non-blocking)
  bool notify_armed = false;
  std::uint64_t notify_rearm_at = 0;
  std::uint64_t stall_since = 0;
  std::uint64_t stall_requests = 0;
  std::uint64_t spawn_window_start = 0;
  unsigned spawned_in_window = 0;
  std::uint64_t topup_at = 0;  // when a deferred top-up is due; 0: none pending
  int hint_delta = 0;
  bool sb_gone_logged = false;
  bool at_max = false;  // the current generation has workers.max workers
  std::vector<std::string> base_env;
  std::optional<Credentials> credentials;
  std::string listeners_text;

  [[nodiscard]] bool has_current_workers() const {
    return std::any_of(workers.begin(), workers.end(),
                       [&](const auto& kv) { return kv.second.generation == generation; });
  }
};

class Supervisor::Impl {
 public:
  explicit Impl(SupervisorOptions options) : options_(std::move(options)) {}

  int run();

 private:
  // set-up (supervisor.cpp)
  void block_signals();
  std::unique_ptr<Job> build_job(const JobConfig& cfg, bool reuse_scoreboard);
  void apply_config(Config config, bool initial);

  // loop (supervisor.cpp)
  void handle_signals() noexcept;
  void reap() noexcept;
  void arm_notify(Job& job) noexcept;
  void begin_stop(bool fast) noexcept;
  void reload() noexcept;
  std::uint64_t next_deadline(std::uint64_t now) const noexcept;
  void store_bound_listeners() noexcept;
  bool all_failed() const noexcept;

  // the workers of each job (maintain.cpp)
  void on_worker_exit(Job& job, WorkerRec rec, int status) noexcept;
  void maintain() noexcept;
  void maintain_job(Job& job, std::uint64_t now) noexcept;
  void spawn_worker(Job& job, std::uint64_t now) noexcept;
  void stop_worker(Job& job, WorkerRec& w, std::uint64_t now, bool signal) noexcept;
  void signal_worker(const Job& job, const WorkerRec& w, int sig) noexcept;
  void record_failure(Job& job, std::uint64_t now, bool counts, const std::string& why) noexcept;
  void write_headers(std::uint64_t now) noexcept;
  void notify_manager(std::uint64_t now) noexcept;

  // accept-mutex health (audit.cpp)
  void audit_token(Job& job, std::uint64_t now) noexcept;
  void replace_stuck_holders(Job& job, unsigned queued, std::uint64_t now) noexcept;
  void correct_idle_hint(Job& job, unsigned idle) noexcept;

  // binary upgrade (upgrade.cpp)
  void upgrade() noexcept;
  void adopt_upgrade_state(const std::string& fd_text);

  SupervisorOptions options_;
  ListenerSet listeners_;
  std::vector<std::unique_ptr<Job>> jobs_;
  std::vector<std::string> environment_;
  std::string scoreboard_dir_;
  UniqueFd epoll_;
  UniqueFd signal_fd_;
  Notifier notifier_;
  bool ready_sent_ = false;
  std::optional<rlimit> original_nofile_;
  std::string self_exe_;
  int truncations_logged_ = 0;
  pid_t self_ = 0;
  std::uint64_t started_realtime_ = 0;
  std::uint32_t generation_ = 1;
  bool stopping_ = false;
  bool fast_stop_ = false;
  bool failed_exit_ = false;
};

}  // namespace corral
