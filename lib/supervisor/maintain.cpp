// The workers of each job: events in (exits, failures, stops), the decision (observe,
// decide, act) and its actions out (starts, stops, kills), the scoreboard headers and
// the service manager's STATUS. The policy itself is decide.cpp; the transitions are
// lifecycle.cpp.
#include "supervisor/impl.h"

#include <corral/protocol.h>
#include <fcntl.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "common/duration.h"
#include "common/proc_memory.h"
#include "container/cgroup.h"
#include "container/limits.h"
#include "log/log.h"
#include "scoreboard/scoreboard.h"
#include "spawn/spawn.h"
#include "supervisor/conventions.h"
#include "supervisor/decide.h"
#include "supervisor/inetd.h"
#include "supervisor/lifecycle.h"

namespace corral {
namespace {

corral_job_mode wire_mode(Mode m) {
  switch (m) {
    case Mode::prefork: return CORRAL_MODE_PREFORK;
    case Mode::inetd: return CORRAL_MODE_INETD;
    case Mode::plain: return CORRAL_MODE_PLAIN;
  }
  return CORRAL_MODE_PREFORK;
}

// Why a worker left, for corral_worker_exits_total (failures from the spawn report
// and corral's own kills and recycles are decided by the caller).
ExitReason judge_exit(const Job& job, const WorkerRec& rec, const SlotView& slot, int status,
                      bool asked, bool quota_done, std::uint64_t now) {
  if (rec.exit_reason) return *rec.exit_reason;
  if (quota_done) return ExitReason::max_requests;
  if (asked) return ExitReason::normal;
  const bool program_done = job.cfg.mode == Mode::inetd && slot.state == CORRAL_SLOT_BUSY;
  if (program_done) return WIFSIGNALED(status) ? ExitReason::signal : ExitReason::normal;
  const bool never_ready = rec.phase == WorkerPhase::starting &&
                           (job.cfg.mode == Mode::plain ? now - rec.started_ns < kPlainCrashWindow
                                                        : slot.state == CORRAL_SLOT_STARTING);
  if (never_ready) return ExitReason::crash;
  if (WIFSIGNALED(status)) return ExitReason::signal;
  if (WIFEXITED(status) && WEXITSTATUS(status) != 0) return ExitReason::crash;
  return ExitReason::normal;
}

const char* lock_env_kind(AcceptMutex kind) {
  switch (kind) {
    case AcceptMutex::pipe: return "pipe";
    case AcceptMutex::fcntl: return "fcntl";
    case AcceptMutex::epoll: return "epoll";
    default: return "none";
  }
}

// The listener addresses of the job's current sockets, shared by the workers started
// with them (rebuilt when a reload changed them). nullptr when out of memory.
std::shared_ptr<const std::vector<std::string>> current_listener_names(JobResources& res) {
  try {
    std::vector<std::string> names;
    names.reserve(res.listeners.size());
    for (const auto& l : res.listeners) names.push_back(l->display);
    if (!res.listener_names || *res.listener_names != names)
      res.listener_names = std::make_shared<const std::vector<std::string>>(std::move(names));
    return res.listener_names;
  } catch (...) {
    return nullptr;
  }
}

// A uniform draw in [0, range] (xorshift; not for secrets, only to spread retirements).
std::uint64_t draw(std::uint64_t range) {
  if (range == 0) return 0;
  static std::uint64_t state = monotonic_ns() ^ (static_cast<std::uint64_t>(::getpid()) << 32);
  state ^= state << 13;
  state ^= state >> 7;
  state ^= state << 17;
  return state % (range + 1);
}

}  // namespace

// ---------------------------------------------------------------------------
// Events in.

void Supervisor::Impl::on_worker_exit(Job& job, WorkerRec rec, int status) noexcept {
  LogContext log_ctx{job.cfg.name, rec.slot, rec.pid};
  auto now = monotonic_ns();
  SlotView slot = job.res.sb.read_slot(rec.slot);
  // Its connections (and refusals, per listener too) join the job's totals before the
  // slot is freed.
  fold_counters(job, rec, slot);
  if (rec.slot < job.res.slot_used.size()) job.res.slot_used[rec.slot] = false;
  job.res.sb.free_slot(rec.slot, now);
  job.pacing.holders.erase(rec.pid);
  // Whatever it left in its process group gets the stop signal, then SIGKILL.
  if (::kill(-rec.pid, 0) == 0) {
    track_leftover_group(rec.pid, job.cfg.stop_signal, to_ns(job.cfg.graceful_timeout), now);
  }
  const bool current = rec.generation == job.generation && !job.removed();
  const auto& name = job.cfg.name;
  const bool asked = rec.phase == WorkerPhase::stopping || rec.phase == WorkerPhase::killing;
  auto how = describe_status(status);
  std::optional<Error> failure;
  if (auto it = job.res.spawn_reports.find(rec.pid); it != job.res.spawn_reports.end()) {
    failure = read_spawn_report(it->second.get(), job.cfg.command.front());
    job.res.spawn_reports.erase(it);
  }
  request_decision(job, now);  // an exit can lower the idle count: look again now
  if (failure) {
    release_slot_cgroup(job, rec.slot);
    count_exit(job, ExitReason::failed_start);
    // One clear line per failure; the child exited 127 right after reporting.
    if (job.cfg.mode == Mode::inetd && slot.state == CORRAL_SLOT_BUSY) {
      spdlog::error("job {}: cannot execute {}: {} (connection closed)", name,
                    job.cfg.command.front(), std::strerror(failure->code));
    } else {
      spdlog::error("job {}: spawn worker (slot {}): {}", name, rec.slot, failure->to_string());
    }
    if (current && !stopping()) {
      // Out of fds, processes or memory is the machine's state, not the job's fault.
      const int code = failure->code;
      const bool resources = code == EMFILE || code == ENFILE || code == EAGAIN || code == ENOMEM;
      job_event(job, resources ? JobEvent::soft_failure : JobEvent::failure, now,
                resources ? "could not be started (resources short)" : "could not be started");
    }
    return;
  }
  // A SIGKILL corral did not send: the kernel's OOM killer (when the memory cgroup's
  // counter moved), or someone else. Named, never silent; counted as a failure only for
  // a worker that had not become ready (a failed start), as any crash.
  // With its own cgroup the count is that worker's alone (cgroup:).
  SlotCgroup* own = nullptr;
  if (auto it = job.res.slot_cgroups.find(rec.slot); it != job.res.slot_cgroups.end())
    own = &it->second;
  if (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL && rec.phase != WorkerPhase::killing) {
    // The counters are read here only, not at every exit (churn: thousands a second).
    // corral's own count is taken either way, so that a slot cgroup's kill (which counts
    // in its parents too) is not blamed later on another job's unexplained SIGKILL.
    const auto kills = oom_kills(container_limits());
    const bool oom_here =
        own != nullptr ? own->oom_kills() > own->oom_base : kills > oom_kills_seen_;
    oom_kills_seen_ = kills;
    const std::string why =
        !oom_here ? ""
        : own != nullptr
            ? fmt::format(" (an OOM kill in its own cgroup {}{})", own->describe(),
                          job.cfg.cgroup.memory_max != 0
                              ? fmt::format(", cgroup.memory_max {}", job.cfg.cgroup.memory_max)
                              : "")
            : std::string(" (an OOM kill: the memory cgroup's oom_kill count rose)");
    spdlog::warn("job {}: worker {} (slot {}) was killed by a SIGKILL corral did not send{}", name,
                 rec.pid, rec.slot, why);
    rec.exit_reason = ExitReason::signal;
    if (oom_here) on_oom_kill(job, rec);
  }
  release_slot_cgroup(job, rec.slot);
  // In inetd mode a program ending is the end of a connection, not an event.
  const bool program_done = job.cfg.mode == Mode::inetd && slot.state == CORRAL_SLOT_BUSY;
  const auto quota = job.cfg.workers.max_requests;
  const bool quota_done = job.cfg.mode == Mode::prefork && quota != 0 && slot.requests >= quota &&
                          WIFEXITED(status) && WEXITSTATUS(status) == 0;
  count_exit(job, judge_exit(job, rec, slot, status, asked, quota_done, now));
  if (quota_done && !asked) {
    spdlog::info(
        "job {}: worker {} (slot {}) served its {} connections (max_requests); replacing it", name,
        rec.pid, rec.slot, quota);
  } else if (program_done) {
    spdlog::debug("job {}: program {} (slot {}) {}", name, rec.pid, rec.slot, how);
  } else if (asked || stopping()) {
    spdlog::info("job {}: worker {} (slot {}) {}", name, rec.pid, rec.slot, how);
  } else {
    spdlog::warn("job {}: worker {} (slot {}) {}", name, rec.pid, rec.slot, how);
  }
  if (!current || stopping()) return;

  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  if (job.cfg.mode == Mode::prefork && code == CORRAL_EXIT_FATAL) {
    job_event(
        job, JobEvent::give_up, now,
        fmt::format("worker {} reported a broken configuration (exit {}); not respawning the job",
                    rec.pid, CORRAL_EXIT_FATAL));
    return;
  }
  if (job.cfg.mode == Mode::prefork && code == CORRAL_EXIT_SICK) {
    job_event(job, JobEvent::soft_failure, now, "reported resources short (exit 75)");
    return;
  }
  // prefork: a worker that never became idle; inetd: an acceptor that died before
  // accepting (one that accepted marked its slot busy, and the program's exit is its
  // own); plain: a copy that lived less than a second.
  const bool crashed = rec.phase == WorkerPhase::starting &&
                       (job.cfg.mode == Mode::plain ? now - rec.started_ns < kPlainCrashWindow
                                                    : slot.state == CORRAL_SLOT_STARTING);
  // Warm inetd: an acceptor that leaves unasked and not busy with a nonzero status lost
  // its waiting program (it exited, crashed or wrote with no client; exit 3) or failed.
  const bool warm_lost = job.cfg.mode == Mode::inetd && job.cfg.inetd.warm && !asked &&
                         slot.state != CORRAL_SLOT_BUSY && code != 0;
  if (crashed) {
    job_event(job, JobEvent::failure, now, "exited before it was ready");
  } else if (warm_lost) {
    job_event(job, JobEvent::failure, now, "lost its waiting warm program");
  }
}

void Supervisor::Impl::job_event(Job& job, JobEvent event, std::uint64_t now,
                                 const std::string& why) noexcept {
  LogContext log_ctx{job.cfg.name};
  auto& h = job.health;
  const auto t = transition_job(h.phase, event);
  const JobPhase before = h.phase;
  h.phase = t.next;
  switch (t.action) {
    case JobAction::none: break;
    case JobAction::reset_failures:
      if (h.failures > 0 || before == JobPhase::backing_off)
        spdlog::info("job {}: {}; failure count reset", job.cfg.name, why);
      h.failures = 0;
      h.backoff_ns = 0;
      break;
    case JobAction::back_off: {
      const bool counts = event == JobEvent::failure;
      if (counts) ++h.failures;
      const auto max = job.cfg.restart.max_failures;
      if (counts && max != 0 && h.failures >= max) {
        job_event(job, JobEvent::give_up, now, fmt::format("{} consecutive failures", h.failures));
        return;
      }
      auto cap = std::max<std::uint64_t>(to_ns(job.cfg.restart.backoff_max), kBackoffBase);
      h.backoff_ns = h.backoff_ns == 0 ? kBackoffBase : std::min(cap, h.backoff_ns * 2);
      h.retry_at = now + h.backoff_ns;
      spdlog::warn("job {}: a worker {}; backing off, next try in {} (failure {}{})", job.cfg.name,
                   why, format_duration(Duration(h.backoff_ns)), h.failures,
                   max != 0 ? " of " + std::to_string(max) : "");
      break;
    }
    case JobAction::give_up:
      spdlog::error("job {}: {}; giving up (the job is marked failed)", job.cfg.name, why);
      break;
    case JobAction::stop_workers:
      for (auto& [pid, w] : job.workers) {
        // inetd: a running program is left to finish within graceful_timeout; idle
        // acceptors are stopped.
        worker_event(job, w, WorkerEvent::stop, now);
      }
      break;
  }
  request_decision(job, now);
}

void Supervisor::Impl::worker_event(Job& job, WorkerRec& w, WorkerEvent event,
                                    std::uint64_t now) noexcept {
  if (event == WorkerEvent::stop && job.cfg.mode == Mode::inetd) {
    // An acceptor that has accepted is (or is about to become) the legacy program,
    // which corral never sends its stop signal: look at the slot now, not at the last
    // look. An acceptor still idle here cannot get through accept and exec before the
    // signal lands; one that accepted meanwhile only sets its stop flag.
    if (job.res.sb.read_slot(w.slot).state == CORRAL_SLOT_BUSY) {
      w.last_state = CORRAL_SLOT_BUSY;
      event = WorkerEvent::release;
    }
  }
  const auto t = transition_worker(w.phase, event);
  w.phase = t.next;
  switch (t.action) {
    case WorkerAction::none: break;
    case WorkerAction::mark_ready:
      // Idle means exec'd: the spawn report can only say EOF now (inetd keeps it for
      // the program's exec).
      if (job.cfg.mode != Mode::inetd) job.res.spawn_reports.erase(w.pid);
      if (w.generation == job.generation)
        job_event(job, JobEvent::worker_up, now, fmt::format("worker {} is up", w.pid));
      break;
    case WorkerAction::signal_stop:
    case WorkerAction::arm_deadline: {
      const auto grace = to_ns(job.cfg.graceful_timeout);
      w.kill_at = grace == 0 ? now : now + grace;
      // The job's stop_signal (TERM unless configured), wherever a worker is asked to
      // leave gracefully: stop, reload, retire, recycle.
      if (t.action == WorkerAction::signal_stop) signal_worker(job, w, job.cfg.stop_signal);
      job.res.sb.set_slot_state(w.slot, CORRAL_SLOT_STOPPING, now);
      break;
    }
    case WorkerAction::kill_group:
      // The worker's process group (it leads one: spawn setpgid(0, 0)), so that what it
      // started dies with it; then the worker itself, in case it left the group.
      if (w.pid > 1 && job.workers.count(w.pid) != 0) ::kill(-w.pid, SIGKILL);
      signal_worker(job, w, SIGKILL);
      break;
  }
}

void Supervisor::Impl::signal_worker(const Job& job, const WorkerRec& w, int sig) noexcept {
  // Only pids from our own table, not yet reaped (a zombie keeps its pid), ever get a
  // signal (Apache's ap_mpm_safe_kill). Never a pid read from the scoreboard.
  if (w.pid <= 1 || job.workers.find(w.pid) == job.workers.end()) return;
  ::kill(w.pid, sig);
}

// ---------------------------------------------------------------------------
// Observe, decide, act.

void Supervisor::Impl::request_decision(Job& job, std::uint64_t now) noexcept {
  // At most one look per kDecideInterval: events closer together share it.
  const auto due = std::max(now, job.wake.last_decide + kDecideInterval);
  if (job.wake.decide_due == 0 || due < job.wake.decide_due) job.wake.decide_due = due;
}

void Supervisor::Impl::run_due_decisions(std::uint64_t now) noexcept {
  for (auto& job : jobs_) {
    auto& wk = job->wake;
    const bool asked = wk.decide_due != 0 && now >= wk.decide_due;
    const bool woken = wk.wake_at != 0 && now >= wk.wake_at;
    if (asked || woken) decide_job(*job, now);
  }
}

PoolSnapshot Supervisor::Impl::observe(Job& job, std::uint64_t now) noexcept {
  PoolSnapshot snap;
  snap.mode = job.cfg.mode;
  snap.spec = job.cfg.workers;
  snap.busy_timeout = job.cfg.busy_timeout;
  snap.graceful_timeout = job.cfg.graceful_timeout;
  snap.memory = job.cfg.memory;
  // cgroup: that could not be made: memory_max falls back to RSS sampling, as a hard bound.
  if (job.res.cgroup_off && job.cfg.cgroup.memory_max != 0 &&
      (snap.memory.hard_max_rss == 0 || job.cfg.cgroup.memory_max < snap.memory.hard_max_rss))
    snap.memory.hard_max_rss = job.cfg.cgroup.memory_max;
  const bool budget = job.cfg.memory.budget != 0 && job.cfg.mode != Mode::plain;
  const bool memory_bounded = snap.memory.max_rss != 0 || snap.memory.hard_max_rss != 0 || budget;
  snap.phase = job.health.phase;
  snap.retry_at = job.health.retry_at;
  snap.stuck_checks =
      job.res.lock.kind == AcceptMutex::pipe || job.res.lock.kind == AcceptMutex::fcntl;
  if (job.cfg.mode != Mode::plain)
    snap.queued = queued_connections(job.res.listeners, &queue_peaks_);
  snap.workers.reserve(job.workers.size());
  for (auto& [pid, w] : job.workers) {
    WorkerView v;
    v.pid = pid;
    v.slot = w.slot;
    v.current = w.generation == job.generation && !job.removed();
    v.phase = w.phase;
    v.started = w.started_ns;
    v.kill_at = w.kill_at;
    v.requests_limit = w.requests_limit;
    v.retire_at = w.retire_at;
    // The budget covers every live worker of the job (an old generation's too).
    if (memory_bounded && (v.current || budget) &&
        now - w.rss_sampled_at >= to_ns(job.cfg.memory.interval)) {
      const WorkerMemory m = worker_memory(
          pid, job.cfg.memory.pss ? MemoryMeasure::pss : MemoryMeasure::rss, warm_inetd(job.cfg));
      w.rss_bytes = m.bytes;
      w.rss_program = m.largest_child;
      w.rss_program_bytes = m.child_bytes;
      w.rss_sampled_at = now;
      if (m.children_unknown && !job.health.children_unknown_logged) {
        spdlog::warn(
            "job {}: /proc/{}/task/{}/children is missing (a kernel without "
            "CONFIG_PROC_CHILDREN): memory of its warm workers counts the acceptors only",
            job.cfg.name, pid, pid);
        job.health.children_unknown_logged = true;
      }
    }
    v.rss_bytes = w.rss_bytes;
    if (v.current && w.phase != WorkerPhase::stopping && w.phase != WorkerPhase::killing) {
      SlotView s = job.res.sb.read_slot(w.slot);
      if (!s.state_valid && !w.garbage_logged) {
        LogContext worker_ctx{job.cfg.name, w.slot, w.pid};
        spdlog::warn("job {}: worker {} wrote garbage into scoreboard slot {}; ignoring it",
                     job.cfg.name, w.pid, w.slot);
        w.garbage_logged = true;
      }
      v.state = s.state;
      v.state_since = s.state_since_ns;
      v.requests = s.requests;
      v.lock_held = s.lock == CORRAL_LOCK_HELD;
      v.lock_since = s.lock_since_ns;
      w.last_state = job.cfg.mode == Mode::plain ? CORRAL_SLOT_RUNNING : s.state;
    }
    snap.workers.push_back(v);
  }
  return snap;
}

void Supervisor::Impl::decide_job(Job& job, std::uint64_t now) noexcept {
  LogContext job_ctx{job.cfg.name};
  job.wake.decide_due = 0;
  job.wake.last_decide = now;
  const std::uint64_t audit_at = job.cfg.mode != Mode::plain ? audit_token(job, now) : 0;
  const PoolSnapshot snap = observe(job, now);
  const Decision d = decide(snap, job.pacing, now);
  act(job, d, now);
  if (job.cfg.memory.max_rss != 0 || job.cfg.memory.hard_max_rss != 0 ||
      (job.cfg.memory.budget != 0 && job.cfg.mode != Mode::plain) ||
      (job.res.cgroup_off && job.cfg.cgroup.memory_max != 0)) {
    const auto sample_at = now + to_ns(job.cfg.memory.interval);
    if (job.wake.wake_at == 0 || sample_at < job.wake.wake_at) job.wake.wake_at = sample_at;
  }
  if (audit_at != 0 && (job.wake.wake_at == 0 || audit_at < job.wake.wake_at))
    job.wake.wake_at = audit_at;
  if (job.cfg.mode != Mode::plain) correct_idle_hint(job, d.idle);
}

void Supervisor::Impl::act(Job& job, const Decision& d, std::uint64_t now) noexcept {
  const auto& name = job.cfg.name;
  for (pid_t pid : d.became_ready) {
    if (auto it = job.workers.find(pid); it != job.workers.end())
      worker_event(job, it->second, WorkerEvent::ready, now);
  }
  for (const auto& [pid, reason] : d.stops) {
    auto it = job.workers.find(pid);
    if (it == job.workers.end()) continue;
    auto& w = it->second;
    LogContext worker_ctx{name, w.slot, w.pid};
    if (reason == StopReason::max_requests) {
      w.exit_reason = ExitReason::max_requests;
      // The same words as when the worker leaves on its own at the quota (on_worker_exit).
      spdlog::info(
          "job {}: worker {} (slot {}) served its {} connections (max_requests); replacing it",
          name, w.pid, w.slot,
          w.requests_limit != 0 ? w.requests_limit : job.cfg.workers.max_requests);
    } else if (reason == StopReason::max_lifetime) {
      spdlog::info("job {}: worker {} (slot {}) reached its lifetime ({}); recycling it", name,
                   w.pid, w.slot, format_duration(Duration(w.retire_at - w.started_ns)));
      w.exit_reason = ExitReason::max_lifetime;
    } else if (reason == StopReason::memory) {
      spdlog::warn(
          "job {}: worker {} (slot {}) uses {} bytes of memory, above max_rss {}; "
          "retiring it",
          name, w.pid, w.slot, w.rss_bytes, job.cfg.memory.max_rss);
      w.exit_reason = ExitReason::memory;
    } else if (reason == StopReason::budget) {
      spdlog::warn(
          "job {}: the pool uses {} bytes of memory, above memory.budget {}; retiring its "
          "largest idle worker {} (slot {}, {} bytes)",
          name, d.pool_bytes, job.cfg.memory.budget, w.pid, w.slot, w.rss_bytes);
      w.exit_reason = ExitReason::memory;
    } else {
      spdlog::info("job {}: idle workers above max_spare {}; retiring worker {} (slot {})", name,
                   job.cfg.workers.max_spare, w.pid, w.slot);
    }
    worker_event(job, w, WorkerEvent::stop, now);
  }
  for (const auto& [pid, reason] : d.kills) {
    auto it = job.workers.find(pid);
    if (it == job.workers.end()) continue;  // decide() names only table pids; belt and braces
    auto& w = it->second;
    if (w.phase == WorkerPhase::killing) continue;
    LogContext worker_ctx{name, w.slot, w.pid};
    switch (reason) {
      case KillReason::start_timeout: w.exit_reason = ExitReason::start_timeout; break;
      case KillReason::busy_timeout: w.exit_reason = ExitReason::busy_timeout; break;
      case KillReason::stuck_lock: w.exit_reason = ExitReason::stuck_lock; break;
      case KillReason::max_lifetime: w.exit_reason = ExitReason::max_lifetime; break;
      case KillReason::memory: w.exit_reason = ExitReason::memory; break;
      case KillReason::graceful_timeout: break;  // asked to stop already: stays as it was
    }
    switch (reason) {
      case KillReason::graceful_timeout:
        spdlog::warn("job {}: worker {} (slot {}) did not stop within graceful_timeout; SIGKILL",
                     name, w.pid, w.slot);
        break;
      case KillReason::start_timeout:
        spdlog::warn("job {}: worker {} (slot {}) still starting after {}; killing it", name, w.pid,
                     w.slot, format_duration(job.cfg.workers.start_timeout));
        break;
      case KillReason::busy_timeout:
        spdlog::warn("job {}: worker {} (slot {}) busy for more than {}; killing it", name, w.pid,
                     w.slot, format_duration(job.cfg.busy_timeout));
        break;
      case KillReason::max_lifetime:
        spdlog::warn(
            "job {}: worker {} (slot {}) still busy at its lifetime plus "
            "graceful_timeout; killing it",
            name, w.pid, w.slot);
        break;
      case KillReason::memory: {
        // hard_max_rss, or cgroup.memory_max enforced by sampling (no cgroup could be made).
        const auto hard = job.cfg.memory.hard_max_rss;
        const auto cg_max = job.res.cgroup_off ? job.cfg.cgroup.memory_max : 0;
        // A warm acceptor: the program the size is mostly made of (its child, which goes
        // with it: same process group, PR_SET_PDEATHSIG). Only the acceptor is signalled.
        const std::string program = w.rss_program != 0
                                        ? fmt::format(", its warm program {} {} of them",
                                                      w.rss_program, w.rss_program_bytes)
                                        : std::string();
        if (cg_max != 0 && (hard == 0 || cg_max < hard)) {
          spdlog::warn(
              "job {}: worker {} (slot {}) uses {} bytes of memory{}, above cgroup.memory_max {} "
              "(enforced by sampling: no cgroup); killing it",
              name, w.pid, w.slot, w.rss_bytes, program, cg_max);
        } else {
          spdlog::warn(
              "job {}: worker {} (slot {}) uses {} bytes of memory{}, above "
              "hard_max_rss {}; killing it",
              name, w.pid, w.slot, w.rss_bytes, program, hard);
        }
        break;
      }
      case KillReason::stuck_lock:
        spdlog::warn(
            "job {}: worker {} (slot {}) has held the accept mutex for {} while connections "
            "waited; replacing it",
            name, w.pid, w.slot, format_duration(Duration(kStuckHolder)));
        break;
    }
    worker_event(job, w,
                 reason == KillReason::graceful_timeout ? WorkerEvent::deadline : WorkerEvent::kill,
                 now);
  }
  job.health.pool_bytes = d.pool_bytes;
  // Held back until one more worker fits again (not merely until none is wanted): said
  // once each way, not at every look.
  const bool limited = d.budget_limited || (job.health.budget_limited && !d.budget_room);
  if (limited != job.health.budget_limited && job.cfg.memory.budget != 0) {
    if (limited) {
      spdlog::warn(
          "job {}: memory.budget {} holds no more workers (the pool uses {} bytes; a new one "
          "is assumed to need {}, the median): starting {} of the {} wanted{}",
          name, job.cfg.memory.budget, d.pool_bytes, d.median_bytes, d.spawn, d.budget_wanted,
          d.idle < job.cfg.workers.min_spare
              ? fmt::format(", below min_spare {}", job.cfg.workers.min_spare)
              : "");
    } else {
      spdlog::info("job {}: memory.budget {} has room again (the pool uses {} bytes)", name,
                   job.cfg.memory.budget, d.pool_bytes);
    }
    job.health.budget_limited = limited;
  }
  const bool was_at_max = job.at_max;
  job.at_max = d.at_max;
  if (!was_at_max && job.at_max) ++job.counters.max_reached;
  job.res.sb.set_at_max(job.at_max);  // every look: a reload may have left a stale value
  if (was_at_max && !job.at_max && job.res.notify_read && !job.wake.notify_armed) arm_notify(job);
  unsigned started = 0;
  for (; started < d.spawn && may_spawn(job.health.phase); ++started) {
    // A start that failed outright (fork, exec of the acceptor...) ends this round.
    if (!spawn_worker(job, now)) break;
  }
  if (job.health.phase == JobPhase::backing_off && started > 0)
    job.health.retry_at = now + job.health.backoff_ns;
  job.wake.wake_at = d.wake_at;
  // A failed start changed the phase: its retry needs a look.
  if (job.health.phase == JobPhase::backing_off)
    job.wake.wake_at = job.wake.wake_at == 0 ? job.health.retry_at
                                             : std::min(job.wake.wake_at, job.health.retry_at);
}

bool Supervisor::Impl::spawn_worker(Job& job, std::uint64_t now) noexcept {
  LogContext job_ctx{job.cfg.name};
  auto& res = job.res;
  unsigned slot = 0;
  while (slot < res.slot_used.size() && res.slot_used[slot]) ++slot;
  if (slot >= res.slot_used.size()) {
    spdlog::error("job {}: no free scoreboard slot", job.cfg.name);
    return false;
  }
  const auto& cfg = job.cfg;
  SpawnPlan plan;
  plan.path = cfg.command.front();
  plan.argv = cfg.command;
  plan.env = res.base_env;
  plan.cwd = cfg.cwd;
  plan.credentials = res.credentials;
  plan.parent = self_;
  plan.nofile = original_nofile_;
  // An inetd program leads its own session, as under xinetd and systemd's Accept=yes
  // (a CPU autogroup of its own on a busy machine: docs/BENCHMARKS.md section 14).
  plan.new_session = cfg.mode == Mode::inetd;
  for (const auto& l : cfg.limits)
    plan.rlimits.emplace_back(l.resource,
                              rlimit{static_cast<rlim_t>(l.soft), static_cast<rlim_t>(l.hard)});
  std::string names;
  for (const auto& l : res.listeners) {
    plan.inherit.push_back(l->fd.get());
    names += (names.empty() ? "" : ":") + l->name;
  }
  if (!res.listeners.empty()) {
    set_env(plan.env, "LISTEN_FDS", std::to_string(res.listeners.size()));
    set_env(plan.env, "LISTEN_FDNAMES", names);
    plan.listen_pid = true;
  }
  if (cfg.mode != Mode::plain) {
    if (res.lock.fd) {
      set_env(plan.env, CORRAL_ENV_LOCK_FD, std::to_string(3 + plan.inherit.size()));
      plan.inherit.push_back(res.lock.fd.get());
    }
    set_env(plan.env, CORRAL_ENV_LOCK_KIND, lock_env_kind(res.lock.kind));
    set_env(plan.env, CORRAL_ENV_SCOREBOARD_FD, std::to_string(3 + plan.inherit.size()));
    plan.inherit.push_back(res.sb.fd());
    if (res.notify_write) {
      set_env(plan.env, CORRAL_ENV_NOTIFY_FD, std::to_string(3 + plan.inherit.size()));
      plan.inherit.push_back(res.notify_write.get());
    }
    set_env(plan.env, CORRAL_ENV_SLOT, std::to_string(slot));
    set_env(plan.env, CORRAL_ENV_GENERATION, std::to_string(job.generation));
  }
  if (cfg.cgroup.any() && !res.cgroup_off) {
    if (SlotCgroup* cg = slot_cgroup(job, slot, false)) plan.cgroup_procs = cg->procs_fds();
  }
  // Claim the slot before the fork so the worker never sees it EMPTY.
  const auto oom_kills = job.counters.slot_oom_kills.find(slot);
  res.sb.claim_slot(slot, 0, job.generation, now,
                    oom_kills != job.counters.slot_oom_kills.end() ? oom_kills->second : 0);
  Result<pid_t> pid = Error{};
  UniqueFd report;
  if (auto conv = apply_conventions(plan, cfg, res.listeners, slot, job.generation); !conv) {
    pid = conv.error();  // a $(corral.sockets.NAME) that no longer names one socket
  } else if (cfg.mode == Mode::inetd) {
    // The acceptor speaks the worker protocol; the program gets none of it.
    // Warm (docs/INETD.md): the acceptor starts the program before it accepts.
    if (cfg.inetd.warm)
      set_env(plan.env, "CORRAL_INETD_WARM",
              cfg.inetd.warm_header == WarmHeader::proxy_v1 ? "proxy-v1" : "1");
    // allow:/deny: go to the acceptor, which strips them (cmd/corral-inetd).
    if (auto rules = encode_access_list(res.access); !rules.empty())
      set_env(plan.env, "CORRAL_ACCESS", rules);
    if (auto made = make_inetd_plan(plan, cfg.name, cfg.max_per_source); !made) {
      pid = made.error();
    } else {
      pid = spawn_process(plan, &report);
    }
  } else {
    pid = spawn_process(plan, &report);
  }
  if (!pid) {
    LogContext slot_ctx{cfg.name, slot};
    res.sb.free_slot(slot, now);
    release_slot_cgroup(job, slot);
    spdlog::error("job {}: spawn worker (slot {}): {}", cfg.name, slot, pid.error().to_string());
    // fork() short of processes or memory (RLIMIT_NPROC, pids.max) is the machine's
    // state, not the job's fault: back off, but do not count it toward max_failures.
    const int code = pid.error().code;
    const bool resources = code == EAGAIN || code == ENOMEM || code == EMFILE || code == ENFILE;
    job_event(job, resources ? JobEvent::soft_failure : JobEvent::failure, now,
              resources ? "could not be forked (resources short)" : "could not be started");
    return false;
  }
  WorkerRec w;
  w.pid = *pid;
  w.slot = slot;
  w.generation = job.generation;
  w.started_ns = now;
  w.listeners = current_listener_names(res);
  // Its own limits, drawn once, uniformly in [v, v + jitter] (gunicorn's
  // max_requests_jitter), so that workers started together do not retire together.
  const auto& spec = cfg.workers;
  if (spec.max_requests != 0) w.requests_limit = spec.max_requests + draw(spec.max_requests_jitter);
  if (spec.max_lifetime.count() > 0)
    w.retire_at = now + to_ns(spec.max_lifetime) + draw(to_ns(spec.max_lifetime_jitter));
  res.slot_used[slot] = true;
  res.sb.set_slot_pid(slot, w.pid);
  if (cfg.mode == Mode::plain) res.sb.set_slot_state(slot, CORRAL_SLOT_RUNNING, now);
  job.workers.emplace(w.pid, w);
  ++job.counters.spawns;
  if (report) res.spawn_reports.emplace(w.pid, std::move(report));
  LogContext worker_ctx{cfg.name, slot, w.pid};
  spdlog::log(cfg.mode == Mode::inetd && !job.pacing.start_pending ? spdlog::level::debug
                                                                   : spdlog::level::info,
              "job {}: started worker {} (slot {}, generation {})", cfg.name, w.pid, slot,
              job.generation);
  return true;
}

// The truly periodic look: decisions for every job (timeouts the events did not bring
// forward), the idle-hint correction, leftovers, headers and the manager's STATUS.
void Supervisor::Impl::periodic(std::uint64_t now) noexcept {
  if (now >= next_audit_) {
    next_audit_ = now + kAuditTick;
    for (auto& job : jobs_) request_decision(*job, now);
    adopt_orphans(now);
    sample_queues(now);
    retry_cgroup_leftovers();
  }
  run_due_decisions(now);
  signal_leftovers(now);
  if (reload_pending_ && upgrade_.check_pid == 0 && !stopping() && !draining()) {
    reload_pending_ = false;  // a SIGHUP that waited for an upgrade (handed over, too)
    reload();
  }
  if (draining() && now >= drain_until_) {
    spdlog::info("drain over; stopping gracefully");
    begin_stop(StopMode::graceful);
  }
  if (upgrade_.check_pid != 0 && now >= upgrade_.deadline) {
    ::kill(upgrade_.check_pid, SIGKILL);  // our own child, not yet reaped
    finish_upgrade(0, true);
  }
  // Forget removed jobs whose workers are all gone (and their cgroup directories).
  auto gone = [this](const std::unique_ptr<Job>& j) {
    return j->workers.empty() && (j->removed() || stopping());
  };
  for (auto& job : jobs_)
    if (gone(job)) remove_job_cgroups(*job);
  std::erase_if(jobs_, gone);
  write_headers(now);
  notify_manager(now);
  if (metrics_) metrics_->expire(now);
  write_textfile_if_due(now);
}

void Supervisor::Impl::notify_manager(std::uint64_t now) noexcept {
  if (!notifier_.enabled() || stopping() || draining()) return;
  std::string text;
  bool ready = true;
  for (const auto& job : jobs_) {
    if (job->removed()) continue;
    unsigned idle = 0;
    unsigned busy = 0;
    unsigned total = 0;
    for (const auto& [pid, w] : job->workers) {
      if (w.generation != job->generation || w.phase == WorkerPhase::stopping ||
          w.phase == WorkerPhase::killing)
        continue;
      ++total;
      if (w.last_state == CORRAL_SLOT_IDLE) ++idle;
      if (w.last_state == CORRAL_SLOT_BUSY || w.last_state == CORRAL_SLOT_RUNNING) ++busy;
    }
    if (!text.empty()) text += "; ";
    text += job->cfg.name + ": ";
    if (job->health.phase == JobPhase::failed) {
      text += "failed";
      continue;
    }
    if (job->cfg.mode == Mode::plain) {
      text += std::to_string(busy) + " running";
      if (total < job->cfg.workers.start) ready = false;
    } else {
      text += std::to_string(idle) + " idle, " + std::to_string(busy) + " busy";
      if (job->pacing.start_pending || idle == 0) ready = false;
    }
  }
  if (!ready_sent_ && ready) {
    notifier_.ready(text);
    ready_sent_ = true;
  } else {
    notifier_.status(text, now);
    notifier_.flush_status(now);
  }
}

// ---------------------------------------------------------------------------
// Per-worker cgroups.

void Supervisor::Impl::on_oom_kill(Job& job, WorkerRec& rec) noexcept {
  rec.exit_reason = ExitReason::oom;
  count_oom_kill(job, rec.slot);  // the slot's "oom_kills" (status, corral_slot_oom_kills_total)
}

SlotCgroup* Supervisor::Impl::slot_cgroup(Job& job, unsigned slot, bool adopt) noexcept {
  auto& res = job.res;
  if (auto it = res.slot_cgroups.find(slot); it != res.slot_cgroups.end()) {
    // A slot reused before its cgroup was removed: same directory, a new baseline.
    it->second.oom_base = it->second.oom_kills();
    return &it->second;
  }
  const auto& g = job.cfg.cgroup;
  try {
    auto made = SlotCgroup::open(
        cgroup_places(), CgroupValues{g.memory_high, g.memory_max, g.pids_max, g.cpu_weight},
        job.cfg.name, slot, adopt);
    if (made) {
      res.cgroup_used = true;
      return &res.slot_cgroups.emplace(slot, std::move(*made)).first->second;
    }
    // Once per job: a cgroupfs corral cannot write (not root, read-only, not delegated)
    // will not become writable at the next spawn.
    res.cgroup_off = true;
    spdlog::error("job {}: cgroup: {}; the job runs without per-worker cgroups{}", job.cfg.name,
                  made.error().to_string(),
                  g.memory_max != 0
                      ? fmt::format(", and memory_max {} is enforced by RSS sampling instead "
                                    "(killed above it, as hard_max_rss)",
                                    g.memory_max)
                      : "");
  } catch (const std::exception& e) {
    res.cgroup_off = true;
    spdlog::error("job {}: cgroup: {}", job.cfg.name, e.what());
  }
  return nullptr;
}

void Supervisor::Impl::release_slot_cgroup(Job& job, unsigned slot) noexcept {
  auto it = job.res.slot_cgroups.find(slot);
  if (it == job.res.slot_cgroups.end()) return;
  SlotCgroup cg = std::move(it->second);
  job.res.slot_cgroups.erase(it);
  // What the worker left in its process group may still be in there: a later try.
  if (!cg.remove()) {
    try {
      cgroup_leftovers_.push_back(std::move(cg));
    } catch (...) {
    }
  }
}

void Supervisor::Impl::remove_job_cgroups(Job& job) noexcept {
  for (auto& [slot, cg] : job.res.slot_cgroups) cg.remove();
  if (!job.cfg.cgroup.any() && !job.res.cgroup_used) return;
  // A job of the same name may live on (a reload's new Job): only its unused slots go.
  std::vector<unsigned> keep;
  for (const auto& other : jobs_) {
    if (!other || other.get() == &job || other->cfg.name != job.cfg.name) continue;
    for (const auto& [slot, cg] : other->res.slot_cgroups) keep.push_back(slot);
    keep.push_back(~0U);  // not empty: the job directory stays
  }
  retry_cgroup_leftovers();
  try {
    // A slot still holding what a worker left: the job directory goes after it.
    if (remove_stale_slot_cgroups(cgroup_places(), job.cfg.name, keep) != 0 && keep.empty() &&
        std::find(cgroup_jobs_pending_.begin(), cgroup_jobs_pending_.end(), job.cfg.name) ==
            cgroup_jobs_pending_.end())
      cgroup_jobs_pending_.push_back(job.cfg.name);
  } catch (...) {
  }
}

void Supervisor::Impl::retry_cgroup_leftovers() noexcept {
  std::erase_if(cgroup_leftovers_, [](SlotCgroup& cg) { return cg.remove(); });
  if (!cgroup_leftovers_.empty() || cgroup_jobs_pending_.empty()) return;
  try {
    std::erase_if(cgroup_jobs_pending_, [this](const std::string& name) {
      const bool alive = std::any_of(jobs_.begin(), jobs_.end(), [&](const auto& j) {
        return j && j->cfg.name == name && !j->workers.empty();
      });
      return alive || remove_stale_slot_cgroups(cgroup_places(), name, {}) == 0;
    });
  } catch (...) {
  }
}

void Supervisor::Impl::write_headers(std::uint64_t now) noexcept {
  if (int repaired = scoreboard_truncations_repaired(); repaired != truncations_logged_) {
    spdlog::error(
        "a worker shrank a scoreboard file (ftruncate); its size was restored ({} time(s))",
        repaired);
    truncations_logged_ = repaired;
  }
  for (auto& job : jobs_) {
    if (job->removed()) continue;
    // Someone removed the file (or its directory): the workers and we keep the mapping,
    // so nothing breaks, but `corral status` cannot find it. Say so, once.
    struct stat st {};
    if (!job->health.sb_gone_logged && ::fstat(job->res.sb.fd(), &st) == 0 && st.st_nlink == 0) {
      spdlog::error(
          "job {}: scoreboard {} was removed; the job runs on, but `corral status` "
          "cannot see it until corral restarts",
          job->cfg.name, job->res.sb.path());
      job->health.sb_gone_logged = true;
    }
    corral_job_state state = CORRAL_JOB_RUNNING;
    if (draining())
      state = CORRAL_JOB_DRAINING;
    else if (stopping() || job->health.phase == JobPhase::draining)
      state = CORRAL_JOB_STOPPING;
    else if (job->health.phase == JobPhase::failed)
      state = CORRAL_JOB_FAILED;
    else if (job->health.phase == JobPhase::backing_off && job->health.retry_at > now)
      state = CORRAL_JOB_BACKING_OFF;
    const auto& w = job->cfg.workers;
    job->res.sb.write_header(self_, job->generation, started_realtime_, wire_mode(job->cfg.mode),
                             state, job->health.retry_at, w.min_spare, w.max_spare, w.max,
                             job->cfg.mode == Mode::prefork && w.max_requests != 0
                                 ? w.max_requests + w.max_requests_jitter
                                 : 0,
                             job->cfg.name, job->res.listeners_text);
    const auto& limits = container_limits();
    job->res.sb.set_limits(limits.cpus, limits.memory_bytes.value_or(0));
    job->res.sb.set_flags(warm_inetd(job->cfg) ? CORRAL_SB_FLAG_WARM : 0);
    publish_totals(*job, now);
  }
}

}  // namespace corral
