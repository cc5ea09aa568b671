// The workers of each job: the periodic look at the scoreboard (maintain), starting and
// stopping workers, their exits and the job's failure count, the scoreboard headers and
// the service manager's STATUS.
#include "supervisor/impl.h"

#include <corral/protocol.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "common/duration.h"
#include "log/log.h"
#include "scoreboard/scoreboard.h"
#include "spawn/spawn.h"
#include "supervisor/inetd.h"
#include "supervisor/pool.h"

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

const char* lock_env_kind(AcceptMutex kind) {
  switch (kind) {
    case AcceptMutex::pipe: return "pipe";
    case AcceptMutex::fcntl: return "fcntl";
    case AcceptMutex::epoll: return "epoll";
    default: return "none";
  }
}

}  // namespace

void Supervisor::Impl::on_worker_exit(Job& job, WorkerRec rec, int status) noexcept {
  LogContext log_ctx{job.cfg.name, rec.slot, rec.pid};
  auto now = monotonic_ns();
  SlotView slot = job.sb.read_slot(rec.slot);
  if (rec.slot < job.slot_used.size()) job.slot_used[rec.slot] = false;
  job.sb.free_slot(rec.slot, now);
  const bool current = rec.generation == job.generation && !job.removed;
  const auto& name = job.cfg.name;
  auto how = describe_status(status);
  std::optional<Error> failure;
  if (auto it = job.spawn_reports.find(rec.pid); it != job.spawn_reports.end()) {
    failure = read_spawn_report(it->second.get(), job.cfg.command.front());
    job.spawn_reports.erase(it);
  }
  if (failure) {
    // One clear line per failure; the child exited 127 right after reporting.
    if (job.cfg.mode == Mode::inetd && slot.state == CORRAL_SLOT_BUSY) {
      spdlog::error("job {}: cannot execute {}: {} (connection closed)", name,
                    job.cfg.command.front(), std::strerror(failure->code));
    } else {
      spdlog::error("job {}: spawn worker (slot {}): {}", name, rec.slot, failure->to_string());
    }
    if (current && !stopping_ && job.state != JobState::failed) {
      // Out of fds, processes or memory is the machine's state, not the job's fault.
      const int code = failure->code;
      const bool resources = code == EMFILE || code == ENFILE || code == EAGAIN || code == ENOMEM;
      record_failure(job, now, !resources,
                     resources ? "could not be started (resources short)" : "could not be started");
    }
    return;
  }
  // In inetd mode a program ending is the end of a connection, not an event.
  const bool program_done = job.cfg.mode == Mode::inetd && slot.state == CORRAL_SLOT_BUSY;
  const auto quota = job.cfg.workers.max_requests;
  const bool quota_done = job.cfg.mode == Mode::prefork && quota != 0 && slot.requests >= quota &&
                          WIFEXITED(status) && WEXITSTATUS(status) == 0;
  if (quota_done && !rec.term_sent) {
    spdlog::info(
        "job {}: worker {} (slot {}) served its {} connections (max_requests); replacing it", name,
        rec.pid, rec.slot, quota);
  } else if (program_done) {
    spdlog::debug("job {}: program {} (slot {}) {}", name, rec.pid, rec.slot, how);
  } else if (rec.term_sent || stopping_) {
    spdlog::info("job {}: worker {} (slot {}) {}", name, rec.pid, rec.slot, how);
  } else {
    spdlog::warn("job {}: worker {} (slot {}) {}", name, rec.pid, rec.slot, how);
  }
  if (!current || stopping_ || job.state == JobState::failed) return;

  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  if (job.cfg.mode == Mode::prefork && code == CORRAL_EXIT_FATAL) {
    spdlog::error(
        "job {}: worker {} reported a broken configuration (exit {}); not respawning the job", name,
        rec.pid, CORRAL_EXIT_FATAL);
    job.state = JobState::failed;
    return;
  }
  if (job.cfg.mode == Mode::prefork && code == CORRAL_EXIT_SICK) {
    record_failure(job, now, false, "reported resources short (exit 75)");
    return;
  }
  // prefork: a worker that never became idle; inetd: an acceptor that died before
  // accepting (one that accepted marked its slot busy, and the program's exit is its
  // own); plain: a copy that lived less than a second.
  const bool crashed = !rec.term_sent && (job.cfg.mode == Mode::plain
                                              ? now - rec.started_ns < kPlainCrashWindow
                                              : !rec.ready && slot.state == CORRAL_SLOT_STARTING);
  if (crashed) record_failure(job, now, true, "exited before it was ready");
}

void Supervisor::Impl::record_failure(Job& job, std::uint64_t now, bool counts,
                                      const std::string& why) noexcept {
  LogContext log_ctx{job.cfg.name};
  if (counts) ++job.failures;
  auto max = job.cfg.restart.max_failures;
  if (counts && max != 0 && job.failures >= max) {
    spdlog::error("job {}: {} consecutive failures; giving up (the job is marked failed)",
                  job.cfg.name, job.failures);
    job.state = JobState::failed;
    return;
  }
  auto cap = std::max<std::uint64_t>(to_ns(job.cfg.restart.backoff_max), kBackoffBase);
  job.backoff_ns = job.backoff_ns == 0 ? kBackoffBase : std::min(cap, job.backoff_ns * 2);
  job.retry_at = now + job.backoff_ns;
  job.state = JobState::backing_off;
  spdlog::warn("job {}: a worker {}; backing off, next try in {} (failure {}{})", job.cfg.name, why,
               format_duration(Duration(job.backoff_ns)), job.failures,
               max != 0 ? " of " + std::to_string(max) : "");
}

void Supervisor::Impl::signal_worker(const Job& job, const WorkerRec& w, int sig) noexcept {
  // Only pids from our own table, not yet reaped (a zombie keeps its pid), ever get a
  // signal (Apache's ap_mpm_safe_kill). Never a pid read from the scoreboard.
  if (w.pid <= 1 || job.workers.find(w.pid) == job.workers.end()) return;
  ::kill(w.pid, sig);
}

void Supervisor::Impl::stop_worker(Job& job, WorkerRec& w, std::uint64_t now, bool send) noexcept {
  if (w.term_sent) return;
  w.term_sent = true;
  auto grace = to_ns(job.cfg.graceful_timeout);
  w.kill_at = grace == 0 ? now : now + grace;
  if (job.cfg.mode == Mode::inetd) {
    // An acceptor that has accepted is (or is about to become) the legacy program,
    // which corral never sends SIGTERM: look at the slot now, not at the last tick.
    // An acceptor still idle here cannot get through accept and exec before the
    // signal lands; one that accepted meanwhile only sets its stop flag.
    auto state = job.sb.read_slot(w.slot).state;
    if (state == CORRAL_SLOT_BUSY) {
      w.last_state = CORRAL_SLOT_BUSY;
      return;
    }
  }
  if (send) signal_worker(job, w, SIGTERM);
  job.sb.set_slot_state(w.slot, CORRAL_SLOT_STOPPING, now);
}

void Supervisor::Impl::spawn_worker(Job& job, std::uint64_t now) noexcept {
  LogContext job_ctx{job.cfg.name};
  unsigned slot = 0;
  while (slot < job.slot_used.size() && job.slot_used[slot]) ++slot;
  if (slot >= job.slot_used.size()) {
    spdlog::error("job {}: no free scoreboard slot", job.cfg.name);
    return;
  }
  const auto& cfg = job.cfg;
  SpawnPlan plan;
  plan.path = cfg.command.front();
  plan.argv = cfg.command;
  plan.env = job.base_env;
  plan.cwd = cfg.cwd;
  plan.credentials = job.credentials;
  plan.parent = self_;
  plan.nofile = original_nofile_;
  std::string names;
  for (const auto& l : job.listeners) {
    plan.inherit.push_back(l->fd.get());
    names += (names.empty() ? "" : ":") + l->name;
  }
  if (!job.listeners.empty()) {
    set_env(plan.env, "LISTEN_FDS", std::to_string(job.listeners.size()));
    set_env(plan.env, "LISTEN_FDNAMES", names);
    plan.listen_pid = true;
  }
  if (cfg.mode != Mode::plain) {
    if (job.lock.fd) {
      set_env(plan.env, CORRAL_ENV_LOCK_FD, std::to_string(3 + plan.inherit.size()));
      plan.inherit.push_back(job.lock.fd.get());
    }
    set_env(plan.env, CORRAL_ENV_LOCK_KIND, lock_env_kind(job.lock.kind));
    set_env(plan.env, CORRAL_ENV_SCOREBOARD_FD, std::to_string(3 + plan.inherit.size()));
    plan.inherit.push_back(job.sb.fd());
    if (job.notify_write) {
      set_env(plan.env, CORRAL_ENV_NOTIFY_FD, std::to_string(3 + plan.inherit.size()));
      plan.inherit.push_back(job.notify_write.get());
    }
    set_env(plan.env, CORRAL_ENV_SLOT, std::to_string(slot));
    set_env(plan.env, CORRAL_ENV_GENERATION, std::to_string(job.generation));
  }
  // Claim the slot before the fork so the worker never sees it EMPTY.
  job.sb.claim_slot(slot, 0, job.generation, now);
  Result<pid_t> pid = Error{};
  UniqueFd report;
  if (cfg.mode == Mode::inetd) {
    // The acceptor speaks the worker protocol; the program gets none of it.
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
    job.sb.free_slot(slot, now);
    spdlog::error("job {}: spawn worker (slot {}): {}", cfg.name, slot, pid.error().to_string());
    // fork() short of processes or memory (RLIMIT_NPROC, pids.max) is the machine's
    // state, not the job's fault: back off, but do not count it toward max_failures.
    const int code = pid.error().code;
    const bool resources = code == EAGAIN || code == ENOMEM || code == EMFILE || code == ENFILE;
    record_failure(job, now, !resources,
                   resources ? "could not be forked (resources short)" : "could not be started");
    return;
  }
  WorkerRec w;
  w.pid = *pid;
  w.slot = slot;
  w.generation = job.generation;
  w.started_ns = now;
  job.slot_used[slot] = true;
  job.sb.set_slot_pid(slot, w.pid);
  if (cfg.mode == Mode::plain) job.sb.set_slot_state(slot, CORRAL_SLOT_RUNNING, now);
  job.workers.emplace(w.pid, w);
  if (report) job.spawn_reports.emplace(w.pid, std::move(report));
  LogContext worker_ctx{cfg.name, slot, w.pid};
  spdlog::log(cfg.mode == Mode::inetd && !job.initial ? spdlog::level::debug : spdlog::level::info,
              "job {}: started worker {} (slot {}, generation {})", cfg.name, w.pid, slot,
              job.generation);
}

void Supervisor::Impl::maintain_job(Job& job, std::uint64_t now) noexcept {
  LogContext job_ctx{job.cfg.name};
  PoolCounts counts;
  std::vector<WorkerRec*> idle_current;
  for (auto& [pid, w] : job.workers) {
    LogContext worker_ctx{job.cfg.name, w.slot, w.pid};
    // Deadlines of workers asked to stop.
    if (w.term_sent && !w.kill_sent && w.kill_at != 0 && now >= w.kill_at) {
      spdlog::warn("job {}: worker {} (slot {}) did not stop within graceful_timeout; SIGKILL",
                   job.cfg.name, w.pid, w.slot);
      signal_worker(job, w, SIGKILL);
      w.kill_sent = true;
    }
    if (w.term_sent || w.generation != job.generation) continue;
    SlotView s = job.sb.read_slot(w.slot);
    if (!s.state_valid && !w.garbage_logged) {
      spdlog::warn("job {}: worker {} wrote garbage into scoreboard slot {}; ignoring it",
                   job.cfg.name, w.pid, w.slot);
      w.garbage_logged = true;
    }
    corral_slot_state state = s.state;
    if (job.cfg.mode == Mode::plain) {
      state = CORRAL_SLOT_RUNNING;
      if (!w.ready && now - w.started_ns >= kPlainCrashWindow) {
        w.ready = true;
        job.spawn_reports.erase(w.pid);
      }
    } else if (state == CORRAL_SLOT_EMPTY || state == CORRAL_SLOT_RUNNING) {
      state = w.ready ? CORRAL_SLOT_IDLE : CORRAL_SLOT_STARTING;  // nonsense from the worker
    }
    if (state == CORRAL_SLOT_IDLE || state == CORRAL_SLOT_BUSY) {
      if (!w.ready) {
        w.ready = true;
        // Idle means exec'd: the spawn report can only say EOF now (inetd keeps it for
        // the program's exec).
        if (job.cfg.mode == Mode::prefork) job.spawn_reports.erase(w.pid);
        if (job.failures > 0 || job.state == JobState::backing_off) {
          spdlog::info("job {}: worker {} is up; failure count reset", job.cfg.name, w.pid);
        }
        job.failures = 0;
        job.backoff_ns = 0;
        if (job.state == JobState::backing_off) job.state = JobState::running;
      }
    }
    if (job.cfg.mode == Mode::plain && w.ready) {
      job.failures = 0;
      job.backoff_ns = 0;
      if (job.state == JobState::backing_off) job.state = JobState::running;
    }
    w.last_state = state;
    auto since = s.state_since_ns;
    switch (state) {
      case CORRAL_SLOT_STARTING: {
        ++counts.starting;
        auto limit = to_ns(job.cfg.workers.start_timeout);
        if (job.cfg.mode != Mode::plain && limit != 0 && now - w.started_ns > limit) {
          spdlog::warn("job {}: worker {} (slot {}) still starting after {}; killing it",
                       job.cfg.name, w.pid, w.slot, format_duration(job.cfg.workers.start_timeout));
          signal_worker(job, w, SIGKILL);
          w.term_sent = true;
          w.kill_sent = true;
        }
        break;
      }
      case CORRAL_SLOT_IDLE:
        ++counts.idle;
        if (job.cfg.mode == Mode::prefork && job.cfg.workers.max_requests != 0 &&
            s.requests >= job.cfg.workers.max_requests) {
          spdlog::info("job {}: worker {} (slot {}) served {} connections; recycling it",
                       job.cfg.name, w.pid, w.slot, s.requests);
          stop_worker(job, w, now, true);
          --counts.idle;
        } else {
          idle_current.push_back(&w);
        }
        break;
      case CORRAL_SLOT_BUSY:
      case CORRAL_SLOT_RUNNING: {
        ++counts.busy;
        auto limit = to_ns(job.cfg.busy_timeout);
        if (state == CORRAL_SLOT_BUSY && limit != 0 && since != 0 && since <= now &&
            now - since > limit) {
          spdlog::warn("job {}: worker {} (slot {}) busy for more than {}; killing it",
                       job.cfg.name, w.pid, w.slot, format_duration(job.cfg.busy_timeout));
          signal_worker(job, w, SIGKILL);
          w.term_sent = true;
          w.kill_sent = true;
        }
        break;
      }
      default: break;
    }
  }
  if (job.cfg.mode != Mode::plain) {
    audit_token(job, now);
    counts.queued = queued_connections(job.listeners);
    replace_stuck_holders(job, counts.queued, now);
    correct_idle_hint(job, counts.idle);
  }
  if (job.removed || stopping_) return;
  if (job.state == JobState::failed) return;
  if (job.state == JobState::backing_off && now < job.retry_at) return;

  PoolAction action = plan_pool(job.cfg, counts, job.initial);
  const bool was_at_max = job.at_max;
  job.at_max = counts.starting + counts.idle + counts.busy >= job.cfg.workers.max;
  job.sb.set_at_max(job.at_max);  // every look: a reload may have left a stale value
  if (was_at_max && !job.at_max && job.notify_read && !job.notify_armed) arm_notify(job);
  // Fork-rate cap: at most kSpawnBurst starts per kSpawnWindow, except for the
  // `workers.start` the configuration asks for at start-up and reload (Apache forks its
  // StartServers at once too). A start that fails outright ends the round anyway.
  if (now - job.spawn_window_start >= kSpawnWindow) {
    job.spawn_window_start = now;
    job.spawned_in_window = 0;
  }
  unsigned spawn =
      job.initial
          ? action.spawn
          : std::min(action.spawn, kSpawnBurst - std::min(kSpawnBurst, job.spawned_in_window));
  if (job.state == JobState::backing_off) spawn = std::min(spawn, counts.starting == 0 ? 1U : 0U);
  const bool urgent =
      job.initial || counts.queued > 0 || counts.idle * 2 < job.cfg.workers.min_spare;
  if (spawn == 0) {
    job.topup_at = 0;
  } else if (!urgent && counts.busy > 0) {
    if (job.topup_at == 0) job.topup_at = now + kTopUpMaxWait;
    if (now < job.topup_at) spawn = 0;
  }
  if (spawn > 0) job.topup_at = 0;
  if (job.state == JobState::backing_off && spawn > 0) job.retry_at = now + job.backoff_ns;
  const auto failures_before = job.failures;
  const auto backoff_before = job.backoff_ns;
  for (unsigned i = 0; i < spawn && job.state != JobState::failed; ++i) {
    spawn_worker(job, now);
    // A start that failed outright (fork, exec of the acceptor...) ends this round.
    if (job.failures != failures_before || job.backoff_ns != backoff_before) break;
  }
  job.spawned_in_window += spawn;
  if (spawn == action.spawn) job.initial = false;

  if (action.retire == 0) {
    job.excess_since = 0;
  } else if (job.excess_since == 0) {
    job.excess_since = now;
  } else if (now - job.excess_since >= kRetireHysteresis &&
             now - job.last_retire >= kRetireInterval && !idle_current.empty()) {
    // Highest slots first (Apache retires one idle child at a time; a quarter of the
    // excess per interval empties a burst's surplus in a few seconds).
    std::sort(idle_current.begin(), idle_current.end(),
              [](auto* a, auto* b) { return a->slot > b->slot; });
    unsigned n =
        std::min<unsigned>((action.retire + 3) / 4, static_cast<unsigned>(idle_current.size()));
    spdlog::info("job {}: {} idle workers, max_spare {}; retiring {}", job.cfg.name, counts.idle,
                 job.cfg.workers.max_spare, n);
    for (unsigned i = 0; i < n; ++i) stop_worker(job, *idle_current[i], now, true);
    job.last_retire = now;
  }
}

void Supervisor::Impl::maintain() noexcept {
  auto now = monotonic_ns();
  for (auto& job : jobs_) maintain_job(*job, now);
  // Forget removed jobs whose workers are all gone.
  std::erase_if(jobs_,
                [](const std::unique_ptr<Job>& j) { return (j->removed) && j->workers.empty(); });
  if (stopping_) {
    std::erase_if(jobs_, [](const std::unique_ptr<Job>& j) { return j->workers.empty(); });
  }
  write_headers(now);
  notify_manager(now);
}

void Supervisor::Impl::notify_manager(std::uint64_t now) noexcept {
  if (!notifier_.enabled() || stopping_) return;
  std::string text;
  bool ready = true;
  for (const auto& job : jobs_) {
    if (job->removed) continue;
    unsigned idle = 0;
    unsigned busy = 0;
    unsigned total = 0;
    for (const auto& [pid, w] : job->workers) {
      if (w.generation != job->generation || w.term_sent) continue;
      ++total;
      if (w.last_state == CORRAL_SLOT_IDLE) ++idle;
      if (w.last_state == CORRAL_SLOT_BUSY || w.last_state == CORRAL_SLOT_RUNNING) ++busy;
    }
    if (!text.empty()) text += "; ";
    text += job->cfg.name + ": ";
    if (job->state == JobState::failed) {
      text += "failed";
      continue;
    }
    if (job->cfg.mode == Mode::plain) {
      text += std::to_string(busy) + " running";
      if (total < job->cfg.workers.start) ready = false;
    } else {
      text += std::to_string(idle) + " idle, " + std::to_string(busy) + " busy";
      if (job->initial || idle == 0) ready = false;
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

void Supervisor::Impl::write_headers(std::uint64_t now) noexcept {
  if (int repaired = scoreboard_truncations_repaired(); repaired != truncations_logged_) {
    spdlog::error(
        "a worker shrank a scoreboard file (ftruncate); its size was restored ({} time(s))",
        repaired);
    truncations_logged_ = repaired;
  }
  for (auto& job : jobs_) {
    if (job->removed) continue;
    // Someone removed the file (or its directory): the workers and we keep the mapping,
    // so nothing breaks, but `corral status` cannot find it. Say so, once.
    struct stat st {};
    if (!job->sb_gone_logged && ::fstat(job->sb.fd(), &st) == 0 && st.st_nlink == 0) {
      spdlog::error(
          "job {}: scoreboard {} was removed; the job runs on, but `corral status` "
          "cannot see it until corral restarts",
          job->cfg.name, job->sb.path());
      job->sb_gone_logged = true;
    }
    corral_job_state state = CORRAL_JOB_RUNNING;
    if (stopping_)
      state = CORRAL_JOB_STOPPING;
    else if (job->state == JobState::failed)
      state = CORRAL_JOB_FAILED;
    else if (job->state == JobState::backing_off && job->retry_at > now)
      state = CORRAL_JOB_BACKING_OFF;
    const auto& w = job->cfg.workers;
    job->sb.write_header(self_, job->generation, started_realtime_, wire_mode(job->cfg.mode), state,
                         job->retry_at, w.min_spare, w.max_spare, w.max,
                         job->cfg.mode == Mode::prefork ? w.max_requests : 0, job->cfg.name,
                         job->listeners_text);
  }
}

}  // namespace corral
