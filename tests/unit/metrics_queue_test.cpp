// lib/listen/sock_diag: the listen-queue reader on real sockets with a known number of
// connections waiting (TCP from TCP_INFO, unix from sock_diag UNIX_DIAG_RQLEN).
#include "listen/sock_diag.h"

#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <linux/unix_diag.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "common/unique_fd.h"

namespace {

using corral::UniqueFd;

UniqueFd tcp_listener(int backlog, sockaddr_in& addr) {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  REQUIRE(fd);
  addr = {};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  socklen_t len = sizeof addr;
  REQUIRE(::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  REQUIRE(::listen(fd.get(), backlog) == 0);
  return fd;
}

UniqueFd unix_listener(int backlog, sockaddr_un& addr) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  REQUIRE(fd);
  addr = {};
  addr.sun_family = AF_UNIX;
  std::string path = "/tmp/corral-queue-test-" + std::to_string(::getpid()) + ".sock";
  ::unlink(path.c_str());
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  REQUIRE(::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  REQUIRE(::listen(fd.get(), backlog) == 0);
  return fd;
}

template <typename Addr>
std::vector<UniqueFd> connect_n(int family, const Addr& addr, int n) {
  std::vector<UniqueFd> out;
  for (int i = 0; i < n; ++i) {
    UniqueFd c(::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0));
    REQUIRE(c);
    // A loopback connect completes in the kernel (the handshake is synchronous), so the
    // connection is queued on the listener once connect() returns.
    REQUIRE(::connect(c.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0);
    out.push_back(std::move(c));
  }
  return out;
}

}  // namespace

TEST_CASE("a TCP listener's queue: its length and backlog, accept by accept") {
  sockaddr_in addr{};
  auto l = tcp_listener(16, addr);
  auto q = corral::listen_queue_of(l.get());
  REQUIRE(q.ok());
  CHECK(q->length == 0);
  CHECK(q->capacity == 16);
  auto clients = connect_n(AF_INET, addr, 5);
  q = corral::listen_queue_of(l.get());
  REQUIRE(q.ok());
  CHECK(q->length == 5);
  CHECK(q->capacity == 16);
  UniqueFd accepted(::accept4(l.get(), nullptr, nullptr, SOCK_CLOEXEC));
  REQUIRE(accepted);
  q = corral::listen_queue_of(l.get());
  REQUIRE(q.ok());
  CHECK(q->length == 4);
}

TEST_CASE("a unix listener's queue comes from sock_diag, which no peer reads") {
  sockaddr_un addr{};
  auto l = unix_listener(8, addr);
  auto q = corral::listen_queue_of(l.get());
  REQUIRE(q.ok());
  CHECK(q->length == 0);
  CHECK(q->capacity == 8);
  auto clients = connect_n(AF_UNIX, addr, 3);
  q = corral::listen_queue_of(l.get());
  REQUIRE(q.ok());
  CHECK(q->length == 3);
  CHECK(q->capacity == 8);
  UniqueFd accepted(::accept4(l.get(), nullptr, nullptr, SOCK_CLOEXEC));
  REQUIRE(accepted);
  q = corral::listen_queue_of(l.get());
  REQUIRE(q.ok());
  CHECK(q->length == 2);
  ::unlink(addr.sun_path);
}

TEST_CASE("a full unix queue reports its capacity, and the length stops there") {
  sockaddr_un addr{};
  auto l = unix_listener(2, addr);
  std::vector<UniqueFd> clients;
  // A unix connect beyond the backlog would block: non-blocking, it says EAGAIN.
  for (int i = 0; i < 10; ++i) {
    UniqueFd c(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (::connect(c.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0)
      clients.push_back(std::move(c));
  }
  auto q = corral::listen_queue_of(l.get());
  REQUIRE(q.ok());
  CHECK(q->capacity == 2);
  CHECK(q->length == clients.size());
  CHECK(q->length >= 2);  // the kernel admits up to backlog + 1 (sk_acceptq_is_full)
  CHECK(q->length <= 3);
  ::unlink(addr.sun_path);
}

TEST_CASE("sockets that are not listening stream sockets are refused, not guessed") {
  UniqueFd udp(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  CHECK_FALSE(corral::listen_queue_of(udp.get()).ok());
  UniqueFd unbound(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  CHECK_FALSE(corral::listen_queue_of(unbound.get()).ok());
  CHECK_FALSE(corral::listen_queue_of(-1).ok());
  int fds[2];
  REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
  UniqueFd r(fds[0]), w(fds[1]);
  CHECK_FALSE(corral::listen_queue_of(r.get()).ok());
}

TEST_CASE("sock_diag names the file a unix socket is bound to") {
  sockaddr_un addr{};
  auto l = unix_listener(4, addr);
  auto d = corral::unix_diag(l.get(), UDIAG_SHOW_VFS | UDIAG_SHOW_RQLEN);
  REQUIRE(d.ok());
  CHECK(d->has_vfs);
  CHECK(d->has_rqlen);
  struct stat st {};
  REQUIRE(::stat(addr.sun_path, &st) == 0);
  CHECK(d->ino == st.st_ino);
  ::unlink(addr.sun_path);
}
