#include "supervisor/supervisor.h"

#include <fcntl.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "common/environment.h"
#include "common/unique_fd.h"
#include "container/cgroup.h"
#include "container/limits.h"
#include "listen/listener.h"
#include "log/log.h"
#include "notify/notify.h"
#include "scoreboard/scoreboard.h"
#include "spawn/spawn.h"
#include "supervisor/accept_lock.h"
#include "supervisor/impl.h"

namespace corral {
namespace {

// The path of our own binary, as exec should find it after an upgrade replaced the
// file: /proc/self/exe names the old inode (" (deleted)" once replaced), so strip that.
std::string executable_path() {
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return "";
  std::string path(buf, static_cast<size_t>(n));
  const std::string deleted = " (deleted)";
  if (path.size() > deleted.size() && path.ends_with(deleted))
    path.resize(path.size() - deleted.size());
  return path;
}

// Slots for the current generation plus old-generation workers still finishing.
unsigned slots_for(const JobConfig& cfg) {
  return std::max(2 * cfg.workers.max, cfg.workers.max + 16);
}

}  // namespace

Supervisor::Supervisor(SupervisorOptions options)
    : impl_(std::make_unique<Impl>(std::move(options))) {}
Supervisor::~Supervisor() = default;
int Supervisor::run() {
  return impl_->run();
}

void Supervisor::Impl::block_signals() {
  sigset_t set;
  sigemptyset(&set);
  // Blocked, an ignored signal is still queued (kernel/signal.c, sig_ignored()), so
  // signalfd sees it even when corral was started with it ignored (nohup, a shell's
  // background job).
  for (int sig : {SIGCHLD, SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2})
    sigaddset(&set, sig);
  if (::sigprocmask(SIG_BLOCK, &set, nullptr) != 0) throw SetupError("sigprocmask", "", errno);
  signal_fd_ = UniqueFd(::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!signal_fd_) throw SetupError("signalfd", "", errno);
  // A worker's closed socket must not kill the supervisor.
  ::signal(SIGPIPE, SIG_IGN);
}

std::unique_ptr<Job> Supervisor::Impl::build_job(const JobConfig& cfg, bool reuse_scoreboard) {
  auto job = std::make_unique<Job>();
  job->cfg = cfg;
  job->generation = generation_;
  auto& res = job->res;
  if (!cfg.user.empty()) res.credentials = resolve_credentials(cfg.user, cfg.group);
  // Sockets an earlier job of this generation took already: a host:port listener can
  // adopt the very socket that a later job's systemd:NAME names.
  std::vector<const Listener*> taken;
  for (const auto& l : listeners_.all()) {
    if (l->used) taken.push_back(l.get());
  }
  std::vector<size_t> spec_of;
  res.listeners = listeners_.open_for_job(cfg.name, cfg.listeners, &spec_of);
  for (size_t i = 0; i < res.listeners.size(); ++i)
    res.access.push_back(i < spec_of.size() ? cfg.listeners[spec_of[i]].access : AccessRules{});
  for (const auto& l : res.listeners) {
    // A systemd:NAME socket may turn out to be one (ListenDatagram=): workers that accept
    // on it would fail at once, over and over.
    if (cfg.mode != Mode::plain &&
        (l->display.starts_with("udp:") || l->display.starts_with("unix-dgram:")))
      throw SetupError("job " + cfg.name + ": " + l->display +
                       " is a datagram socket, which only mode plain passes on (" +
                       to_string(cfg.mode) + " workers accept connections); use mode: plain");
  }
  // Also on the sockets kept from before (reload, hand-over, systemd): replaced or removed.
  if (auto filtered = apply_access(*job); !filtered)
    throw SetupError("job " + cfg.name + ": " + filtered.error().to_string());
  const AcceptMutex kind = resolve_accept_mutex(cfg, res.listeners.size());
  // O_NONBLOCK lives on the open file description that every worker, every generation
  // and the supervisor share: only the supervisor sets it, explicitly, whatever the
  // socket came with (bound, systemd, fd store, hand-over). docs/PROTOCOL.md, section 2.
  const bool blocking = listeners_blocking(cfg, kind, res.listeners.size());
  for (const auto& l : res.listeners) {
    res.listeners_text += (res.listeners_text.empty() ? "" : "\n") + l->display;
    const int fd = l->fd.get();
    if (std::find(taken.begin(), taken.end(), l.get()) != taken.end()) {
      const int flags = ::fcntl(fd, F_GETFL);
      const bool other_blocking = flags >= 0 && (flags & O_NONBLOCK) == 0;
      if (other_blocking != blocking)
        throw SetupError("job " + cfg.name + ": listener " + l->display +
                         " is also used by another job, which needs it " +
                         (other_blocking ? "blocking" : "non-blocking") +
                         " while this one needs it " + (blocking ? "blocking" : "non-blocking") +
                         " (the flag is shared by every process that holds the socket); give "
                         "each job its own socket, or both the same accept_mutex and number of "
                         "listeners");
    }
    if (auto set = set_listener_blocking(fd, blocking, "listener " + l->display); !set)
      throw SetupError(set.error().to_string());
  }
  if (!reuse_scoreboard) {
    res.sb = Scoreboard::create(scoreboard_dir_, cfg.name, slots_for(cfg));
    res.slot_used.assign(res.sb.slot_count(), false);
    if (cfg.mode != Mode::plain) {
      int fds[2];
      if (::pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0)
        throw SetupError("pipe2", "notify pipe", errno);
      res.notify_read = UniqueFd(fds[0]);
      res.notify_write = UniqueFd(fds[1]);
    }
  }
  auto lock = make_accept_lock(kind, scoreboard_dir_, cfg.name, generation_);
  if (!lock) throw SetupError(lock.error().to_string());
  res.lock = std::move(lock.value());

  auto& env = res.base_env;
  env = environment_;
  env = merge_environment(std::move(env), cfg.env);
  if (res.credentials) {
    set_env(env, "HOME", res.credentials->home);
    set_env(env, "USER", res.credentials->user);
    set_env(env, "LOGNAME", res.credentials->user);
  }
  set_env(env, CORRAL_ENV_JOB, cfg.name);
  return job;
}

Status Supervisor::Impl::apply_access(const Job& job) {
  // inetd: the acceptor decides, so that a refusal is logged and counted.
  const bool kernel = job.cfg.mode != Mode::inetd;
  for (size_t i = 0; i < job.res.listeners.size(); ++i) {
    const auto& l = job.res.listeners[i];
    if (l->display.starts_with("unix") || l->display.starts_with("@")) continue;
    const AccessRules none;
    const auto& rules = kernel && i < job.res.access.size() ? job.res.access[i] : none;
    if (auto applied = apply_access_filter(l->fd.get(), rules); !applied)
      return Error{applied.error().code, "listener " + l->display + ": " + applied.error().what};
  }
  return Ok{};
}

void Supervisor::Impl::roll_back_listeners(
    const std::vector<std::shared_ptr<Listener>>& before) noexcept {
  // Back to the marks of the running configuration: what it uses stays, what the
  // rejected one opened is closed (and its unix socket file removed), so that a
  // rejected reload leaves no socket listening with no worker behind it.
  listeners_.begin_generation();
  for (const auto& job : jobs_) {
    for (const auto& l : job->res.listeners) l->used = true;
  }
  for (const auto& l : listeners_.all()) {
    const bool old = std::find(before.begin(), before.end(), l) != before.end();
    if (old) {
      if (!l->inherited && !l->used) l->used = true;  // kept as the running set had it
      continue;
    }
    if (!l->inherited) {
      if (auto file = socket_file_of(l->display); !file.empty())
        unlink_own_socket_file(l->fd.get(), file);
    }
  }
  for (const auto& closed : listeners_.close_unused())
    spdlog::info("closed listener {} (the rejected configuration had opened it)", closed);
}

void Supervisor::Impl::apply_config(Config config, bool initial) {
  const auto previous_generation = generation_;
  generation_ = initial ? 1 : generation_ + 1;
  const std::vector<std::shared_ptr<Listener>> listeners_before = listeners_.all();
  listeners_.begin_generation();
  auto find_old = [&](const std::string& name) -> Job* {
    Job* found = nullptr;
    for (auto& o : jobs_) {
      if (o->cfg.name == name && (found == nullptr || !o->removed())) found = o.get();
    }
    return found;
  };
  // Phase 1: everything that can fail (binding, scoreboards, locks, users). Nothing
  // running is touched; a failure closes every resource phase 1 opened (the new Jobs'
  // scoreboards, locks and pipes with them, new sockets by roll_back_listeners) and
  // the running configuration goes on as it was.
  std::vector<std::unique_ptr<Job>> next;
  try {
    for (const auto& cfg : config.jobs)
      next.push_back(build_job(cfg, find_old(cfg.name) != nullptr));
  } catch (...) {
    generation_ = previous_generation;
    for (auto& job : next) {
      if (job->res.sb.valid()) ::unlink(job->res.sb.path().c_str());  // created by this attempt
    }
    next.clear();
    roll_back_listeners(listeners_before);
    // Phase 1 set O_NONBLOCK for the new jobs' needs; the running ones had theirs.
    for (const auto& job : jobs_) {
      if (job->removed()) continue;
      const bool blocking =
          listeners_blocking(job->cfg, job->res.lock.kind, job->res.listeners.size());
      for (const auto& l : job->res.listeners)
        (void)set_listener_blocking(l->fd.get(), blocking, "listener " + l->display);
      // ... and their filters for the new rules: the running ones go back on.
      if (auto filtered = apply_access(*job); !filtered)
        spdlog::error("job {}: {}", job->cfg.name, filtered.error().to_string());
    }
    throw;
  }
  // Phase 2 (cannot fail): the new jobs take over the scoreboards, slots and
  // (old-generation) workers of the jobs with the same name.
  for (auto& job : next) {
    Job* old = find_old(job->cfg.name);
    if (old == nullptr) continue;
    auto& res = job->res;
    res.sb = std::move(old->res.sb);
    LogContext log_ctx{job->cfg.name};
    if (!res.sb.grow(slots_for(job->cfg)))
      spdlog::warn("job {}: cannot grow scoreboard {}: {}", job->cfg.name, res.sb.path(),
                   std::strerror(errno));
    res.slot_used.assign(res.sb.slot_count(), false);
    job->workers = std::move(old->workers);
    job->counters = old->counters;
    res.spawn_reports = std::move(old->res.spawn_reports);
    res.slot_cgroups = std::move(old->res.slot_cgroups);  // the workers' slot cgroups
    res.cgroup_off = old->res.cgroup_off;
    res.cgroup_used = old->res.cgroup_used;
    if (!res.notify_read && old->res.notify_read) {
      res.notify_read = std::move(old->res.notify_read);
      res.notify_write = std::move(old->res.notify_write);
      job->wake.notify_armed = false;  // re-registered below for the new Job
      ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, res.notify_read.get(), nullptr);
    }
    old->workers.clear();
    for (const auto& [pid, w] : job->workers) {
      if (w.slot < res.slot_used.size()) res.slot_used[w.slot] = true;
    }
    old->cfg.name.clear();  // taken over: dropped below
    old->health.phase = JobPhase::removed;
  }
  auto now = monotonic_ns();
  for (auto& old : jobs_) {
    if (old->cfg.name.empty()) continue;
    if (!old->removed()) {
      LogContext log_ctx{old->cfg.name};
      spdlog::info("job {}: removed by the new configuration; stopping its workers", old->cfg.name);
      job_event(*old, JobEvent::remove, now, "removed");
    }
    if (!old->workers.empty()) next.push_back(std::move(old));
  }
  jobs_ = std::move(next);
  options_.config = std::move(config);
  if (initial) {
    // Slot cgroups a previous corral left (killed before it could remove them).
    for (const auto& job : jobs_)
      if (job->cfg.cgroup.any()) remove_stale_slot_cgroups(cgroup_places(), job->cfg.name, {});
  }
  for (auto& job : jobs_) {
    if (job->res.notify_read && !job->wake.notify_armed && !job->removed()) arm_notify(*job);
  }
  for (const auto& closed : listeners_.close_unused()) spdlog::info("closed listener {}", closed);
  listeners_.report_unused_inherited();
  for (auto& job : jobs_) {
    for (auto& [pid, w] : job->workers) {
      if (w.generation != job->generation || job->removed())
        worker_event(*job, w, WorkerEvent::stop, now);
    }
    request_decision(*job, now);
  }
}

int Supervisor::Impl::run() {
  self_ = ::getpid();
  started_realtime_ = realtime_ns();
  self_exe_ = executable_path();
  const char* handed = std::getenv(kUpgradeEnv);
  const std::string handed_state = handed != nullptr ? handed : "";
  ::unsetenv(kUpgradeEnv);
  if (handed_state.empty()) notifier_ = Notifier::from_environment();
  block_signals();
  // Descendants that leave their worker's process group (setsid, double fork) are
  // reparented to us, not to init, so that they are found, stopped and reaped
  // (leftovers.cpp). Survives exec, so an upgraded image keeps it.
  if (::prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0)
    spdlog::warn("prctl(PR_SET_CHILD_SUBREAPER): {}; orphaned descendants go to init",
                 std::strerror(errno));
  // One pipe per starting worker and a socket per listener: raise the soft fd limit to
  // the hard one for the supervisor alone; workers get the original back (select()
  // users break above 1024).
  rlimit nofile{};
  if (::getrlimit(RLIMIT_NOFILE, &nofile) == 0) {
    original_nofile_ = nofile;
    nofile.rlim_cur = nofile.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &nofile);
  }
  environment_ = inheritable_environment();
  oom_kills_seen_ = oom_kills(container_limits());
  epoll_ = UniqueFd(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll_) throw SetupError("epoll_create1", "", errno);
  if (!handed_state.empty()) {
    adopt_upgrade_state(handed_state);
  } else {
    scoreboard_dir_ = scoreboard_dir_of(options_.config);
    listeners_.adopt_systemd_listeners();
    // Bound first: an address in use fails the start before any job's socket is bound.
    UniqueFd metrics_fd = bind_metrics(options_.config.metrics);
    try {
      apply_config(options_.config, true);
    } catch (...) {
      // A start-up that failed leaves nothing behind: apply_config closed what it opened.
      if (metrics_fd && options_.config.metrics.listen &&
          std::holds_alternative<UnixAddress>(options_.config.metrics.listen->address))
        ::unlink(std::get<UnixAddress>(options_.config.metrics.listen->address).path.c_str());
      throw;
    }
    start_metrics(std::move(metrics_fd), options_.config.metrics);
  }
  store_bound_listeners();

  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = signal_fd_.get();
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, signal_fd_.get(), &ev) != 0)
    throw SetupError("epoll_ctl", "signalfd", errno);

  spdlog::info("corral {} started (pid {}), {} job(s), scoreboards in {}", CORRAL_VERSION, self_,
               jobs_.size(), scoreboard_dir_);
  periodic(monotonic_ns());
  for (;;) {
    auto now = monotonic_ns();
    if (stopping() && jobs_.empty()) {
      // Workers are gone; what they left outside their groups has been reparented to
      // us by now: find it, and stay until it is gone too (bounded by its deadline).
      adopt_orphans(now);
      if (leftovers_.empty()) break;
    }
    if (!stopping() && all_failed()) {
      spdlog::error("every job has failed; exiting");
      failed_exit_ = true;
      begin_stop(StopMode::graceful);
      continue;
    }
    notifier_.watchdog(now);
    auto deadline = next_deadline(now);
    int timeout_ms =
        deadline <= now
            ? 0
            : static_cast<int>(std::min<std::uint64_t>((deadline - now + kMs - 1) / kMs, 60000));
    epoll_event events[8];
    int n = ::epoll_wait(epoll_.get(), events, 8, timeout_ms);
    if (n < 0 && errno != EINTR) {
      spdlog::critical("epoll_wait: {}", std::strerror(errno));
      return 1;
    }
    for (int i = 0; i < n; ++i) {
      if (events[i].data.fd == signal_fd_.get()) {
        handle_signals();
        continue;
      }
      if (metrics_ && metrics_->owns(events[i].data.fd)) {
        metrics_->on_event(events[i].data.fd, events[i].events, monotonic_ns());
        continue;
      }
      for (auto& job : jobs_) {
        if (job->res.notify_read.get() != events[i].data.fd) continue;
        // One bounded read, then deaf for kNotifyInterval (the fd is EPOLLONESHOT):
        // under overload every connection notifies and one look per interval is
        // enough; a worker flooding the pipe costs one read per interval, never a
        // core (its bytes only ask for a look, which is rate-limited anyway).
        char buf[kNotifyDrain];
        [[maybe_unused]] auto r = ::read(job->res.notify_read.get(), buf, sizeof buf);
        auto at = monotonic_ns();
        job->wake.notify_armed = false;
        job->wake.notify_rearm_at = at + kNotifyInterval;
        request_decision(*job, at);
      }
    }
    auto after = monotonic_ns();
    for (auto& job : jobs_) {
      // At max nothing can be started: the notifications would only wake us up.
      if (job->res.notify_read && !job->wake.notify_armed && after >= job->wake.notify_rearm_at &&
          !job->at_max)
        arm_notify(*job);
    }
    periodic(after);
  }
  kill_all_leftovers();
  // Every worker is reaped: their slot cgroups go, then each job's own directory. What a
  // worker left in its slot cgroup was killed just above; it is reaped here (we are its
  // subreaper) so that the cgroup can go: 2 s at the most.
  for (const auto& job : jobs_) remove_job_cgroups(*job);
  const auto cgroups_until = monotonic_ns() + 2 * kSec;
  while (!cgroup_leftovers_.empty() || !cgroup_jobs_pending_.empty()) {
    while (::waitpid(-1, nullptr, WNOHANG) > 0) {
    }
    retry_cgroup_leftovers();
    if (monotonic_ns() >= cgroups_until) break;
    if (!cgroup_leftovers_.empty() || !cgroup_jobs_pending_.empty()) {
      timespec pause{0, 10 * 1000 * 1000};
      ::nanosleep(&pause, nullptr);
    }
  }
  stop_metrics();
  for (const auto& l : listeners_.all()) {
    // Unix socket files we bound ourselves go with us.
    // (A stored one stays: its socket lives on in the fd store.)
    if (!l->inherited && !l->stored) {
      if (auto file = socket_file_of(l->display); !file.empty())
        unlink_own_socket_file(l->fd.get(), file);
    }
  }
  spdlog::info("corral stopped");
  return failed_exit_ ? 1 : 0;
}

void Supervisor::Impl::arm_notify(Job& job) noexcept {
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLONESHOT;
  ev.data.fd = job.res.notify_read.get();
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, ev.data.fd, &ev) != 0 &&
      ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, ev.data.fd, &ev) != 0) {
    spdlog::warn("job {}: epoll_ctl notify pipe: {}", job.cfg.name, std::strerror(errno));
    return;
  }
  job.wake.notify_armed = true;
}

void Supervisor::Impl::handle_signals() noexcept {
  signalfd_siginfo info{};
  while (::read(signal_fd_.get(), &info, sizeof info) == static_cast<ssize_t>(sizeof info)) {
    switch (info.ssi_signo) {
      case SIGCHLD: reap(); break;
      case SIGTERM:
        // stop.drain applies to SIGTERM only (Kubernetes' stop sequence); a second
        // SIGTERM skips what is left of it.
        if (stop_ == StopMode::none && options_.config.stop.drain.count() > 0) {
          begin_drain();
        } else {
          spdlog::info("SIGTERM: stopping gracefully{}",
                       draining() ? " (the drain is cut short)" : "");
          begin_stop(StopMode::graceful);
        }
        break;
      case SIGINT:
        spdlog::info("SIGINT: stopping gracefully");
        begin_stop(StopMode::graceful);
        break;
      case SIGQUIT:
        spdlog::info("SIGQUIT: stopping now");
        begin_stop(StopMode::fast);
        break;
      case SIGHUP:
      case SIGUSR2:
        if (draining()) {
          spdlog::warn("{} ignored while draining",
                       info.ssi_signo == SIGHUP ? "SIGHUP" : "SIGUSR2");
        } else if (stopping()) {
        } else if (info.ssi_signo == SIGHUP && upgrade_.check_pid != 0) {
          // Reloading now would hand the new binary a configuration it was not asked
          // about: the reload waits for the check (and, if it execs, for the new image).
          spdlog::info("SIGHUP: the reload waits for the upgrade check");
          reload_pending_ = true;
        } else {
          info.ssi_signo == SIGHUP ? reload() : upgrade();
        }
        break;
      default: break;
    }
  }
  reap();  // SIGCHLD coalesces: reap whatever is there
}

void Supervisor::Impl::reap() noexcept {
  for (;;) {
    int status = 0;
    pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid <= 0) return;
    bool found = false;
    for (auto& job : jobs_) {
      auto it = job->workers.find(pid);
      if (it == job->workers.end()) continue;
      WorkerRec rec = it->second;
      job->workers.erase(it);
      on_worker_exit(*job, rec, status);
      found = true;
      break;
    }
    if (!found && pid == upgrade_.check_pid) {
      finish_upgrade(status, false);  // may exec: nothing after it in this loop matters then
      continue;
    }
    if (!found) {
      // An adopted orphan (we are a subreaper), known or not yet seen.
      const bool known = forget_leftover(pid);
      spdlog::debug("reaped {} {} ({})", known ? "orphan" : "unknown child", pid,
                    describe_status(status));
    }
  }
}

void Supervisor::Impl::store_bound_listeners() noexcept {
  // Sockets a reload closed leave the store, or systemd would keep them listening.
  auto removed = listeners_.take_removed_from_store();
  if (!notifier_.enabled()) return;
  notifier_.remove_fds(removed);
  std::vector<std::pair<int, std::string>> fds;
  for (const auto& l : listeners_.all()) {
    if (!l->inherited && !l->stored) {
      l->store_name = fd_store_name(l->display);
      fds.emplace_back(l->fd.get(), l->store_name);
      l->stored = true;
    }
  }
  notifier_.store_fds(fds);
}

std::uint64_t Supervisor::Impl::next_deadline(std::uint64_t now) const noexcept {
  std::uint64_t deadline = std::max(next_audit_, now);
  auto consider = [&](std::uint64_t at) {
    if (at != 0) deadline = std::min(deadline, std::max(at, now));
  };
  for (const auto& job : jobs_) {
    consider(job->wake.decide_due);
    consider(job->wake.wake_at);
    if (job->res.notify_read && !job->wake.notify_armed && !job->at_max)
      consider(job->wake.notify_rearm_at);
  }
  consider(leftover_deadline(leftovers_));
  if (upgrade_.check_pid != 0) consider(upgrade_.deadline);
  if (draining()) consider(drain_until_);
  consider(notifier_.next_deadline());
  if (metrics_) consider(metrics_->next_deadline());
  if (!options_.config.metrics.textfile.empty()) consider(textfile_due_);
  return deadline;
}

bool Supervisor::Impl::all_failed() const noexcept {
  bool any = false;
  for (const auto& job : jobs_) {
    if (job->removed()) continue;
    any = true;
    if (job->health.phase != JobPhase::failed) return false;
  }
  return any;
}

void Supervisor::Impl::begin_drain() noexcept {
  // Not ready any more (scoreboards say draining: `status --check` exits 1, /readyz
  // answers 503), but every listener is still served, and the pool kept, for
  // stop.drain; then the graceful stop. sd_notify has no READY=0: STOPPING=1 and a STATUS.
  const auto drain = to_ns(options_.config.stop.drain);
  stop_ = StopMode::draining;
  drain_until_ = monotonic_ns() + drain;
  spdlog::info("SIGTERM: draining for {} before stopping (a second SIGTERM stops now)",
               format_duration(options_.config.stop.drain));
  notifier_.stopping();
  notifier_.status("draining", monotonic_ns());
  notifier_.flush_status(monotonic_ns());
  write_headers(monotonic_ns());
}

void Supervisor::Impl::begin_stop(StopMode mode) noexcept {
  auto now = monotonic_ns();
  if (stop_ == StopMode::fast || stop_ == mode) return;
  if (stop_ == StopMode::none) notifier_.stopping();  // a drain has sent it already
  stop_ = mode;
  for (auto& job : jobs_) {
    job_event(*job, JobEvent::stop, now, "stopping");
    if (mode == StopMode::fast) {
      for (auto& [pid, w] : job->workers) worker_event(*job, w, WorkerEvent::kill, now);
    }
  }
  if (mode == StopMode::fast) kill_all_leftovers();
  adopt_orphans(now);
}

void Supervisor::Impl::reload() noexcept {
  if (options_.config_path.empty()) {
    spdlog::info("SIGHUP: restarting workers with the command-line configuration");
  } else {
    spdlog::info("SIGHUP: reloading {}", options_.config_path);
  }
  notifier_.reloading();
  try {
    std::string text = options_.config_path.empty() ? options_.config_text
                                                    : read_config_text(options_.config_path);
    Config config = options_.config_path.empty()
                        ? options_.config
                        : load_config_text(text, options_.config_path, options_.check);
    if (scoreboard_dir_of(config) != scoreboard_dir_) {
      spdlog::warn("scoreboard_dir changes only at restart; keeping {}", scoreboard_dir_);
      config.scoreboard_dir = scoreboard_dir_;
    }
    // A new metrics address is bound before anything changes (a failure keeps it all).
    const bool metrics_moved = config.metrics.listen_text != options_.config.metrics.listen_text;
    UniqueFd metrics_fd;
    if (metrics_moved) metrics_fd = bind_metrics(config.metrics);
    const MetricsSpec metrics = config.metrics;
    if (metrics.textfile != options_.config.metrics.textfile) textfile_due_ = 0;
    apply_config(std::move(config), false);
    if (metrics_moved) start_metrics(std::move(metrics_fd), metrics);
    options_.config_text = std::move(text);
    store_bound_listeners();
    ++reload_results_["ok"];
    spdlog::info("reload done: generation {}", generation_);
  } catch (const ConfigError& e) {
    for (const auto& issue : e.issues()) spdlog::error("{}", issue.to_string());
    spdlog::error("reload rejected: the running configuration stays");
    ++reload_results_["rejected"];
  } catch (const std::exception& e) {
    spdlog::error("reload failed: {}; the running configuration stays", e.what());
    ++reload_results_["failed"];
  }
  // READY=1 follows RELOADING=1 once the (new or kept) generation is up.
  ready_sent_ = false;
}

}  // namespace corral
