#include "notify/notify.h"

#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "common/unique_fd.h"
#include "scoreboard/scoreboard.h"

namespace corral {
namespace {

constexpr std::uint64_t kStatusInterval = 1000000000ULL;  // at most one STATUS= per second

}  // namespace

Notifier Notifier::from_environment() {
  Notifier n;
  if (const char* s = std::getenv("NOTIFY_SOCKET"); s != nullptr && *s != '\0') n.socket_ = s;
  const char* usec = std::getenv("WATCHDOG_USEC");
  const char* pid = std::getenv("WATCHDOG_PID");
  if (usec != nullptr && (pid == nullptr || std::strtol(pid, nullptr, 10) == ::getpid())) {
    std::uint64_t value = std::strtoull(usec, nullptr, 10);
    if (value > 0) {
      n.watchdog_interval_ns_ = value * 1000 / 2;
      n.next_watchdog_ns_ = monotonic_ns() + n.watchdog_interval_ns_;
    }
  }
  ::unsetenv("NOTIFY_SOCKET");
  ::unsetenv("WATCHDOG_USEC");
  ::unsetenv("WATCHDOG_PID");
  return n;
}

Notifier Notifier::from_state(std::string socket, std::uint64_t watchdog_interval_ns) {
  Notifier n;
  n.socket_ = std::move(socket);
  n.watchdog_interval_ns_ = watchdog_interval_ns;
  if (watchdog_interval_ns != 0) n.next_watchdog_ns_ = monotonic_ns();  // ping at once
  return n;
}

bool Notifier::send(const std::string& message, const int* fds, std::size_t n_fds) {
  if (socket_.empty()) return true;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  socklen_t len = 0;
  if (socket_[0] == '@') {
    // Abstract namespace: the leading '@' stands for a NUL byte.
    if (socket_.size() > sizeof addr.sun_path) return false;
    std::memcpy(addr.sun_path + 1, socket_.data() + 1, socket_.size() - 1);
    len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + socket_.size());
  } else {
    if (socket_.size() >= sizeof addr.sun_path) return false;
    std::memcpy(addr.sun_path, socket_.data(), socket_.size());
    len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + socket_.size() + 1);
  }
  UniqueFd fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!fd) return false;
  iovec iov{const_cast<char*>(message.data()), message.size()};
  msghdr msg{};
  msg.msg_name = &addr;
  msg.msg_namelen = len;
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<char> control;
  if (n_fds > 0) {
    control.resize(CMSG_SPACE(sizeof(int) * n_fds));
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int) * n_fds);
    std::memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * n_fds);
  }
  if (::sendmsg(fd.get(), &msg, MSG_NOSIGNAL) < 0) {
    if (!send_failed_logged_) {
      spdlog::warn("sd_notify to {}: {}", socket_, std::strerror(errno));
      send_failed_logged_ = true;
    }
    return false;
  }
  return true;
}

void Notifier::ready(const std::string& status) {
  last_status_ = status;
  pending_status_.clear();
  last_status_ns_ = monotonic_ns();
  send("READY=1\nSTATUS=" + status);
}

void Notifier::reloading() {
  send("RELOADING=1\nMONOTONIC_USEC=" + std::to_string(monotonic_ns() / 1000));
}

void Notifier::stopping() {
  send("STOPPING=1");
}

void Notifier::main_pid(int pid) {
  send("MAINPID=" + std::to_string(pid));
}

void Notifier::status(const std::string& text, std::uint64_t now_ns) {
  if (text == last_status_) {
    pending_status_.clear();
    return;
  }
  if (now_ns - last_status_ns_ < kStatusInterval && last_status_ns_ != 0) {
    pending_status_ = text;
    return;
  }
  last_status_ = text;
  pending_status_.clear();
  last_status_ns_ = now_ns;
  send("STATUS=" + text);
}

void Notifier::flush_status(std::uint64_t now_ns) {
  if (!pending_status_.empty() && now_ns - last_status_ns_ >= kStatusInterval) {
    std::string text = pending_status_;
    status(text, now_ns);
  }
}

std::uint64_t Notifier::next_deadline() const {
  std::uint64_t deadline = watchdog_interval_ns_ != 0 ? next_watchdog_ns_ : 0;
  if (!pending_status_.empty()) {
    std::uint64_t at = last_status_ns_ + kStatusInterval;
    deadline = deadline == 0 ? at : std::min(deadline, at);
  }
  return enabled() ? deadline : 0;
}

void Notifier::watchdog(std::uint64_t now_ns) {
  if (watchdog_interval_ns_ == 0 || now_ns < next_watchdog_ns_) return;
  send("WATCHDOG=1");
  next_watchdog_ns_ = now_ns + watchdog_interval_ns_;
}

void Notifier::store_fds(const std::vector<std::pair<int, std::string>>& fds) {
  for (const auto& [fd, name] : fds) {
    send("FDSTORE=1\nFDNAME=" + name, &fd, 1);
  }
}

void Notifier::remove_fds(const std::vector<std::string>& names) {
  for (const auto& name : names) send("FDSTOREREMOVE=1\nFDNAME=" + name);
}

}  // namespace corral
