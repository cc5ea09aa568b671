// The binary upgrade (SIGUSR2): the running state handed across exec to the new image,
// as a Handover (handover.h). Before the exec, the new binary is asked in a child
// (`corral --handover-check VERSION`, the state on its stdin) whether it can read the
// state and its configuration; only a yes execs. The new image never reads the
// configuration file: its jobs come from the hand-over.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <iterator>

#include "common/unique_fd.h"
#include "listen/listener.h"
#include "notify/notify.h"
#include "scoreboard/scoreboard.h"
#include "supervisor/handover.h"
#include "supervisor/impl.h"

extern char** environ;

namespace corral {
namespace {

constexpr std::uint64_t kCheckTimeout = 10 * kSec;

void set_cloexec(int fd, bool on) {
  if (fd < 0) return;
  int flags = ::fcntl(fd, F_GETFD);
  if (flags >= 0) ::fcntl(fd, F_SETFD, on ? (flags | FD_CLOEXEC) : (flags & ~FD_CLOEXEC));
}

WorkerPhase worker_phase_of(const std::string& s) {
  if (s == "starting") return WorkerPhase::starting;
  if (s == "stopping") return WorkerPhase::stopping;
  if (s == "killing") return WorkerPhase::killing;
  return WorkerPhase::up;
}

JobPhase job_phase_of(const std::string& s) {
  if (s == "backing-off") return JobPhase::backing_off;
  if (s == "failed") return JobPhase::failed;
  if (s == "draining") return JobPhase::draining;
  if (s == "removed") return JobPhase::removed;
  return JobPhase::running;
}

}  // namespace

int handover_check_main(const std::string& version_text) {
  // The old image asks: can you take state of this version (and is the state on stdin
  // one you can read, with a configuration you can parse)? Exit 0: yes.
  int version = 0;
  try {
    version = std::stoi(version_text);
  } catch (const std::exception&) {
    version = 0;
  }
  if (version < 1 || version > kHandoverVersion) {
    std::cerr << "corral " << CORRAL_VERSION << ": hand-over version " << version_text
              << " is not one I read (1 to " << kHandoverVersion << ")\n";
    return 3;
  }
  std::string text((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
  if (text.empty()) return 0;
  auto state = decode_handover(text);
  if (!state) {
    std::cerr << "corral " << CORRAL_VERSION << ": " << state.error().to_string() << "\n";
    return 3;
  }
  if (!state->config_text.empty()) {
    try {
      (void)load_config_text(state->config_text, "(running configuration)",
                             CheckOptions{false, false});
    } catch (const ConfigError& e) {
      for (const auto& issue : e.issues()) std::cerr << issue.to_string() << "\n";
      return 3;
    }
  }
  return 0;
}

Handover Supervisor::Impl::collect_handover() const {
  Handover s;
  s.generation = generation_;
  s.started = started_realtime_;
  s.config_text = options_.config_path.empty() ? "" : options_.config_text;
  s.notify_socket = notifier_.socket_path();
  s.watchdog_ns = notifier_.watchdog_interval();
  s.ready_sent = ready_sent_;
  s.reload_pending = reload_pending_;
  if (original_nofile_)
    s.nofile = std::make_pair(original_nofile_->rlim_cur, original_nofile_->rlim_max);
  for (const auto& l : listeners_.all()) {
    s.listeners.push_back(HandoverListener{l->fd.get(), l->key, l->name, l->display, l->inherited,
                                           l->stored, l->store_name});
  }
  for (const auto& job : jobs_) {
    HandoverJob j;
    j.name = job->cfg.name;
    j.mode = static_cast<int>(job->cfg.mode);
    j.phase = to_string(job->health.phase);
    j.generation = job->generation;
    j.graceful_ns = to_ns(job->cfg.graceful_timeout);
    j.sb_fd = job->res.sb.fd();
    j.sb_path = job->res.sb.path();
    j.lock_kind = static_cast<int>(job->res.lock.kind);
    j.lock_fd = job->res.lock.fd.get();
    j.lock_private_fd = job->res.lock.private_fd.get();
    j.notify_read = job->res.notify_read.get();
    j.notify_write = job->res.notify_write.get();
    j.failures = job->health.failures;
    j.backoff_ns = job->health.backoff_ns;
    j.retry_at = job->health.retry_at;
    j.spawns = job->counters.spawns;
    for (std::size_t i = 0; i < kExitReasons; ++i) {
      if (job->counters.exits[i] != 0)
        j.exits[to_string(static_cast<ExitReason>(i))] = job->counters.exits[i];
    }
    j.max_reached = job->counters.max_reached;
    j.accepted = job->counters.accepted_folded;
    j.refused = job->counters.refused_folded;
    j.listener_accepted = job->counters.listener_accepted_folded;
    j.slot_oom_kills = job->counters.slot_oom_kills;
    // Version 5 (the limits issue).
    j.cgroup_off = job->res.cgroup_off;
    j.budget_limited = job->health.budget_limited;
    j.budget_median = job->pacing.budget_median;
    for (const auto& [pid, w] : job->workers) {
      auto report = job->res.spawn_reports.find(pid);
      HandoverWorker hw;
      hw.pid = w.pid;
      hw.slot = w.slot;
      hw.generation = w.generation;
      hw.started_ns = w.started_ns;
      hw.phase = to_string(w.phase);
      hw.kill_at = w.kill_at;
      hw.last_state = static_cast<int>(w.last_state);
      hw.requests_limit = w.requests_limit;
      hw.retire_at = w.retire_at;
      if (w.listeners) hw.listeners = *w.listeners;
      hw.reports_listeners = w.reports_listeners;
      hw.requests_seen = w.requests_seen;
      hw.refused_seen = w.refused_seen;
      hw.accepted_seen.assign(w.accepted_seen.begin(), w.accepted_seen.end());
      hw.report_fd = report != job->res.spawn_reports.end() ? report->second.get() : -1;
      // Version 5 (the limits issue): its slot cgroups, re-opened by the next image.
      if (auto cg = job->res.slot_cgroups.find(w.slot); cg != job->res.slot_cgroups.end()) {
        hw.cgroup = true;
        hw.cgroup_oom_base = cg->second.oom_base;
      }
      j.workers.push_back(hw);
    }
    s.jobs.push_back(std::move(j));
  }
  s.reloads = reload_results_;
  s.upgrades = upgrade_results_;
  if (metrics_) {
    s.metrics_fd = metrics_->listen_fd();
    s.metrics_listen = options_.config.metrics.listen_text;
  }
  return s;
}

// Binary upgrade (SIGUSR2), step 1: write the state, and ask the new binary about it.
void Supervisor::Impl::upgrade() noexcept {
  if (upgrade_.check_pid != 0) {
    spdlog::warn("SIGUSR2: an upgrade is already being checked; ignoring this one");
    return;
  }
  if (self_exe_.empty() || options_.argv.empty()) {
    spdlog::error("SIGUSR2: cannot find my own binary; not upgrading");
    upgrade_result("failed");
    return;
  }
  try {
    Handover s = collect_handover();
    const std::string text = encode_handover(s);
    UniqueFd memfd(::memfd_create("corral-upgrade-state", MFD_CLOEXEC));
    if (!memfd ||
        ::write(memfd.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size())) {
      spdlog::error("SIGUSR2: cannot write the hand-over state: {}; the running image stays",
                    std::strerror(errno));
      upgrade_result("failed");
      return;
    }
    // Ask the new binary, in a child with the state on its stdin.
    ::lseek(memfd.get(), 0, SEEK_SET);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, memfd.get(), 0);
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETPGROUP);
    posix_spawnattr_setpgroup(&attr, 0);
    std::string version = std::to_string(kHandoverVersion);
    std::string flag = "--handover-check";
    char* argv[] = {self_exe_.data(), flag.data(), version.data(), nullptr};
    pid_t pid = 0;
    int err = ::posix_spawn(&pid, self_exe_.c_str(), &actions, &attr, argv, environ);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    if (err != 0) {
      spdlog::error("SIGUSR2: cannot run {} to check it: {}; the running image stays", self_exe_,
                    std::strerror(err));
      upgrade_result("failed");
      return;
    }
    // No lseek here: the child's stdin shares this open file description, offset and all,
    // and may be reading it right now.
    upgrade_.check_pid = pid;
    upgrade_.deadline = monotonic_ns() + kCheckTimeout;
    upgrade_.generation_at_check = generation_;
    spdlog::info("SIGUSR2: checking that {} takes hand-over version {} (pid {})", self_exe_,
                 kHandoverVersion, pid);
  } catch (const std::exception& e) {
    spdlog::error("SIGUSR2: {}; the running image stays", e.what());
    upgrade_result("failed");
  }
}

// Step 2: the check child ended (or timed out): exec, or stay.
void Supervisor::Impl::finish_upgrade(int status, bool timed_out) noexcept {
  exec_checked_upgrade(status, timed_out);
  // Still this image (refused, or the exec failed): a reload that waited runs now.
  if (reload_pending_ && !stopping()) {
    reload_pending_ = false;
    reload();
  }
}

void Supervisor::Impl::exec_checked_upgrade(int status, bool timed_out) noexcept {
  const auto checked_generation = upgrade_.generation_at_check;
  upgrade_ = UpgradeCheck{};
  if (timed_out) {
    spdlog::error("SIGUSR2: {} --handover-check did not answer within {}; the running image stays",
                  self_exe_, format_duration(Duration(kCheckTimeout)));
    upgrade_result("rejected");
    return;
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    spdlog::error(
        "SIGUSR2: the new binary {} refused the hand-over ({}{}); the running image stays",
        self_exe_, describe_status(status),
        WIFEXITED(status) && WEXITSTATUS(status) == 127 ? ": it cannot even start" : "");
    upgrade_result("rejected");
    return;
  }
  if (stopping()) return;
  if (checked_generation != generation_) {
    spdlog::warn(
        "SIGUSR2: the configuration was reloaded during the check; not upgrading "
        "(send SIGUSR2 again)");
    upgrade_result("rejected");
    return;
  }
  std::vector<int> fds;
  try {
    // The state as it is now: workers came and went while the check ran.
    const Handover s = collect_handover();
    fds = s.fds();
    const std::string text = encode_handover(s);
    UniqueFd memfd(::memfd_create("corral-upgrade-state", MFD_CLOEXEC));
    if (!memfd ||
        ::write(memfd.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size())) {
      spdlog::error("SIGUSR2: cannot write the hand-over state: {}; the running image stays",
                    std::strerror(errno));
      upgrade_result("failed");
      return;
    }
    for (int fd : fds) set_cloexec(fd, false);
    set_cloexec(memfd.get(), false);
    ::setenv(kUpgradeEnv, std::to_string(memfd.get()).c_str(), 1);
    std::vector<char*> argv;
    argv.reserve(options_.argv.size() + 1);
    for (auto& a : options_.argv) argv.push_back(a.data());
    argv.push_back(nullptr);
    spdlog::info("SIGUSR2: re-executing {} (pid {} stays, {} job(s) handed over)", self_exe_, self_,
                 jobs_.size());
    ::execv(self_exe_.c_str(), argv.data());
    int err = errno;
    ::unsetenv(kUpgradeEnv);
    for (int fd : fds) set_cloexec(fd, true);
    spdlog::error("SIGUSR2: exec {}: {}; the running image stays", self_exe_, std::strerror(err));
  } catch (const std::exception& e) {
    for (int fd : fds) set_cloexec(fd, true);
    ::unsetenv(kUpgradeEnv);
    spdlog::error("SIGUSR2: {}; the running image stays", e.what());
  }
  upgrade_result("failed");
}

void Supervisor::Impl::upgrade_result(const char* result) noexcept {
  ++upgrade_results_[result];
}

void Supervisor::Impl::adopt_upgrade_state(const std::string& fd_text) {
  int state_fd = -1;
  try {
    state_fd = std::stoi(fd_text);
  } catch (const std::exception&) {
    throw SetupError("binary upgrade: CORRAL_UPGRADE_STATE is not an fd: " + fd_text);
  }
  UniqueFd memfd(state_fd);
  std::string text;
  char buf[65536];
  ssize_t n;
  ::lseek(state_fd, 0, SEEK_SET);
  while ((n = ::read(state_fd, buf, sizeof buf)) > 0) text.append(buf, static_cast<size_t>(n));
  auto decoded = decode_handover(text);
  if (!decoded) throw SetupError("binary upgrade: " + decoded.error().to_string());
  const Handover& s = decoded.value();
  auto keep = [](int fd) {
    set_cloexec(fd, true);
    return fd;
  };
  generation_ = s.generation;
  started_realtime_ = s.started;
  notifier_ = Notifier::from_state(s.notify_socket, s.watchdog_ns);
  ready_sent_ = s.ready_sent;
  if (s.nofile) original_nofile_ = rlimit{s.nofile->first, s.nofile->second};
  for (const auto& l : s.listeners) {
    auto listener = std::make_shared<Listener>();
    listener->fd = UniqueFd(keep(l.fd));
    listener->key = l.key;
    listener->name = l.name;
    listener->display = l.display;
    listener->inherited = l.inherited;
    listener->stored = l.stored;
    listener->store_name = l.store_name;
    listeners_.add(std::move(listener));
  }
  // The running configuration, exactly: the text it came from, never the file (which may
  // have changed or gone since; SIGHUP is how a change takes effect). The old image had
  // the new binary parse it before the exec, so this cannot fail but on a broken
  // machine: then the jobs keep their workers and start no new ones.
  Config config = options_.config;  // the command line's, when there is no text
  if (!s.config_text.empty()) {
    options_.config_text = s.config_text;
    try {
      config = load_config_text(
          options_.config_text,
          options_.config_path.empty() ? "(running configuration)" : options_.config_path,
          CheckOptions{false, false});
    } catch (const ConfigError& e) {
      for (const auto& issue : e.issues()) spdlog::critical("{}", issue.to_string());
      spdlog::critical(
          "binary upgrade: the handed-over configuration does not parse; keeping "
          "the workers, starting none");
      config.jobs.clear();
    }
  }
  scoreboard_dir_ = scoreboard_dir_of(config);
  for (const auto& j : s.jobs) {
    if (!j.sb_path.empty()) {
      auto slash = j.sb_path.rfind('/');
      if (slash != std::string::npos) scoreboard_dir_ = j.sb_path.substr(0, slash);
    }
  }
  listeners_.begin_generation();
  for (const auto& j : s.jobs) {
    const JobConfig* cfg = nullptr;
    for (const auto& c : config.jobs) {
      if (c.name == j.name) cfg = &c;
    }
    const JobPhase phase = job_phase_of(j.phase);
    std::unique_ptr<Job> job;
    if (cfg != nullptr && phase != JobPhase::removed) {
      job = build_job(*cfg, true);
    } else {
      job = std::make_unique<Job>();
      job->cfg.name = j.name;
      job->cfg.mode = static_cast<Mode>(j.mode);
      job->cfg.graceful_timeout = Duration(static_cast<std::int64_t>(j.graceful_ns));
      job->health.phase = JobPhase::removed;
    }
    if (job->health.phase != JobPhase::removed) job->health.phase = phase;
    job->generation = j.generation;
    auto& res = job->res;
    auto sb = Scoreboard::adopt(keep(j.sb_fd), j.sb_path);
    if (!sb) throw SetupError("adopt scoreboard: " + sb.error().to_string());
    res.sb = std::move(sb.value());
    res.slot_used.assign(res.sb.slot_count(), false);
    res.lock.kind = static_cast<AcceptMutex>(j.lock_kind);
    res.lock.fd.reset(j.lock_fd >= 0 ? keep(j.lock_fd) : -1);
    res.lock.private_fd.reset(j.lock_private_fd >= 0 ? keep(j.lock_private_fd) : -1);
    if (cfg != nullptr && !res.listeners.empty()) {
      // The workers keep the lock kind the old image gave them, which may have resolved
      // `auto` otherwise (an image from before lock-free single listeners): the sockets'
      // O_NONBLOCK follows the kind the workers really run.
      const bool blocking = listeners_blocking(*cfg, res.lock.kind, res.listeners.size());
      for (const auto& l : res.listeners) {
        if (auto set = set_listener_blocking(l->fd.get(), blocking, "listener " + l->display); !set)
          throw SetupError("binary upgrade: " + set.error().to_string());
      }
    }
    res.notify_read.reset(j.notify_read >= 0 ? keep(j.notify_read) : -1);
    res.notify_write.reset(j.notify_write >= 0 ? keep(j.notify_write) : -1);
    job->health.failures = j.failures;
    job->health.backoff_ns = j.backoff_ns;
    job->health.retry_at = j.retry_at;
    job->pacing.start_pending = false;
    job->counters.spawns = j.spawns;
    for (std::size_t i = 0; i < kExitReasons; ++i) {
      auto it = j.exits.find(to_string(static_cast<ExitReason>(i)));
      if (it != j.exits.end()) job->counters.exits[i] = it->second;
    }
    job->counters.max_reached = j.max_reached;
    job->counters.accepted_folded = j.accepted;
    job->counters.refused_folded = j.refused;
    job->counters.listener_accepted_folded = j.listener_accepted;
    job->counters.slot_oom_kills = j.slot_oom_kills;
    // Workers share their generation's listener list; a version 1..3 image said none:
    // the current generation's are the job's sockets (older ones are not counted per
    // listener, and only until they leave).
    std::map<std::vector<std::string>, std::shared_ptr<const std::vector<std::string>>> names;
    for (const auto& hw : j.workers) {
      WorkerRec w;
      w.pid = hw.pid;
      w.slot = hw.slot;
      w.generation = hw.generation;
      w.started_ns = hw.started_ns;
      w.phase = worker_phase_of(hw.phase);
      w.kill_at = hw.kill_at;
      w.last_state = static_cast<corral_slot_state>(hw.last_state);
      w.requests_limit = hw.requests_limit;
      w.retire_at = hw.retire_at;
      std::vector<std::string> listeners = hw.listeners;
      if (listeners.empty() && w.generation == job->generation) {
        for (const auto& l : res.listeners) listeners.push_back(l->display);
      }
      if (!listeners.empty()) {
        auto& shared = names[listeners];
        if (!shared) shared = std::make_shared<const std::vector<std::string>>(listeners);
        w.listeners = shared;
      }
      w.reports_listeners = hw.reports_listeners;
      w.requests_seen = hw.requests_seen;
      w.refused_seen = hw.refused_seen;
      for (std::size_t i = 0; i < hw.accepted_seen.size() && i < w.accepted_seen.size(); ++i)
        w.accepted_seen[i] = std::min(hw.accepted_seen[i], kMaxSaneCount);
      if (hw.report_fd >= 0) res.spawn_reports.emplace(w.pid, UniqueFd(keep(hw.report_fd)));
      if (w.slot < res.slot_used.size()) res.slot_used[w.slot] = true;
      // Version 5 (the limits issue): the slot cgroups it runs in, adopted as they are
      // (not recreated, nothing rewritten), with the OOM baseline it started with.
      if (hw.cgroup && !res.cgroup_off && res.slot_cgroups.count(w.slot) == 0) {
        if (SlotCgroup* cg = slot_cgroup(*job, w.slot, true)) cg->oom_base = hw.cgroup_oom_base;
      }
      job->workers.emplace(w.pid, w);
    }
    // Version 5 (the limits issue).
    job->res.cgroup_off = job->res.cgroup_off || j.cgroup_off;
    job->health.budget_limited = j.budget_limited;
    job->pacing.budget_median = j.budget_median;
    if (job->cfg.cgroup.any()) {
      // Slot cgroups no adopted worker runs in (an image killed before removing them).
      std::vector<unsigned> used;
      for (const auto& [slot, cg] : res.slot_cgroups) used.push_back(slot);
      remove_stale_slot_cgroups(cgroup_places(), job->cfg.name, used);
    }
    jobs_.push_back(std::move(job));
  }
  options_.config = std::move(config);
  // Counters go on from where the old image left them; this upgrade is one more "ok".
  reload_results_ = s.reloads;
  upgrade_results_ = s.upgrades;
  ++upgrade_results_["ok"];
  {
    UniqueFd metrics_fd(s.metrics_fd >= 0 ? keep(s.metrics_fd) : -1);
    if (metrics_fd && s.metrics_listen != options_.config.metrics.listen_text) metrics_fd.reset();
    // (No socket handed over, e.g. from a version 2 image: bind it now.)
    if (!metrics_fd && options_.config.metrics.listen) {
      try {
        metrics_fd = bind_metrics(options_.config.metrics);
      } catch (const std::exception& e) {
        spdlog::error("binary upgrade: metrics: {}; no metrics endpoint", e.what());
      }
    }
    start_metrics(std::move(metrics_fd), options_.config.metrics);
  }
  const auto now = monotonic_ns();
  for (auto& job : jobs_) {
    if (job->res.notify_read) arm_notify(*job);
    request_decision(*job, now);
  }
  reload_pending_ = s.reload_pending;  // a SIGHUP that waited for the check: periodic() runs it
  spdlog::info(
      "binary upgrade: took over {} job(s) and {} listener(s) at generation {} "
      "(hand-over version {})",
      jobs_.size(), listeners_.size(), generation_, s.version);
}

}  // namespace corral
