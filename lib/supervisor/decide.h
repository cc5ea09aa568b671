// Observe, decide, act: the pure pool policy of one job. decide() takes a snapshot of
// the job (what the supervisor's table and the validated scoreboard say), the job's
// pacing state and the time, and returns what to do. Every rule of the spare pool
// lives here: the spare bounds and the queue-aware deficit (plan_pool), the fork-rate
// and in-flight caps, the top-up wait, retire hysteresis, backoff, the start and busy
// timeouts, max_requests recycling, kill deadlines and the stuck lock holder.
// No system calls; unit-tested and simulated (tests/unit/decide_test.cpp).
#pragma once

#include <corral/protocol.h>
#include <sys/types.h>

#include <cstdint>
#include <map>
#include <vector>

#include "config/config.h"
#include "supervisor/lifecycle.h"

namespace corral {

inline constexpr std::uint64_t kDecideMs = 1000000ULL;
/// Workers starting at once, at most (a start is an exec: bounded CPU and memory).
inline constexpr unsigned kMaxStarting = 64;
/// Fork-rate cap: starts per kSpawnWindow, at most, except the configured workers.start.
inline constexpr unsigned kSpawnBurst = 256;
inline constexpr std::uint64_t kSpawnWindow = 100 * kDecideMs;
/// Idle workers above max_spare are retired only once the excess has lasted
/// kRetireHysteresis, then a quarter of the excess every kRetireInterval: an oscillating
/// load causes no fork/kill churn, and a burst's surplus is gone within seconds.
inline constexpr std::uint64_t kRetireHysteresis = 10000 * kDecideMs;
inline constexpr std::uint64_t kRetireInterval = 500 * kDecideMs;
/// A top-up (spares short of min_spare, but at least half of it idle and no connection
/// waiting) waits for a moment when no worker is busy, kTopUpMaxWait at the most: the
/// new workers' exec then does not compete for the CPU with a connection being served.
inline constexpr std::uint64_t kTopUpMaxWait = 50 * kDecideMs;
/// A worker holding the accept mutex this long while connections wait and none is
/// accepted (or while others accept past it) is stuck: it is replaced.
inline constexpr std::uint64_t kStuckHolder = 3000 * kDecideMs;
/// How often starting workers are looked at (their slot turning idle sends no event).
inline constexpr std::uint64_t kWatchStarting = 50 * kDecideMs;
/// plain mode: a copy that lives this long is up; one that exits sooner crashed.
inline constexpr std::uint64_t kPlainCrashWindow = 1000 * kDecideMs;

/// One worker as observed. `state` is already validated (garbage reads as EMPTY).
struct WorkerView {
  pid_t pid = 0;
  unsigned slot = 0;
  bool current = true;  // of the job's current generation
  WorkerPhase phase = WorkerPhase::starting;
  corral_slot_state state = CORRAL_SLOT_STARTING;
  std::uint64_t state_since = 0;  // from the slot (untrusted: may be 0 or in the future)
  std::uint64_t requests = 0;     // from the slot (untrusted)
  std::uint64_t started = 0;      // when corral spawned it
  std::uint64_t kill_at = 0;      // stopping: the deadline; 0 = none
  bool lock_held = false;         // the slot says it holds the accept mutex
  std::uint64_t lock_since = 0;
  std::uint64_t requests_limit = 0;  // its own max_requests draw; 0: spec.max_requests
  std::uint64_t retire_at = 0;       // its own end of life; 0: none
  std::uint64_t rss_bytes = 0;       // last memory sample; 0: none
};

/// The job as observed.
struct PoolSnapshot {
  Mode mode = Mode::prefork;
  WorkersSpec spec;
  Duration busy_timeout{0};
  Duration graceful_timeout{0};  // a worker past its lifetime and still busy: killed after this
  MemorySpec memory;
  JobPhase phase = JobPhase::running;
  std::uint64_t retry_at = 0;       // backing_off: the next probe
  bool stuck_checks = false;        // the accept mutex is one a holder can hog (pipe, fcntl)
  unsigned queued = 0;              // connections waiting in the listen queues
  std::vector<WorkerView> workers;  // every worker of the job's table, any generation
};

/// Per-holder watch of the stuck-lock rule.
struct HolderWatch {
  std::uint64_t lock_since = 0;   // the slot's lock_since when first seen held
  std::uint64_t seen_at = 0;      // when we first saw it
  std::uint64_t others_base = 0;  // other workers' requests at that moment
  std::uint64_t own_base = 0;     // its own requests at that moment
  std::uint64_t bypassed_at = 0;  // when others were first seen accepting past it; 0: not yet
};
/// A bypass counts only once it has lasted this long with the lock still held: a holder
/// that has just accepted and is handing the token back looks bypassed for a moment.
inline constexpr std::uint64_t kBypassConfirm = 200 * kDecideMs;

/// What decide() remembers between calls (one per job). Reset by a reload's new job,
/// except what the hand-over carries.
struct Pacing {
  bool start_pending = true;  // workers.start applies (start-up, reload)
  std::uint64_t window_start = 0;
  unsigned spawned_in_window = 0;
  std::uint64_t topup_at = 0;  // a deferred top-up is due; 0: none pending
  std::uint64_t excess_since = 0;
  std::uint64_t last_retire = 0;
  std::uint64_t stall_since = 0;  // connections have waited since, with no request served
  std::uint64_t stall_requests = 0;
  std::map<pid_t, HolderWatch> holders;
  /// memory.budget: the last median RSS of the job's live workers (what a new worker is
  /// assumed to need when none is live to measure); 0: never measured.
  std::uint64_t budget_median = 0;
};

enum class KillReason : std::uint8_t {
  start_timeout,
  busy_timeout,
  stuck_lock,
  graceful_timeout,
  max_lifetime,  // still busy at its lifetime + graceful_timeout
  memory,        // above memory.hard_max_rss
};
const char* to_string(KillReason reason) noexcept;

enum class StopReason : std::uint8_t { retire, max_requests, max_lifetime, memory, budget };

struct Decision {
  unsigned spawn = 0;
  std::vector<pid_t> became_ready;                  // feed WorkerEvent::ready
  std::vector<std::pair<pid_t, StopReason>> stops;  // feed WorkerEvent::stop
  std::vector<std::pair<pid_t, KillReason>> kills;  // feed kill or deadline
  bool at_max = false;  // the current generation has workers.max workers
  unsigned idle = 0;    // current generation, for STATUS= and the idle hint
  unsigned busy = 0;
  unsigned starting = 0;
  std::uint64_t wake_at = 0;  // call decide() again by then at the latest; 0: no need
  // memory.budget (0s without one): the pool's sampled total (every live worker, an
  // unsampled one counted at the median), the median, and whether the budget held back
  // workers the pool wanted (fewer started than plan_pool asked for).
  std::uint64_t pool_bytes = 0;
  std::uint64_t median_bytes = 0;
  bool budget_limited = false;
  unsigned budget_wanted = 0;  // budget_limited: how many plan_pool wanted to start
  bool budget_room = true;     // one more worker would fit (whether one is wanted or not)
};

/// memory.budget (a pool-wide bound, docs/LIMITS.md): while the live workers' total is
/// above it, the largest idle worker is retired first (gracefully), one after another
/// until the rest fit; no worker is started that would take the total (its own need
/// assumed to be the median of the live workers) above it. The budget wins over
/// workers.start and min_spare, with one floor: a job with no worker left may always
/// start one, and the last staying worker is never retired for the budget (a single
/// worker above it is for max_rss and hard_max_rss). Not applied in plain mode.
///
/// The pool decision. Pure but for `pacing`, which it updates. Acts only on pids of
/// `snapshot.workers`. Never plans more current-generation workers than workers.max.
Decision decide(const PoolSnapshot& snapshot, Pacing& pacing, std::uint64_t now);

}  // namespace corral
