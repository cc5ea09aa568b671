// The service manager's notification protocol (sd_notify): readiness, status,
// reload/stop, watchdog, and the file-descriptor store.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace corral {

/// Talks to $NOTIFY_SOCKET when set; every call is a no-op otherwise. Never throws;
/// a failed send is logged once. Single-threaded.
class Notifier {
 public:
  /// Reads NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID (honoured only when it is this
  /// pid, as sd_watchdog_enabled does) and unsets them so workers never see them.
  static Notifier from_environment();

  /// For the binary upgrade: what from_environment() found, to hand to the next image.
  [[nodiscard]] const std::string& socket_path() const { return socket_; }
  [[nodiscard]] std::uint64_t watchdog_interval() const { return watchdog_interval_ns_; }
  static Notifier from_state(std::string socket, std::uint64_t watchdog_interval_ns);

  [[nodiscard]] bool enabled() const { return !socket_.empty(); }

  /// READY=1 with a STATUS= line, once start-up (or a reload) is complete.
  void ready(const std::string& status);
  /// RELOADING=1 with MONOTONIC_USEC=, at the start of a reload.
  void reloading();
  /// STOPPING=1, at the start of a stop.
  void stopping();
  /// STATUS=text, sent only when it changed and at most every `kStatusInterval`;
  /// a change held back is sent by flush_status() when its time comes.
  void status(const std::string& text, std::uint64_t now_ns);
  void flush_status(std::uint64_t now_ns);
  /// MAINPID=pid (after a binary upgrade, the pid stays, so only at start).
  void main_pid(int pid);

  /// CLOCK_MONOTONIC ns of the next WATCHDOG=1 (half of WATCHDOG_USEC), 0 when none
  /// is due (no watchdog, or a held-back status).
  [[nodiscard]] std::uint64_t next_deadline() const;
  /// Sends WATCHDOG=1 when due. Call from the loop: it proves the loop runs.
  void watchdog(std::uint64_t now_ns);

  /// Sends FDSTORE=1 with FDNAME=name for each (fd, name), so that the sockets outlive
  /// a crash or restart of corral when the unit sets FileDescriptorStoreMax=.
  void store_fds(const std::vector<std::pair<int, std::string>>& fds);
  /// Sends FDSTOREREMOVE=1 with FDNAME=name for each name: the manager closes its copies.
  void remove_fds(const std::vector<std::string>& names);

 private:
  bool send(const std::string& message, const int* fds = nullptr, std::size_t n_fds = 0);

  std::string socket_;
  std::uint64_t watchdog_interval_ns_ = 0;
  std::uint64_t next_watchdog_ns_ = 0;
  std::string last_status_;
  std::string pending_status_;
  std::uint64_t last_status_ns_ = 0;
  bool send_failed_logged_ = false;
};

}  // namespace corral
