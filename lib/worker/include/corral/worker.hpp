// corral worker library: a thin, header-only C++ layer over corral/worker.h.
//
//   corral::Worker worker;                    // throws std::system_error
//   while (auto conn = worker.accept()) {     // empty once a stop was asked for
//     serve(conn.fd());
//   }                                         // ~Connection: close(), then done()
//
// The same limits as the C API apply: one Worker per process, one thread.
#pragma once

#include <corral/worker.h>

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <optional>
#include <system_error>
#include <utility>

namespace corral {

/// An accepted connection. Owns the socket: the destructor (or close()) closes
/// it and then marks the worker's slot idle (corral_worker_done), so the slot
/// says busy for exactly as long as the Connection lives. Move-only.
class Connection {
 public:
  Connection() noexcept = default;
  Connection(corral_worker* worker, int fd, unsigned listener, const sockaddr_storage& peer,
             socklen_t peer_len) noexcept
      : worker_(worker), fd_(fd), listener_(listener), peer_(peer), peer_len_(peer_len) {}
  Connection(Connection&& other) noexcept { *this = std::move(other); }
  Connection& operator=(Connection&& other) noexcept {
    if (this != &other) {
      close();
      worker_ = other.worker_;
      fd_ = std::exchange(other.fd_, -1);
      listener_ = other.listener_;
      peer_ = other.peer_;
      peer_len_ = other.peer_len_;
    }
    return *this;
  }
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  ~Connection() { close(); }

  /// False for the empty Connection that Worker::accept() returns on stop.
  explicit operator bool() const noexcept { return fd_ >= 0; }
  /// The socket (blocking, close-on-exec); -1 when empty. Still owned by *this.
  int fd() const noexcept { return fd_; }
  /// Index of the listener it came from (configuration order).
  unsigned listener() const noexcept { return listener_; }
  /// The client's address, as accept(2) filled it.
  const sockaddr* peer() const noexcept { return reinterpret_cast<const sockaddr*>(&peer_); }
  socklen_t peer_len() const noexcept { return peer_len_; }

  /// Closes the socket and marks the slot idle. Idempotent.
  void close() noexcept {
    if (fd_ < 0) return;
    ::close(std::exchange(fd_, -1));
    corral_worker_done(worker_);
  }

 private:
  corral_worker* worker_ = nullptr;
  int fd_ = -1;
  unsigned listener_ = 0;
  sockaddr_storage peer_{};
  socklen_t peer_len_ = 0;
};

/// The worker of this process (see corral_worker_init). Move-only; the
/// destructor calls corral_worker_free.
class Worker {
 public:
  /// Reads the environment. Throws std::system_error naming corral_worker_init
  /// (e.g. ENOENT: no listening socket was passed).
  Worker() {
    int r = corral_worker_init(&worker_);
    if (r < 0) throw std::system_error(-r, std::generic_category(), "corral_worker_init");
  }

  /// As the constructor, without exceptions: std::nullopt and *error set (if
  /// not null) on failure.
  static std::optional<Worker> from_env(std::error_code* error = nullptr) noexcept {
    corral_worker* w = nullptr;
    int r = corral_worker_init(&w);
    if (r < 0) {
      if (error) *error = std::error_code(-r, std::generic_category());
      return std::nullopt;
    }
    return Worker(w);
  }

  Worker(Worker&& other) noexcept : worker_(std::exchange(other.worker_, nullptr)) {}
  Worker& operator=(Worker&& other) noexcept {
    if (this != &other) {
      corral_worker_free(worker_);
      worker_ = std::exchange(other.worker_, nullptr);
    }
    return *this;
  }
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;
  ~Worker() { corral_worker_free(worker_); }

  /// Blocks until a connection arrives and returns it; returns an empty
  /// Connection once a stop was asked for (then finish up and exit 0). Throws
  /// std::system_error naming corral_worker_accept on an unrecoverable error.
  Connection accept() {
    sockaddr_storage peer{};
    socklen_t len = sizeof peer;
    unsigned index = 0;
    int fd = corral_worker_accept(worker_, reinterpret_cast<sockaddr*>(&peer), &len, &index);
    if (fd >= 0) return Connection(worker_, fd, index, peer, len);
    if (errno == ESHUTDOWN) return Connection();
    throw std::system_error(errno, std::generic_category(), "corral_worker_accept");
  }

  /// True once a stop was asked for; finish the current connection (for HTTP
  /// keep-alive: at the next request boundary).
  bool stopping() const noexcept { return corral_worker_stopping(worker_) != 0; }

  unsigned listener_count() const noexcept { return corral_worker_listener_count(worker_); }
  int listener_fd(unsigned i) const noexcept { return corral_worker_listener_fd(worker_, i); }
  const char* listener_name(unsigned i) const noexcept {
    return corral_worker_listener_name(worker_, i);
  }
  corral_lock_kind lock_kind() const noexcept { return corral_worker_lock_kind(worker_); }
  int slot() const noexcept { return corral_worker_slot(worker_); }
  /// Counts a connection closed without serving it (corral_worker_count_refused).
  void count_refused() noexcept { corral_worker_count_refused(worker_); }

  /// The C handle, for the rest of the C API. Still owned by *this.
  corral_worker* get() const noexcept { return worker_; }

 private:
  explicit Worker(corral_worker* w) noexcept : worker_(w) {}
  corral_worker* worker_ = nullptr;
};

}  // namespace corral
