// The binary upgrade (SIGUSR2): the running state handed across exec to the new image.
#include "supervisor/impl.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>

#include "common/unique_fd.h"
#include "listen/listener.h"
#include "notify/notify.h"
#include "scoreboard/scoreboard.h"

namespace corral {
namespace {

void set_cloexec(int fd, bool on) {
  if (fd < 0) return;
  int flags = ::fcntl(fd, F_GETFD);
  if (flags >= 0) ::fcntl(fd, F_SETFD, on ? (flags | FD_CLOEXEC) : (flags & ~FD_CLOEXEC));
}

}  // namespace

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
