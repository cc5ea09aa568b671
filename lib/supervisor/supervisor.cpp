#include "supervisor/supervisor.h"

#include <fcntl.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "common/unique_fd.h"
#include "listen/listener.h"
#include "log/log.h"
#include "notify/notify.h"
#include "scoreboard/scoreboard.h"
#include "spawn/spawn.h"
#include "supervisor/impl.h"
#include "supervisor/accept_lock.h"

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
  if (!cfg.user.empty()) job->credentials = resolve_credentials(cfg.user, cfg.group);
  job->listeners = listeners_.open_for_job(cfg);
  for (const auto& l : job->listeners) {
    job->listeners_text += (job->listeners_text.empty() ? "" : "\n") + l->display;
    // prefork and inetd workers poll several listeners and accept without blocking
    // (docs/PROTOCOL.md); plain programs get the sockets as they are.
    if (cfg.mode != Mode::plain) {
      int flags = ::fcntl(l->fd.get(), F_GETFL);
      if (flags >= 0) ::fcntl(l->fd.get(), F_SETFL, flags | O_NONBLOCK);
    }
  }
  if (!reuse_scoreboard) {
    job->sb = Scoreboard::create(scoreboard_dir_, cfg.name, slots_for(cfg));
    job->slot_used.assign(job->sb.slot_count(), false);
    if (cfg.mode != Mode::plain) {
      int fds[2];
      if (::pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0)
        throw SetupError("pipe2", "notify pipe", errno);
      job->notify_read = UniqueFd(fds[0]);
      job->notify_write = UniqueFd(fds[1]);
    }
  }
  auto lock = make_accept_lock(resolve_accept_mutex(cfg), scoreboard_dir_, cfg.name, generation_);
  if (!lock) throw SetupError(lock.error().to_string());
  job->lock = std::move(lock.value());

  auto& env = job->base_env;
  env = environment_;
  for (const auto& [k, v] : cfg.env) set_env(env, k, v);
  if (job->credentials) {
    set_env(env, "HOME", job->credentials->home);
    set_env(env, "USER", job->credentials->user);
    set_env(env, "LOGNAME", job->credentials->user);
  }
  set_env(env, CORRAL_ENV_JOB, cfg.name);
  return job;
}

void Supervisor::Impl::apply_config(Config config, bool initial) {
  const auto previous_generation = generation_;
  generation_ = initial ? 1 : generation_ + 1;
  listeners_.begin_generation();
  auto find_old = [&](const std::string& name) -> Job* {
    Job* found = nullptr;
    for (auto& o : jobs_) {
      if (o->cfg.name == name && (found == nullptr || !o->removed)) found = o.get();
    }
    return found;
  };
  // Phase 1: everything that can fail (binding, scoreboards, locks, users). Nothing
  // running is touched, so a failure leaves the running configuration intact.
  std::vector<std::unique_ptr<Job>> next;
  try {
    for (const auto& cfg : config.jobs)
      next.push_back(build_job(cfg, find_old(cfg.name) != nullptr));
  } catch (...) {
    generation_ = previous_generation;
    throw;
  }
  // Phase 2: the new jobs take over the scoreboards, slots and (old-generation)
  // workers of the jobs with the same name.
  for (auto& job : next) {
    Job* old = find_old(job->cfg.name);
    if (old == nullptr) continue;
    job->sb = std::move(old->sb);
    LogContext log_ctx{job->cfg.name};
    if (!job->sb.grow(slots_for(job->cfg)))
      spdlog::warn("job {}: cannot grow scoreboard {}: {}", job->cfg.name, job->sb.path(),
                   std::strerror(errno));
    job->slot_used.assign(job->sb.slot_count(), false);
    job->workers = std::move(old->workers);
    job->spawn_reports = std::move(old->spawn_reports);
    if (!job->notify_read && old->notify_read) {
      job->notify_read = std::move(old->notify_read);
      job->notify_write = std::move(old->notify_write);
      job->notify_armed = false;  // re-registered below for the new Job
      ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, job->notify_read.get(), nullptr);
    }
    old->workers.clear();
    for (const auto& [pid, w] : job->workers) {
      if (w.slot < job->slot_used.size()) job->slot_used[w.slot] = true;
    }
    old->cfg.name.clear();  // taken over: dropped below
    old->removed = true;
  }
  for (auto& old : jobs_) {
    if (old->cfg.name.empty()) continue;
    if (!old->removed) {
      old->removed = true;
      LogContext log_ctx{old->cfg.name};
      spdlog::info("job {}: removed by the new configuration; stopping its workers", old->cfg.name);
    }
    if (!old->workers.empty()) next.push_back(std::move(old));
  }
  jobs_ = std::move(next);
  options_.config = std::move(config);
  for (auto& job : jobs_) {
    if (job->notify_read && !job->notify_armed && !job->removed) arm_notify(*job);
  }
  for (const auto& closed : listeners_.close_unused()) spdlog::info("closed listener {}", closed);
  listeners_.report_unused_inherited();
  auto now = monotonic_ns();
  for (auto& job : jobs_) {
    for (auto& [pid, w] : job->workers) {
      if ((w.generation != job->generation || job->removed) && !w.term_sent) {
        bool running_program = job->cfg.mode == Mode::inetd && w.last_state == CORRAL_SLOT_BUSY;
        stop_worker(*job, w, now, !running_program);
      }
    }
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
  scoreboard_dir_ = scoreboard_dir_of(options_.config);
  epoll_ = UniqueFd(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll_) throw SetupError("epoll_create1", "", errno);
  if (!handed_state.empty()) {
    adopt_upgrade_state(handed_state);
  } else {
    listeners_.adopt_systemd_listeners();
    apply_config(options_.config, true);
  }
  store_bound_listeners();

  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = signal_fd_.get();
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, signal_fd_.get(), &ev) != 0)
    throw SetupError("epoll_ctl", "signalfd", errno);

  spdlog::info("corral {} started (pid {}), {} job(s), scoreboards in {}", CORRAL_VERSION, self_,
               jobs_.size(), scoreboard_dir_);
  maintain();
  for (;;) {
    auto now = monotonic_ns();
    if (stopping_ && jobs_.empty()) break;
    if (!stopping_ && all_failed()) {
      spdlog::error("every job has failed; exiting");
      failed_exit_ = true;
      begin_stop(false);
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
      for (auto& job : jobs_) {
        if (job->notify_read.get() != events[i].data.fd) continue;
        // Drain, and stay deaf for kNotifyInterval: under overload every connection
        // notifies, and one look per interval is enough.
        char buf[512];
        while (::read(job->notify_read.get(), buf, sizeof buf) > 0) {
        }
        job->notify_armed = false;
        job->notify_rearm_at = monotonic_ns() + kNotifyInterval;
      }
    }
    auto after = monotonic_ns();
    for (auto& job : jobs_) {
      // At max nothing can be started: the notifications would only wake us up.
      if (job->notify_read && !job->notify_armed && after >= job->notify_rearm_at && !job->at_max)
        arm_notify(*job);
    }
    maintain();
  }
  for (const auto& l : listeners_.all()) {
    // Unix socket files we bound ourselves go with us.
    // (A stored one stays: its socket lives on in the fd store.)
    if (!l->inherited && !l->stored && l->display.starts_with("unix:"))
      ::unlink(l->display.c_str() + 5);
  }
  spdlog::info("corral stopped");
  return failed_exit_ ? 1 : 0;
}

void Supervisor::Impl::arm_notify(Job& job) noexcept {
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLONESHOT;
  ev.data.fd = job.notify_read.get();
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, ev.data.fd, &ev) != 0 &&
      ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, ev.data.fd, &ev) != 0) {
    spdlog::warn("job {}: epoll_ctl notify pipe: {}", job.cfg.name, std::strerror(errno));
    return;
  }
  job.notify_armed = true;
}

void Supervisor::Impl::handle_signals() noexcept {
  signalfd_siginfo info{};
  while (::read(signal_fd_.get(), &info, sizeof info) == static_cast<ssize_t>(sizeof info)) {
    switch (info.ssi_signo) {
      case SIGCHLD: reap(); break;
      case SIGTERM:
      case SIGINT:
        spdlog::info("{}: stopping gracefully", info.ssi_signo == SIGTERM ? "SIGTERM" : "SIGINT");
        begin_stop(false);
        break;
      case SIGQUIT:
        spdlog::info("SIGQUIT: stopping now");
        begin_stop(true);
        break;
      case SIGHUP:
        if (!stopping_) reload();
        break;
      case SIGUSR2:
        if (!stopping_) upgrade();
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
    if (!found) spdlog::debug("reaped unknown child {} ({})", pid, describe_status(status));
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
  std::uint64_t deadline = now + kSlowTick;
  bool fast = false;
  for (const auto& job : jobs_) {
    for (const auto& [pid, w] : job->workers) {
      if (w.term_sent && !w.kill_sent && w.kill_at != 0) deadline = std::min(deadline, w.kill_at);
      if (!w.term_sent && !w.ready) fast = true;  // watch new workers come up
    }
    if (job->state == JobState::backing_off && !job->removed)
      deadline = std::min(deadline, std::max(job->retry_at, now));
    if (job->excess_since != 0) fast = true;
    if (job->topup_at != 0) deadline = std::min(deadline, std::max(job->topup_at, now));
    if (job->notify_read && !job->notify_armed && !job->at_max)
      deadline = std::min(deadline, std::max(job->notify_rearm_at, now));
  }
  if (fast) deadline = std::min(deadline, now + kFastTick);
  if (auto n = notifier_.next_deadline(); n != 0) deadline = std::min(deadline, std::max(n, now));
  return deadline;
}

bool Supervisor::Impl::all_failed() const noexcept {
  bool any = false;
  for (const auto& job : jobs_) {
    if (job->removed) continue;
    any = true;
    if (job->state != JobState::failed) return false;
  }
  return any;
}

void Supervisor::Impl::begin_stop(bool fast) noexcept {
  auto now = monotonic_ns();
  if (stopping_ && !fast) return;
  if (!stopping_) notifier_.stopping();
  stopping_ = true;
  fast_stop_ = fast_stop_ || fast;
  for (auto& job : jobs_) {
    for (auto& [pid, w] : job->workers) {
      if (fast) {
        signal_worker(*job, w, SIGKILL);
        w.term_sent = true;
        w.kill_sent = true;
        continue;
      }
      // inetd: a running program is left to finish within graceful_timeout; idle
      // acceptors are stopped.
      bool running_program = job->cfg.mode == Mode::inetd && w.last_state == CORRAL_SLOT_BUSY;
      stop_worker(*job, w, now, !running_program);
    }
  }
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
    apply_config(std::move(config), false);
    options_.config_text = std::move(text);
    store_bound_listeners();
    spdlog::info("reload done: generation {}", generation_);
  } catch (const ConfigError& e) {
    for (const auto& issue : e.issues()) spdlog::error("{}", issue.to_string());
    spdlog::error("reload rejected: the running configuration stays");
  } catch (const std::exception& e) {
    spdlog::error("reload failed: {}; the running configuration stays", e.what());
  }
  // READY=1 follows RELOADING=1 once the (new or kept) generation is up.
  ready_sent_ = false;
}

}  // namespace corral
