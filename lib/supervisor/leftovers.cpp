// Descendants that outlive their worker. A worker leads its own process group (spawn
// setpgid(0, 0)): what it leaves in that group when it exits gets SIGTERM, then SIGKILL
// after graceful_timeout. What left the group (setsid, a double fork) is reparented to
// corral, a child subreaper (PR_SET_CHILD_SUBREAPER, set in run()): such orphans are
// found in /proc/self/task/*/children, signalled the same way, and reaped like workers.
// Nothing here signals a pid that is not ours: a group id is only signalled while
// kill(-pgid, 0) finds it and no worker of ours has since taken that number, and an
// orphan is our own unreaped child, so its pid cannot be reused under us.
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <set>
#include <string>

#include "supervisor/impl.h"

namespace corral {
namespace {

// Our direct children, from /proc/self/task/<tid>/children (CONFIG_PROC_CHILDREN; on a
// kernel without it nothing is found, and orphans are still reaped when they exit).
std::set<pid_t> direct_children() {
  std::set<pid_t> out;
  DIR* dir = ::opendir("/proc/self/task");
  if (dir == nullptr) return out;
  while (const dirent* e = ::readdir(dir)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    std::string path = std::string("/proc/self/task/") + e->d_name + "/children";
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    std::string text;
    char buf[4096];
    ssize_t n;
    while ((n = ::read(fd, buf, sizeof buf)) > 0) text.append(buf, static_cast<size_t>(n));
    ::close(fd);
    const char* p = text.c_str();
    while (*p != '\0') {
      char* end = nullptr;
      long v = std::strtol(p, &end, 10);
      if (end == p) break;
      if (v > 1) out.insert(static_cast<pid_t>(v));
      p = end;
      while (*p == ' ' || *p == '\n') ++p;
    }
  }
  ::closedir(dir);
  return out;
}

}  // namespace

void Supervisor::Impl::track_leftover_group(pid_t pgid, int stop_signal, std::uint64_t grace,
                                            std::uint64_t now) noexcept {
  if (pgid <= 1) return;
  for (const auto& l : leftovers_) {
    if (l.group && l.id == pgid) return;
  }
  spdlog::info("process group {} outlived its worker; SIG{}, SIGKILL in {}", pgid,
               sigabbrev_np(stop_signal) != nullptr ? sigabbrev_np(stop_signal) : "?",
               format_duration(Duration(grace)));
  ::kill(-pgid, stop_signal);
  ::kill(-pgid, SIGCONT);  // a stopped process cannot act on SIGTERM
  leftovers_.push_back(Leftover{pgid, true, grace == 0 ? now : now + grace, false});
}

void Supervisor::Impl::adopt_orphans(std::uint64_t now) noexcept {
  const auto children = direct_children();
  for (pid_t pid : children) {
    bool known = false;
    for (const auto& job : jobs_) known = known || job->workers.count(pid) != 0;
    for (const auto& l : leftovers_) known = known || (!l.group && l.id == pid);
    // The SIGUSR2 check child (`corral --handover-check`) is our own, not an orphan.
    known = known || (upgrade_.check_pid != 0 && pid == upgrade_.check_pid);
    if (known) continue;
    std::uint64_t grace = kOrphanGrace;
    spdlog::warn("adopted orphan {} (left behind by a worker); SIGTERM, SIGKILL in {}", pid,
                 format_duration(Duration(grace)));
    ::kill(pid, SIGTERM);
    ::kill(pid, SIGCONT);
    const std::uint64_t at = stop_ == StopMode::fast ? now : stopping() ? now + kSec : now + grace;
    leftovers_.push_back(Leftover{pid, false, at, false});
  }
}

void Supervisor::Impl::signal_leftovers(std::uint64_t now) noexcept {
  for (auto& l : leftovers_) {
    if (l.killed || now < l.kill_at) continue;
    if (l.group) {
      // The number may since lead a new worker's group: never signal that.
      bool reused = false;
      for (const auto& job : jobs_) reused = reused || job->workers.count(l.id) != 0;
      if (!reused && ::kill(-l.id, 0) == 0) {
        spdlog::warn("process group {} did not stop; SIGKILL", l.id);
        ::kill(-l.id, SIGKILL);
      }
    } else {
      spdlog::warn("orphan {} did not stop; SIGKILL", l.id);
      ::kill(l.id, SIGKILL);
    }
    l.killed = true;
  }
  // Groups are done once empty (orphans once reaped: forget_leftover).
  std::erase_if(leftovers_,
                [](const Leftover& l) { return l.group && (l.killed || ::kill(-l.id, 0) != 0); });
}

bool Supervisor::Impl::forget_leftover(pid_t pid) noexcept {
  auto it = std::find_if(leftovers_.begin(), leftovers_.end(),
                         [&](const Leftover& l) { return !l.group && l.id == pid; });
  if (it == leftovers_.end()) return false;
  leftovers_.erase(it);
  return true;
}

void Supervisor::Impl::kill_all_leftovers() noexcept {
  for (auto& l : leftovers_) {
    bool reused = false;
    for (const auto& job : jobs_) reused = reused || job->workers.count(l.id) != 0;
    if (l.group && !reused) ::kill(-l.id, SIGKILL);
    if (!l.group) ::kill(l.id, SIGKILL);
    l.killed = true;
  }
}

std::uint64_t leftover_deadline(const std::vector<Leftover>& leftovers) {
  std::uint64_t at = 0;
  for (const auto& l : leftovers) {
    if (!l.killed && (at == 0 || l.kill_at < at)) at = l.kill_at;
  }
  return at;
}

}  // namespace corral
