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
#include <array>
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
#include "container/cgroup.h"
#include "listen/listener.h"
#include "metrics/render.h"
#include "metrics/server.h"
#include "notify/notify.h"
#include "scoreboard/scoreboard.h"
#include "spawn/spawn.h"
#include "supervisor/accept_lock.h"
#include "supervisor/decide.h"
#include "supervisor/handover.h"
#include "supervisor/lifecycle.h"
#include "supervisor/supervisor.h"

namespace corral {

constexpr std::uint64_t kMs = 1000000ULL;
constexpr std::uint64_t kSec = 1000000000ULL;
constexpr std::uint64_t kBackoffBase = 100 * kMs;
// The periodic look (audits, the idle-hint correction, orphans): truly periodic work
// only. Pool decisions are made on events and on the deadlines decide() returns.
constexpr std::uint64_t kAuditTick = 500 * kMs;
// A job's decision runs at most once per kDecideInterval (events that come faster are
// folded into one look); notifications from workers are read at the same pace.
constexpr std::uint64_t kDecideInterval = 5 * kMs;
constexpr std::uint64_t kNotifyInterval = 5 * kMs;
// Bytes read from a notify pipe per wake-up, at most: a flooding worker costs one
// read per kNotifyInterval, not a core.
constexpr size_t kNotifyDrain = 4096;
// Descendants left behind by an exited worker, or adopted as orphans (we are a child
// subreaper), get SIGTERM and, after this grace (or the job's graceful_timeout), SIGKILL.
constexpr std::uint64_t kOrphanGrace = 10 * kSec;

constexpr const char* kUpgradeEnv = "CORRAL_UPGRADE_STATE";

inline std::uint64_t to_ns(Duration d) {
  return d.count() > 0 ? static_cast<std::uint64_t>(d.count()) : 0;
}

inline std::string describe_status(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const char* name = sigabbrev_np(WTERMSIG(status));
    return std::string("killed by signal ") +
           (name != nullptr ? std::string("SIG") + name : std::to_string(WTERMSIG(status)));
  }
  return "ended with status " + std::to_string(status);
}

// A warm inetd job: each worker (an acceptor) has the program as its child, and a
// worker's memory is the acceptor's plus its children's (docs/LIMITS.md).
inline bool warm_inetd(const JobConfig& cfg) {
  return cfg.mode == Mode::inetd && cfg.inetd.warm;
}

struct WorkerRec {
  pid_t pid = 0;
  unsigned slot = 0;
  std::uint32_t generation = 0;
  std::uint64_t started_ns = 0;
  WorkerPhase phase = WorkerPhase::starting;
  std::uint64_t kill_at = 0;  // stopping: SIGKILL deadline; 0 = none
  corral_slot_state last_state = CORRAL_SLOT_STARTING;
  bool garbage_logged = false;       // log-once flag for a scribbled slot
  std::uint64_t requests_limit = 0;  // its own draw of max_requests (+ jitter); 0: none
  std::uint64_t retire_at = 0;       // its own draw of max_lifetime (+ jitter); 0: none
  std::uint64_t rss_bytes = 0;       // last memory sample (RSS or PSS); 0: not sampled
  std::uint64_t rss_sampled_at = 0;
  // Of that sample, a warm acceptor's program (its largest child, found in /proc, never
  // in the slot): for the log line only, never signalled. Not handed over: resampled.
  pid_t rss_program = 0;
  std::uint64_t rss_program_bytes = 0;
  // Token-hog watch: its /proc/PID/io rchar and its requests when corral last restored
  // the accept token (kUnknown: not watched).
  static constexpr std::uint64_t kUnknown = ~0ULL;
  std::uint64_t rchar_at_restore = kUnknown;
  std::uint64_t requests_at_restore = 0;
  // Metrics: why corral ended it (a kill or a recycle), and the most requests its slot
  // has shown (a slot's count is untrusted and could go down; the job total must not).
  std::optional<ExitReason> exit_reason;
  std::uint64_t requests_seen = 0;
  // Per-listener counters (the grown slot, docs/PROTOCOL.md 5.2): the listener addresses
  // of its generation in LISTEN_FDS order (shared by the workers of a generation),
  // whether it reports them, and the most each counter has shown (folded at reap).
  std::shared_ptr<const std::vector<std::string>> listeners;
  bool reports_listeners = false;
  std::array<std::uint64_t, CORRAL_SB_LISTENER_COUNTERS> accepted_seen{};
  std::uint64_t refused_seen = 0;
};

// A slot's counters are untrusted: each is clamped so that sums of them cannot wrap,
// and a worker's "seen" values only grow, so that no total ever goes backwards.
constexpr std::uint64_t kMaxSaneCount = 1ULL << 48;
void observe_counters(WorkerRec& w, const SlotView& slot) noexcept;

// A job's counters now: the folded ones plus every live worker's (their "seen" values
// updated from their slots).
struct JobTotals {
  std::uint64_t accepted = 0;
  std::uint64_t refused = 0;
  std::uint64_t refused_live = 0;
  std::uint64_t accepted_live = 0;
  std::map<std::string, std::uint64_t> listener_accepted;  // only listeners reported
};

constexpr std::uint64_t kAuditSpacing = 200 * kMs;

// The longest listen queue seen since the last scrape and since the last textfile, per
// listener (its display), sampled at every decision and audit tick.
struct QueuePeak {
  std::uint32_t scrape = 0;
  std::uint32_t file = 0;
};
using QueuePeaks = std::map<std::string, QueuePeak>;

// Connections waiting in the accept queues of `listeners` (audit.cpp); each listener's
// length also raises its entry in `peaks`, when given.
unsigned queued_connections(const std::vector<std::shared_ptr<Listener>>& listeners,
                            QueuePeaks* peaks = nullptr);

// ---------------------------------------------------------------------------
// What a job holds open: sockets, scoreboard, lock, notify pipe, spawn reports.
struct JobResources {
  std::vector<std::shared_ptr<Listener>> listeners;
  std::vector<AccessRules> access;  // allow:/deny: of each listener (same index)
  std::string listeners_text;
  Scoreboard sb;
  AcceptLock lock;
  UniqueFd notify_read;   // workers write a byte when idle workers run short
  UniqueFd notify_write;  // inherited by workers as CORRAL_NOTIFY_FD (non-blocking)
  std::vector<bool> slot_used;
  std::map<pid_t, UniqueFd> spawn_reports;  // per worker: what failed before/at exec, if anything
  std::vector<std::string> base_env;
  std::optional<Credentials> credentials;
  // The listener addresses new workers get (listeners' display, LISTEN_FDS order).
  std::shared_ptr<const std::vector<std::string>> listener_names;
  // cgroup: (the limits issue): each slot's cgroups while a worker uses the slot, and
  // whether they could not be made (then said once, and memory_max falls back to RSS
  // sampling as a hard bound).
  std::map<unsigned, SlotCgroup> slot_cgroups;
  bool cgroup_off = false;
  bool cgroup_used = false;  // a slot cgroup was made (its job directory is to be removed)
};

// The job's phase and failure accounting.
struct JobHealth {
  JobPhase phase = JobPhase::running;
  unsigned failures = 0;
  std::uint64_t backoff_ns = 0;
  std::uint64_t retry_at = 0;
  bool sb_gone_logged = false;
  bool children_unknown_logged = false;  // warm: /proc/PID/task/PID/children is missing
  bool budget_limited = false;   // memory.budget held starts back at the last look (logged once)
  std::uint64_t pool_bytes = 0;  // memory.budget: the pool's total at the last look
};

// When the job wants to be looked at again.
struct JobWakeups {
  bool notify_armed = false;
  std::uint64_t notify_rearm_at = 0;
  std::uint64_t decide_due = 0;  // an event asked for a decision; 0: none pending
  std::uint64_t last_decide = 0;
  std::uint64_t wake_at = 0;  // what the last decision asked for; 0: nothing
};

// Health checks of the idle hint (the accept lock keeps its own findings).
struct JobAudit {
  int hint_delta = 0;
  std::uint64_t last_audit = 0;
  std::uint64_t totals_published = 0;  // when the counters last went to the scoreboard header
};

class Job {
 public:
  JobConfig cfg;
  std::uint32_t generation = 0;
  std::map<pid_t, WorkerRec> workers;
  JobResources res;
  JobHealth health;
  Pacing pacing;
  JobWakeups wake;
  JobAudit audit;
  PoolCounters counters;  // metrics; carried across reloads and SIGUSR2
  bool at_max = false;    // observed: the current generation has workers.max workers

  [[nodiscard]] bool removed() const { return health.phase == JobPhase::removed; }
  [[nodiscard]] bool has_current_workers() const {
    return std::any_of(workers.begin(), workers.end(),
                       [&](const auto& kv) { return kv.second.generation == generation; });
  }
};

// Descendants that outlive their worker: a process group left behind, or a child we
// adopted as subreaper. Signalled (TERM, then KILL at kill_at) until gone.
struct Leftover;
/// The earliest SIGKILL deadline among leftovers not yet killed; 0: none.
std::uint64_t leftover_deadline(const std::vector<Leftover>& leftovers);

struct Leftover {
  pid_t id = 0;  // a process group id (group) or a pid (orphan)
  bool group = false;
  std::uint64_t kill_at = 0;
  bool killed = false;
};

// none -> (draining, SIGTERM with stop.drain) -> graceful -> fast; never backwards.
enum class StopMode { none, draining, graceful, fast };

// A SIGUSR2 whose new binary is being asked (`corral --handover-check`).
struct UpgradeCheck {
  pid_t check_pid = 0;  // 0: none running
  std::uint64_t deadline = 0;
  std::uint32_t generation_at_check = 0;
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
  void begin_stop(StopMode mode) noexcept;
  void begin_drain() noexcept;
  void roll_back_listeners(const std::vector<std::shared_ptr<Listener>>& before) noexcept;
  // Puts the socket filters of `job` (prefork/plain: its allow:/deny:) on its sockets.
  static Status apply_access(const Job& job);
  void reload() noexcept;
  std::uint64_t next_deadline(std::uint64_t now) const noexcept;
  void store_bound_listeners() noexcept;
  bool all_failed() const noexcept;

  // the workers of each job (maintain.cpp): events in, decisions, actions out
  void on_worker_exit(Job& job, WorkerRec rec, int status) noexcept;
  void job_event(Job& job, JobEvent event, std::uint64_t now, const std::string& why) noexcept;
  void worker_event(Job& job, WorkerRec& w, WorkerEvent event, std::uint64_t now) noexcept;
  void request_decision(Job& job, std::uint64_t now) noexcept;
  void run_due_decisions(std::uint64_t now) noexcept;
  void decide_job(Job& job, std::uint64_t now) noexcept;
  PoolSnapshot observe(Job& job, std::uint64_t now) noexcept;
  void act(Job& job, const Decision& decision, std::uint64_t now) noexcept;
  bool spawn_worker(Job& job, std::uint64_t now) noexcept;
  void signal_worker(const Job& job, const WorkerRec& w, int sig) noexcept;
  void periodic(std::uint64_t now) noexcept;
  void write_headers(std::uint64_t now) noexcept;
  void notify_manager(std::uint64_t now) noexcept;

  // descendants that outlive their worker (leftovers.cpp)
  void track_leftover_group(pid_t pgid, int stop_signal, std::uint64_t grace,
                            std::uint64_t now) noexcept;
  void adopt_orphans(std::uint64_t now) noexcept;
  void signal_leftovers(std::uint64_t now) noexcept;
  bool forget_leftover(pid_t pid) noexcept;
  void kill_all_leftovers() noexcept;

  // accept-mutex health (audit.cpp)
  std::uint64_t audit_token(Job& job, std::uint64_t now) noexcept;  // the next audit due, or 0
  void correct_idle_hint(Job& job, unsigned idle) noexcept;

  // binary upgrade (upgrade.cpp)
  void upgrade() noexcept;
  void adopt_upgrade_state(const std::string& fd_text);
  [[nodiscard]] Handover collect_handover() const;
  void finish_upgrade(int status, bool timed_out) noexcept;
  void exec_checked_upgrade(int status, bool timed_out) noexcept;
  void upgrade_result(const char* result) noexcept;

  // metrics and health (metrics.cpp)
  UniqueFd bind_metrics(const MetricsSpec& spec) const;
  void start_metrics(UniqueFd fd, const MetricsSpec& spec) noexcept;
  void stop_metrics() noexcept;
  HttpResponse serve_http(std::string_view path) noexcept;
  SupervisorSample sample_metrics(bool for_textfile, std::uint64_t now) noexcept;
  HttpResponse readiness(std::uint64_t now) noexcept;
  void sample_queues(std::uint64_t now) noexcept;
  void write_textfile_if_due(std::uint64_t now) noexcept;
  void count_exit(Job& job, ExitReason reason) noexcept;
  JobTotals job_totals(Job& job) noexcept;
  void publish_totals(Job& job, std::uint64_t now) noexcept;
  void fold_counters(Job& job, WorkerRec& rec, const SlotView& slot) noexcept;
  void count_oom_kill(Job& job, unsigned slot) noexcept;

  // per-worker cgroups (maintain.cpp)
  /// The worker in slot `rec.slot` was killed by the kernel's OOM killer (its slot
  /// cgroup's count, or the supervisor's cgroup's without one): its exit reason becomes
  /// `oom`. The one place that learns it, for per-slot OOM counts.
  void on_oom_kill(Job& job, WorkerRec& rec) noexcept;
  /// Opens (or, adopting an upgrade's workers, re-opens) the cgroups of `slot`.
  SlotCgroup* slot_cgroup(Job& job, unsigned slot, bool adopt) noexcept;
  /// The slot's cgroups after its worker is reaped: removed, or kept for a later try.
  void release_slot_cgroup(Job& job, unsigned slot) noexcept;
  void retry_cgroup_leftovers() noexcept;
  /// A job forgotten (removed, or corral stopping): its slot and job cgroup directories.
  void remove_job_cgroups(Job& job) noexcept;

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
  StopMode stop_ = StopMode::none;
  bool failed_exit_ = false;  // the exit code: every job failed
  std::uint64_t next_audit_ = 0;
  std::vector<Leftover> leftovers_;
  std::uint64_t oom_kills_seen_ = 0;              // the memory cgroup's oom_kill count, last seen
  std::vector<SlotCgroup> cgroup_leftovers_;      // slot cgroups still holding processes
  std::vector<std::string> cgroup_jobs_pending_;  // job directories to go after them
  UpgradeCheck upgrade_;
  bool reload_pending_ = false;                           // a SIGHUP came during an upgrade check
  std::map<std::string, std::uint64_t> upgrade_results_;  // ok | rejected | failed
  std::uint64_t drain_until_ = 0;                         // draining: when the graceful stop begins
  /// Stopping: workers are leaving (a drain is not stopping yet: it serves on).
  [[nodiscard]] bool stopping() const {
    return stop_ == StopMode::graceful || stop_ == StopMode::fast;
  }
  [[nodiscard]] bool draining() const { return stop_ == StopMode::draining; }
  std::map<std::string, std::uint64_t> reload_results_;  // ok | rejected | failed
  // The metrics endpoint (metrics.cpp), its address as shown, and the textfile's pace.
  std::unique_ptr<MetricsServer> metrics_;
  std::string metrics_display_;
  bool metrics_unlink_ = false;  // a unix socket file corral bound: removed at exit
  QueuePeaks queue_peaks_;
  std::uint64_t textfile_due_ = 0;
  std::string textfile_error_;  // the last failure, logged once until it changes
};

}  // namespace corral
