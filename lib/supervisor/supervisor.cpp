#include "supervisor/supervisor.h"

#include <corral/protocol.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>

#include "common/unique_fd.h"
#include "listen/listener.h"
#include "log/log.h"
#include "notify/notify.h"
#include "scoreboard/scoreboard.h"
#include "spawn/spawn.h"
#include "supervisor/inetd.h"
#include "supervisor/pool.h"

namespace corral {
namespace {

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
// waiting) is started this long after it is first seen: the new workers' exec then
// does not compete for the CPU with the connection that used up a spare (in inetd mode,
// the program's own exec), and top-ups close together are done at once.
constexpr std::uint64_t kTopUpDelay = 10 * kMs;
constexpr std::uint64_t kSpawnWindow = 100 * kMs;

std::uint64_t to_ns(Duration d) {
  return d.count() > 0 ? static_cast<std::uint64_t>(d.count()) : 0;
}

corral_job_mode wire_mode(Mode m) {
  switch (m) {
    case Mode::prefork: return CORRAL_MODE_PREFORK;
    case Mode::inetd: return CORRAL_MODE_INETD;
    case Mode::plain: return CORRAL_MODE_PLAIN;
  }
  return CORRAL_MODE_PREFORK;
}

enum class JobState { running, backing_off, failed };

std::string describe_status(int status) {
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

// Connections waiting in the accept queues of `listeners`: TCP_INFO's tcpi_unacked is
// the accept queue length of a listening TCP socket (tcp_get_info()); for other
// sockets poll() only says whether any waits (counted as 1).
unsigned queued_connections(const std::vector<std::shared_ptr<Listener>>& listeners) {
  unsigned total = 0;
  for (const auto& l : listeners) {
    tcp_info info{};
    socklen_t len = sizeof info;
    if (::getsockopt(l->fd.get(), IPPROTO_TCP, TCP_INFO, &info, &len) == 0 &&
        info.tcpi_state == TCP_LISTEN) {
      total += info.tcpi_unacked;
      continue;
    }
    pollfd p{l->fd.get(), POLLIN, 0};
    if (::poll(&p, 1, 0) == 1 && (p.revents & POLLIN) != 0) total += 1;
  }
  return total;
}

constexpr const char* kUpgradeEnv = "CORRAL_UPGRADE_STATE";

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

void set_cloexec(int fd, bool on) {
  if (fd < 0) return;
  int flags = ::fcntl(fd, F_GETFD);
  if (flags >= 0) ::fcntl(fd, F_SETFD, on ? (flags | FD_CLOEXEC) : (flags & ~FD_CLOEXEC));
}

enum class AuditFinding { fine, lost, stalled, extra };
constexpr std::uint64_t kAuditSpacing = 200 * kMs;

// The accept mutex of one generation of a job.
struct AcceptLock {
  AcceptMutex kind = AcceptMutex::none;
  UniqueFd fd;          // handed to workers (pipe: FIFO O_RDWR; fcntl: memfd)
  UniqueFd private_fd;  // pipe: the supervisor's own non-blocking end, for audits
  AuditFinding finding = AuditFinding::fine;
  std::uint64_t finding_since = 0;
  std::uint64_t last_requests = 0;
};

AcceptMutex resolve_accept_mutex(const JobConfig& job) {
  if (job.mode == Mode::plain) return AcceptMutex::none;
  if (job.accept_mutex != AcceptMutex::automatic) return job.accept_mutex;
  // docs/PROTOCOL.md, "Choosing accept_mutex": the token pipe wakes one waiter
  // whatever the number of listeners and idle workers.
  return AcceptMutex::pipe;
}

Result<AcceptLock> make_accept_lock(AcceptMutex kind, const std::string& dir,
                                    const std::string& job, std::uint32_t generation) {
  AcceptLock lock;
  lock.kind = kind;
  if (kind == AcceptMutex::fcntl) {
    lock.fd = UniqueFd(::memfd_create("corral-accept-lock", MFD_CLOEXEC));
    if (!lock.fd) return errno_error("memfd_create for the accept lock of job " + job);
    if (::ftruncate(lock.fd.get(), 1) != 0) return errno_error("ftruncate accept lock");
  } else if (kind == AcceptMutex::pipe) {
    std::string path =
        dir + "/." + job + ".lock." + std::to_string(::getpid()) + "." + std::to_string(generation);
    ::unlink(path.c_str());
    if (::mkfifo(path.c_str(), 0600) != 0) return errno_error("mkfifo " + path);
    // O_RDWR on a FIFO never blocks on Linux (fifo(7)); the workers' end must stay
    // blocking (a blocking read is what wakes exactly one waiter), the supervisor's
    // own end is a separate open file description and non-blocking.
    lock.fd = UniqueFd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
    int err = errno;
    lock.private_fd = UniqueFd(::open(path.c_str(), O_RDWR | O_CLOEXEC | O_NONBLOCK));
    ::unlink(path.c_str());
    if (!lock.fd || !lock.private_fd) return Error{err != 0 ? err : errno, "open " + path};
    if (::write(lock.private_fd.get(), "T", 1) != 1) return errno_error("write the accept token");
  }
  return lock;
}

// Slots for the current generation plus old-generation workers still finishing.
unsigned slots_for(const JobConfig& cfg) {
  return std::max(2 * cfg.workers.max, cfg.workers.max + 16);
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
  // set-up
  void block_signals();
  std::unique_ptr<Job> build_job(const JobConfig& cfg, bool reuse_scoreboard);
  void apply_config(Config config, bool initial);

  // loop
  void handle_signals() noexcept;
  void reap() noexcept;
  void on_worker_exit(Job& job, WorkerRec rec, int status) noexcept;
  void maintain() noexcept;
  void maintain_job(Job& job, std::uint64_t now) noexcept;
  void audit_token(Job& job, std::uint64_t now) noexcept;
  void replace_stuck_holders(Job& job, unsigned queued, std::uint64_t now) noexcept;
  void correct_idle_hint(Job& job, unsigned idle) noexcept;
  void arm_notify(Job& job) noexcept;
  void spawn_worker(Job& job, std::uint64_t now) noexcept;
  void stop_worker(Job& job, WorkerRec& w, std::uint64_t now, bool signal) noexcept;
  void signal_worker(const Job& job, const WorkerRec& w, int sig) noexcept;
  void record_failure(Job& job, std::uint64_t now, bool counts, const std::string& why) noexcept;
  void begin_stop(bool fast) noexcept;
  void reload() noexcept;
  void upgrade() noexcept;
  void adopt_upgrade_state(const std::string& fd_text);
  std::uint64_t next_deadline(std::uint64_t now) const noexcept;
  void write_headers(std::uint64_t now) noexcept;
  void notify_manager(std::uint64_t now) noexcept;
  void store_bound_listeners() noexcept;
  bool all_failed() const noexcept;

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

void Supervisor::Impl::audit_token(Job& job, std::uint64_t now) noexcept {
  // The token pipe holds one token, in the pipe or with the worker that read it. A
  // holder killed while holding it takes it along: restore it. What workers write in
  // their slots is untrusted, so a token is restored when no live worker claims it, or
  // when connections wait while the pipe is empty and no connection was accepted
  // since the last audit (a stall, whoever claims the token). Extra tokens (from a
  // wrong guess) only cost a little herd, and are drained once back in the pipe.
  // Every action needs two observations at least kAuditSpacing apart.
  if (job.lock.kind != AcceptMutex::pipe || !job.lock.private_fd) return;
  LogContext log_ctx{job.cfg.name};
  auto& lock = job.lock;
  int in_pipe = 0;
  if (::ioctl(lock.private_fd.get(), FIONREAD, &in_pipe) != 0) return;
  int held = 0;
  std::uint64_t requests = 0;
  for (const auto& [pid, w] : job.workers) {
    if (w.generation != job.generation || w.term_sent) continue;
    auto slot = job.sb.read_slot(w.slot);
    if (slot.lock == CORRAL_LOCK_HELD) ++held;
    requests += slot.requests;
  }
  bool progress = requests != lock.last_requests;
  lock.last_requests = requests;
  AuditFinding finding = AuditFinding::fine;
  if (in_pipe >= 2) {
    finding = AuditFinding::extra;
  } else if (in_pipe == 0) {
    if (held == 0) {
      finding = AuditFinding::lost;
    } else if (!progress) {
      for (const auto& l : job.listeners) {
        pollfd p{l->fd.get(), POLLIN, 0};
        if (::poll(&p, 1, 0) == 1 && (p.revents & POLLIN) != 0) finding = AuditFinding::stalled;
      }
    }
  }
  if (finding == AuditFinding::fine || finding != lock.finding) {
    lock.finding = finding;
    lock.finding_since = now;
    return;
  }
  if (now - lock.finding_since < kAuditSpacing) return;
  lock.finding = AuditFinding::fine;
  switch (finding) {
    case AuditFinding::lost:
      spdlog::warn("job {}: the accept token was lost (its holder died); restoring it",
                   job.cfg.name);
      break;
    case AuditFinding::stalled:
      spdlog::warn("job {}: connections wait but the accept token is not coming back; adding one",
                   job.cfg.name);
      break;
    case AuditFinding::extra: {
      spdlog::info("job {}: {} accept tokens in the pipe; removing the extra", job.cfg.name,
                   in_pipe);
      char buf[64];
      auto extra = std::min<size_t>(static_cast<size_t>(in_pipe - 1), sizeof buf);
      [[maybe_unused]] auto r = ::read(lock.private_fd.get(), buf, extra);
      return;
    }
    default: return;
  }
  [[maybe_unused]] auto r = ::write(lock.private_fd.get(), "T", 1);
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
  // Fork-rate cap: at most kSpawnBurst starts per kSpawnWindow.
  if (now - job.spawn_window_start >= kSpawnWindow) {
    job.spawn_window_start = now;
    job.spawned_in_window = 0;
  }
  unsigned spawn =
      std::min(action.spawn, kSpawnBurst - std::min(kSpawnBurst, job.spawned_in_window));
  if (job.state == JobState::backing_off) spawn = std::min(spawn, counts.starting == 0 ? 1U : 0U);
  const bool urgent =
      job.initial || counts.queued > 0 || counts.idle * 2 < job.cfg.workers.min_spare;
  if (spawn == 0) {
    job.topup_at = 0;
  } else if (!urgent) {
    if (job.topup_at == 0) job.topup_at = now + kTopUpDelay;
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

void Supervisor::Impl::replace_stuck_holders(Job& job, unsigned queued,
                                             std::uint64_t now) noexcept {
  // Holding the accept mutex while idle is normal. Holding it for kStuckHolder while
  // (a) connections waited all along and none was accepted, or (b) other workers
  // accepted meanwhile (possible only if the holder was bypassed by a restored token)
  // means the holder is alive but not accepting: replace it.
  if (job.lock.kind != AcceptMutex::pipe && job.lock.kind != AcceptMutex::fcntl) return;
  std::uint64_t requests = 0;
  for (const auto& [pid, w] : job.workers) {
    if (w.generation == job.generation) requests += job.sb.read_slot(w.slot).requests;
  }
  if (queued == 0 || requests != job.stall_requests) {
    job.stall_since = queued == 0 ? 0 : now;
    job.stall_requests = requests;
  } else if (job.stall_since == 0) {
    job.stall_since = now;
  }
  const bool stalled = job.stall_since != 0 && now - job.stall_since >= kStuckHolder;
  for (auto& [pid, w] : job.workers) {
    if (w.term_sent || w.generation != job.generation) continue;
    SlotView s = job.sb.read_slot(w.slot);
    if (s.lock != CORRAL_LOCK_HELD) {
      w.held_since = 0;
      continue;
    }
    if (w.held_since != s.lock_since_ns || w.held_since == 0) {
      w.held_since = s.lock_since_ns;
      w.held_seen_at = now;
      w.held_requests_base = requests - std::min(requests, s.requests);
      continue;
    }
    const std::uint64_t others = requests - std::min(requests, s.requests);
    const bool bypassed = others > w.held_requests_base;
    if (now - w.held_seen_at >= kStuckHolder && (stalled || bypassed)) {
      LogContext worker_ctx{job.cfg.name, w.slot, w.pid};
      spdlog::warn(
          "job {}: worker {} (slot {}) has held the accept mutex for {} while connections "
          "waited; replacing it",
          job.cfg.name, w.pid, w.slot, format_duration(Duration(now - w.held_seen_at)));
      signal_worker(job, w, SIGKILL);
      w.term_sent = true;
      w.kill_sent = true;
      job.stall_since = 0;
    }
  }
}

void Supervisor::Impl::correct_idle_hint(Job& job, unsigned idle) noexcept {
  // The hint drifts when a worker dies while idle; correct it when the same
  // difference is seen twice in a row (a single sighting may be a worker between
  // writing its state and adjusting the hint).
  int delta = static_cast<int>(idle) - job.sb.idle_hint();
  if (delta != 0 && delta == job.hint_delta) {
    job.sb.add_idle_hint(delta);
    delta = 0;
  }
  job.hint_delta = delta;
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

// Binary upgrade (SIGUSR2): re-execute our own binary, keeping the pid (so every worker
// stays our child and PDEATHSIG does not fire), the listening sockets and the workers.
// The state goes across exec as JSON in a memfd whose number is in CORRAL_UPGRADE_STATE;
// every fd it names has FD_CLOEXEC cleared for the exec and set again by the new image.
void Supervisor::Impl::upgrade() noexcept {
  if (self_exe_.empty() || options_.argv.empty()) {
    spdlog::error("SIGUSR2: cannot find my own binary; not upgrading");
    return;
  }
  std::vector<int> fds;
  try {
    nlohmann::json state;
    state["generation"] = generation_;
    state["started"] = started_realtime_;
    state["config_text"] = options_.config_text;
    state["notify_socket"] = notifier_.socket_path();
    state["watchdog_ns"] = notifier_.watchdog_interval();
    state["ready_sent"] = ready_sent_;
    if (original_nofile_) {
      state["nofile"] = {original_nofile_->rlim_cur, original_nofile_->rlim_max};
    }
    nlohmann::json listeners = nlohmann::json::array();
    for (const auto& l : listeners_.all()) {
      listeners.push_back({{"fd", l->fd.get()},
                           {"key", l->key},
                           {"name", l->name},
                           {"display", l->display},
                           {"inherited", l->inherited},
                           {"stored", l->stored},
                           {"store_name", l->store_name}});
      fds.push_back(l->fd.get());
    }
    state["listeners"] = listeners;
    nlohmann::json jobs = nlohmann::json::array();
    for (const auto& job : jobs_) {
      nlohmann::json j;
      j["name"] = job->cfg.name;
      j["mode"] = static_cast<int>(job->cfg.mode);
      j["removed"] = job->removed;
      j["generation"] = job->generation;
      j["graceful_ns"] = to_ns(job->cfg.graceful_timeout);
      j["sb_fd"] = job->sb.fd();
      j["sb_path"] = job->sb.path();
      j["lock_kind"] = static_cast<int>(job->lock.kind);
      j["lock_fd"] = job->lock.fd.get();
      j["lock_private_fd"] = job->lock.private_fd.get();
      j["notify_read"] = job->notify_read.get();
      j["notify_write"] = job->notify_write.get();
      j["state"] = static_cast<int>(job->state);
      j["failures"] = job->failures;
      j["backoff_ns"] = job->backoff_ns;
      j["retry_at"] = job->retry_at;
      nlohmann::json workers = nlohmann::json::array();
      for (const auto& [pid, w] : job->workers) {
        auto report = job->spawn_reports.find(pid);
        int report_fd = report != job->spawn_reports.end() ? report->second.get() : -1;
        workers.push_back({{"pid", w.pid},
                           {"slot", w.slot},
                           {"generation", w.generation},
                           {"started_ns", w.started_ns},
                           {"ready", w.ready},
                           {"term_sent", w.term_sent},
                           {"kill_sent", w.kill_sent},
                           {"kill_at", w.kill_at},
                           {"last_state", static_cast<int>(w.last_state)},
                           {"report_fd", report_fd}});
        fds.push_back(report_fd);
      }
      j["workers"] = workers;
      for (int fd : {job->sb.fd(), job->lock.fd.get(), job->lock.private_fd.get(),
                     job->notify_read.get(), job->notify_write.get()})
        fds.push_back(fd);
      jobs.push_back(j);
    }
    state["jobs"] = jobs;
    std::string text = state.dump();
    UniqueFd memfd(::memfd_create("corral-upgrade-state", 0));
    if (!memfd ||
        ::write(memfd.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size())) {
      spdlog::error("SIGUSR2: cannot write the hand-over state: {}", std::strerror(errno));
      return;
    }
    for (int fd : fds) set_cloexec(fd, false);
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
    spdlog::error("SIGUSR2: {}; the running image stays", e.what());
  }
}

void Supervisor::Impl::adopt_upgrade_state(const std::string& fd_text) {
  int state_fd = std::stoi(fd_text);
  UniqueFd memfd(state_fd);
  std::string text;
  char buf[65536];
  ssize_t n;
  ::lseek(state_fd, 0, SEEK_SET);
  while ((n = ::read(state_fd, buf, sizeof buf)) > 0) text.append(buf, static_cast<size_t>(n));
  auto state = nlohmann::json::parse(text);
  auto keep = [](int fd) {
    set_cloexec(fd, true);
    return fd;
  };
  generation_ = state["generation"].get<std::uint32_t>();
  started_realtime_ = state["started"].get<std::uint64_t>();
  notifier_ = Notifier::from_state(state["notify_socket"].get<std::string>(),
                                   state["watchdog_ns"].get<std::uint64_t>());
  ready_sent_ = state["ready_sent"].get<bool>();
  if (state.contains("nofile")) {
    rlimit original{state["nofile"][0].get<rlim_t>(), state["nofile"][1].get<rlim_t>()};
    original_nofile_ = original;
  }
  for (const auto& l : state["listeners"]) {
    auto listener = std::make_shared<Listener>();
    listener->fd = UniqueFd(keep(l["fd"].get<int>()));
    listener->key = l["key"].get<std::string>();
    listener->name = l["name"].get<std::string>();
    listener->display = l["display"].get<std::string>();
    listener->inherited = l["inherited"].get<bool>();
    listener->stored = l["stored"].get<bool>();
    listener->store_name = l["store_name"].get<std::string>();
    listeners_.add(std::move(listener));
  }
  // The running configuration, exactly: the text it came from (a file may have changed
  // since; SIGHUP is how it takes effect), checked for syntax only.
  Config config = options_.config;
  if (!options_.config_path.empty()) {
    options_.config_text = state["config_text"].get<std::string>();
    config =
        load_config_text(options_.config_text, options_.config_path, CheckOptions{false, false});
  }
  listeners_.begin_generation();
  for (const auto& j : state["jobs"]) {
    const auto name = j["name"].get<std::string>();
    const JobConfig* cfg = nullptr;
    for (const auto& c : config.jobs) {
      if (c.name == name) cfg = &c;
    }
    std::unique_ptr<Job> job;
    if (cfg != nullptr && !j["removed"].get<bool>()) {
      job = build_job(*cfg, true);
    } else {
      job = std::make_unique<Job>();
      job->cfg.name = name;
      job->cfg.mode = static_cast<Mode>(j["mode"].get<int>());
      job->cfg.graceful_timeout = Duration(j["graceful_ns"].get<std::uint64_t>());
      job->removed = true;
    }
    job->generation = j["generation"].get<std::uint32_t>();
    auto sb = Scoreboard::adopt(keep(j["sb_fd"].get<int>()), j["sb_path"].get<std::string>());
    if (!sb) throw SetupError("adopt scoreboard: " + sb.error().to_string());
    job->sb = std::move(sb.value());
    job->slot_used.assign(job->sb.slot_count(), false);
    job->lock.kind = static_cast<AcceptMutex>(j["lock_kind"].get<int>());
    job->lock.fd.reset(j["lock_fd"].get<int>() >= 0 ? keep(j["lock_fd"].get<int>()) : -1);
    job->lock.private_fd.reset(
        j["lock_private_fd"].get<int>() >= 0 ? keep(j["lock_private_fd"].get<int>()) : -1);
    job->notify_read.reset(j["notify_read"].get<int>() >= 0 ? keep(j["notify_read"].get<int>())
                                                            : -1);
    job->notify_write.reset(j["notify_write"].get<int>() >= 0 ? keep(j["notify_write"].get<int>())
                                                              : -1);
    job->state = static_cast<JobState>(j["state"].get<int>());
    job->failures = j["failures"].get<unsigned>();
    job->backoff_ns = j["backoff_ns"].get<std::uint64_t>();
    job->retry_at = j["retry_at"].get<std::uint64_t>();
    job->initial = false;
    for (const auto& wj : j["workers"]) {
      WorkerRec w;
      w.pid = wj["pid"].get<pid_t>();
      w.slot = wj["slot"].get<unsigned>();
      w.generation = wj["generation"].get<std::uint32_t>();
      w.started_ns = wj["started_ns"].get<std::uint64_t>();
      w.ready = wj["ready"].get<bool>();
      w.term_sent = wj["term_sent"].get<bool>();
      w.kill_sent = wj["kill_sent"].get<bool>();
      w.kill_at = wj["kill_at"].get<std::uint64_t>();
      w.last_state = static_cast<corral_slot_state>(wj["last_state"].get<int>());
      if (int report = wj["report_fd"].get<int>(); report >= 0)
        job->spawn_reports.emplace(w.pid, UniqueFd(keep(report)));
      if (w.slot < job->slot_used.size()) job->slot_used[w.slot] = true;
      job->workers.emplace(w.pid, w);
    }
    jobs_.push_back(std::move(job));
  }
  options_.config = std::move(config);
  for (auto& job : jobs_) {
    if (job->notify_read) arm_notify(*job);
  }
  spdlog::info("binary upgrade: took over {} job(s) and {} listener(s) at generation {}",
               jobs_.size(), listeners_.size(), generation_);
}

}  // namespace corral
