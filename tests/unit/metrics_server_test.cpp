// lib/metrics/server: the endpoint on a loop of the test's own, with real sockets.
#include "metrics/server.h"

#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <memory>
#include <string>
#include <vector>

#include "common/unique_fd.h"

namespace {

using corral::MetricsServer;
using corral::UniqueFd;

constexpr std::uint64_t kSec = 1000000000ULL;

struct Fixture {
  UniqueFd epoll{::epoll_create1(EPOLL_CLOEXEC)};
  sockaddr_in addr{};
  std::unique_ptr<MetricsServer> server;
  int handled = 0;
  std::uint64_t now = 1000 * kSec;  // the server's clock, moved by the test

  Fixture() {
    UniqueFd l(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(l.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    socklen_t len = sizeof addr;
    ::getsockname(l.get(), reinterpret_cast<sockaddr*>(&addr), &len);
    REQUIRE(::listen(l.get(), 64) == 0);
    server = std::make_unique<MetricsServer>(std::move(l), epoll.get(), [this](std::string_view p) {
      ++handled;
      if (p == "/metrics") return corral::HttpResponse{200, "text/plain; version=0.0.4", "m 1\n"};
      return corral::HttpResponse{404, "text/plain", "not found\n"};
    });
  }

  // Runs the loop until nothing happens for a few rounds (bounded).
  void pump() {
    int quiet = 0;
    for (int round = 0; round < 1000 && quiet < 3; ++round) {
      epoll_event ev[16];
      int n = ::epoll_wait(epoll.get(), ev, 16, 5);
      if (n <= 0) {
        ++quiet;
        continue;
      }
      quiet = 0;
      for (int i = 0; i < n; ++i) {
        REQUIRE(server->owns(ev[i].data.fd));
        server->on_event(ev[i].data.fd, ev[i].events, now);
      }
    }
  }

  UniqueFd client() {
    UniqueFd c(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    REQUIRE(::connect(c.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    return c;
  }

  // Sends `request`, runs the loop, and reads what came back until EOF (bounded).
  std::string exchange(const std::string& request) {
    auto c = client();
    REQUIRE(::send(c.get(), request.data(), request.size(), MSG_NOSIGNAL) ==
            static_cast<ssize_t>(request.size()));
    pump();
    return read_all(c.get());
  }

  static std::string read_all(int fd) {
    std::string out;
    char buf[4096];
    for (int i = 0; i < 1000; ++i) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 2000) != 1) break;
      ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n <= 0) break;
      out.append(buf, static_cast<size_t>(n));
    }
    return out;
  }
};

}  // namespace

TEST_CASE("GET /metrics answers with the handler's body, then closes") {
  Fixture f;
  auto r = f.exchange("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  CHECK(r.starts_with("HTTP/1.1 200 OK\r\n"));
  CHECK(r.find("Content-Type: text/plain; version=0.0.4\r\n") != std::string::npos);
  CHECK(r.find("Content-Length: 4\r\n") != std::string::npos);
  CHECK(r.find("Connection: close\r\n") != std::string::npos);
  CHECK(r.ends_with("\r\n\r\nm 1\n"));
  CHECK(f.server->clients() == 0);
}

TEST_CASE("HEAD has the headers only; a query string is ignored") {
  Fixture f;
  auto r = f.exchange("HEAD /metrics?x=1 HTTP/1.0\r\n\r\n");
  CHECK(r.starts_with("HTTP/1.1 200 OK\r\n"));
  CHECK(r.ends_with("\r\n\r\n"));
}

TEST_CASE("errors: unknown path, method, malformed line, HTTP/2 preface") {
  Fixture f;
  CHECK(f.exchange("GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
  CHECK(f.exchange("POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405 "));
  CHECK(f.exchange("garbage\r\n\r\n").starts_with("HTTP/1.1 400 "));
  CHECK(f.exchange("PRI * HTTP/2.0\r\n\r\n").starts_with("HTTP/1.1 505 "));
  CHECK(f.exchange("GET /metrics HTTP/2\r\n\r\n").starts_with("HTTP/1.1 505 "));
}

TEST_CASE("a request larger than the bound is refused without waiting for its end") {
  Fixture f;
  auto c = f.client();
  std::string big = "GET /metrics HTTP/1.1\r\nX: " + std::string(20000, 'a');
  ::send(c.get(), big.data(), big.size(), MSG_NOSIGNAL);
  f.pump();
  CHECK(f.server->clients() == 0);
  CHECK(f.handled == 0);
}

TEST_CASE("a slow client is closed at its deadline; at most kMaxClients at once") {
  Fixture f;
  std::vector<UniqueFd> idle;
  for (int i = 0; i < 3 * static_cast<int>(MetricsServer::kMaxClients); ++i)
    idle.push_back(f.client());
  f.pump();
  CHECK(f.server->clients() == MetricsServer::kMaxClients);
  // A slowloris byte does not extend anything.
  ::send(idle[0].get(), "G", 1, MSG_NOSIGNAL);
  f.pump();
  CHECK(f.server->next_deadline() == f.now + MetricsServer::kReadTimeoutNs);
  f.now += MetricsServer::kReadTimeoutNs;
  f.server->expire(f.now);
  // The ones that waited in the backlog are taken now.
  f.pump();
  CHECK(f.server->clients() == MetricsServer::kMaxClients);
  CHECK(Fixture::read_all(idle[0].get()).empty());  // closed, nothing sent
  f.now += MetricsServer::kReadTimeoutNs;
  f.server->expire(f.now);
  f.pump();
  f.now += MetricsServer::kReadTimeoutNs;
  f.server->expire(f.now);
  f.pump();
  CHECK(f.server->clients() == 0);
  // And it still serves.
  CHECK(f.exchange("GET /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200 OK"));
}

TEST_CASE("a client that never reads its answer is dropped at the write deadline") {
  Fixture f;
  f.server.reset();
  // A handler with an answer bigger than the socket buffers.
  UniqueFd l(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  REQUIRE(::bind(l.get(), reinterpret_cast<sockaddr*>(&f.addr), sizeof f.addr) == 0);
  REQUIRE(::listen(l.get(), 8) == 0);
  f.server = std::make_unique<MetricsServer>(std::move(l), f.epoll.get(), [](std::string_view) {
    return corral::HttpResponse{200, "text/plain", std::string(64 << 20, 'x')};
  });
  auto c = f.client();
  int small = 4096;
  ::setsockopt(c.get(), SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  ::send(c.get(), "GET / HTTP/1.1\r\n\r\n", 18, MSG_NOSIGNAL);
  f.pump();
  CHECK(f.server->clients() == 1);
  f.now += MetricsServer::kWriteTimeoutNs;
  f.server->expire(f.now);
  CHECK(f.server->clients() == 0);
}

TEST_CASE("the request line parser") {
  auto r = corral::parse_request_head("GET /readyz?verbose HTTP/1.1\r\nHost: a\r\n");
  CHECK(r.error_status == 0);
  CHECK(r.method == "GET");
  CHECK(r.path == "/readyz");
  CHECK(corral::parse_request_head("GET http://x/ HTTP/1.1\r\n").error_status == 400);
  CHECK(corral::parse_request_head(" / HTTP/1.1\r\n").error_status == 400);
  CHECK(corral::parse_request_head("DELETE / HTTP/1.1\r\n").error_status == 405);
}

TEST_CASE("out of fds, the listener rests instead of spinning the loop, then serves") {
  Fixture f;
  auto c = f.client();
  const std::string req = "GET /metrics HTTP/1.1\r\n\r\n";
  REQUIRE(::send(c.get(), req.data(), req.size(), MSG_NOSIGNAL) ==
          static_cast<ssize_t>(req.size()));
  rlimit saved{};
  REQUIRE(::getrlimit(RLIMIT_NOFILE, &saved) == 0);
  int lowest = ::dup(0);
  REQUIRE(lowest >= 0);
  ::close(lowest);
  rlimit tight = saved;
  tight.rlim_cur = static_cast<rlim_t>(lowest);  // the next fd would be `lowest`: EMFILE
  REQUIRE(::setrlimit(RLIMIT_NOFILE, &tight) == 0);
  epoll_event ev[4];
  int n = ::epoll_wait(f.epoll.get(), ev, 4, 1000);
  REQUIRE(n == 1);
  f.server->on_event(ev[0].data.fd, ev[0].events, f.now);
  // Nothing more wakes the loop while it rests.
  CHECK(::epoll_wait(f.epoll.get(), ev, 4, 50) == 0);
  CHECK(f.server->next_deadline() == f.now + MetricsServer::kAcceptRetryNs);
  REQUIRE(::setrlimit(RLIMIT_NOFILE, &saved) == 0);
  f.now += MetricsServer::kAcceptRetryNs;
  f.server->expire(f.now);
  f.pump();
  CHECK(Fixture::read_all(c.get()).starts_with("HTTP/1.1 200 OK"));
}
