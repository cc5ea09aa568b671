// The metrics endpoint: a small non-blocking HTTP/1.1 server run by the supervisor's
// own epoll loop (GET /metrics, /healthz, /readyz). Bounded in every way a scraper
// could push it: kMaxClients at once (the listening socket is taken off the loop while
// full, so others wait in its backlog), kMaxRequestBytes per request, a deadline per
// client for reading its request and for taking the answer. One request per connection
// (the answer says Connection: close). Single-threaded, noexcept, never blocks.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "common/unique_fd.h"

namespace corral {

struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

/// Builds the answer to GET (or HEAD) `path` (the query string removed). Must not throw.
using HttpHandler = std::function<HttpResponse(std::string_view path)>;

class MetricsServer {
 public:
  static constexpr unsigned kMaxClients = 8;
  static constexpr std::size_t kMaxRequestBytes = 8192;
  static constexpr std::uint64_t kReadTimeoutNs = 5'000'000'000ULL;
  static constexpr std::uint64_t kWriteTimeoutNs = 10'000'000'000ULL;
  static constexpr std::uint64_t kAcceptRetryNs = 1'000'000'000ULL;

  /// Takes `listen_fd` (a listening stream socket, made non-blocking here) and adds it
  /// to `epoll_fd` with data.fd set to the fd itself, as every fd it adds later.
  MetricsServer(UniqueFd listen_fd, int epoll_fd, HttpHandler handler);
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  /// Whether `fd` (an epoll event's data.fd) is one of ours.
  [[nodiscard]] bool owns(int fd) const noexcept;
  /// Handles an epoll event on one of our fds.
  void on_event(int fd, std::uint32_t events, std::uint64_t now) noexcept;
  /// The earliest client deadline; 0: none.
  [[nodiscard]] std::uint64_t next_deadline() const noexcept;
  /// Closes the clients past their deadline.
  void expire(std::uint64_t now) noexcept;

  [[nodiscard]] int listen_fd() const noexcept { return listen_.get(); }
  [[nodiscard]] std::size_t clients() const noexcept { return clients_.size(); }

 private:
  struct Client {
    UniqueFd fd;
    std::string in;
    std::string out;
    std::size_t sent = 0;
    bool writing = false;
    std::uint64_t deadline = 0;
  };
  void accept_clients(std::uint64_t now) noexcept;
  void read_request(Client& c, std::uint64_t now) noexcept;
  void answer(Client& c, const HttpResponse& r, bool head, std::uint64_t now) noexcept;
  void flush(Client& c) noexcept;
  void close_client(std::size_t index) noexcept;
  void arm_listener(bool on) noexcept;

  UniqueFd listen_;
  int epoll_ = -1;
  HttpHandler handler_;
  std::vector<Client> clients_;
  bool listening_armed_ = false;
  // accept() failed for want of fds or memory: the listener rests until then (a
  // level-triggered readable listener would otherwise spin the loop); 0: not resting.
  std::uint64_t accept_retry_at_ = 0;
};

/// The parsed request line of a complete HTTP/1.x request head, or why it is refused
/// (the status to answer). Pure; unit-tested.
struct HttpRequestLine {
  int error_status = 0;  // 0: fine
  std::string method;
  std::string path;  // without the query string
};
HttpRequestLine parse_request_head(std::string_view head);

}  // namespace corral
