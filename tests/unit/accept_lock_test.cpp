// lib/supervisor/accept_lock: the token pipe keeps docs/PROTOCOL.md 4.1 and has no path.
#include "supervisor/accept_lock.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <doctest/doctest.h>

#include <filesystem>
#include <string>

TEST_CASE("the pipe lock: one blocking read-write fd for workers, one token, no file anywhere") {
  char tmpl[] = "/tmp/corral-lock-test.XXXXXX";
  REQUIRE(::mkdtemp(tmpl) != nullptr);
  std::string dir = tmpl;
  auto lock = corral::make_accept_lock(corral::AcceptMutex::pipe, dir, "web", 1);
  REQUIRE(lock.ok());
  int fd = lock->fd.get();
  int mine = lock->private_fd.get();
  // Nothing was created where another user could swap it.
  CHECK(std::filesystem::is_empty(dir));
  std::filesystem::remove(dir);

  struct stat st {};
  REQUIRE(::fstat(fd, &st) == 0);
  CHECK(S_ISFIFO(st.st_mode));
  CHECK(st.st_uid == ::geteuid());
  struct stat st2 {};
  REQUIRE(::fstat(mine, &st2) == 0);
  CHECK(st2.st_ino == st.st_ino);  // the same pipe

  int flags = ::fcntl(fd, F_GETFL);
  CHECK((flags & O_ACCMODE) == O_RDWR);
  CHECK((flags & O_NONBLOCK) == 0);
  CHECK((::fcntl(mine, F_GETFL) & O_NONBLOCK) != 0);
  CHECK((::fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0);

  int queued = 0;
  REQUIRE(::ioctl(mine, FIONREAD, &queued) == 0);
  CHECK(queued == 1);
  // A worker acquires (blocking read) and releases (write) through its one fd.
  char b = 0;
  REQUIRE(::read(fd, &b, 1) == 1);
  CHECK(b == 'T');
  REQUIRE(::ioctl(mine, FIONREAD, &queued) == 0);
  CHECK(queued == 0);
  CHECK(::read(mine, &b, 1) == -1);  // the supervisor's end never blocks
  CHECK(errno == EAGAIN);
  REQUIRE(::write(fd, "T", 1) == 1);
  REQUIRE(::ioctl(fd, FIONREAD, &queued) == 0);
  CHECK(queued == 1);
}

TEST_CASE("the fcntl lock is a one-byte memfd") {
  auto lock = corral::make_accept_lock(corral::AcceptMutex::fcntl, "/nonexistent", "web", 1);
  REQUIRE(lock.ok());
  struct stat st {};
  REQUIRE(::fstat(lock->fd.get(), &st) == 0);
  CHECK(S_ISREG(st.st_mode));
  CHECK(st.st_size == 1);
}

namespace {
corral::JobConfig job_with(corral::Mode mode, corral::AcceptMutex kind) {
  corral::JobConfig job;
  job.mode = mode;
  job.accept_mutex = kind;
  return job;
}
}  // namespace

TEST_CASE("auto: no lock on exactly one socket, the token pipe on two or more") {
  using corral::AcceptMutex;
  using corral::Mode;
  for (Mode mode : {Mode::prefork, Mode::inetd}) {
    auto job = job_with(mode, AcceptMutex::automatic);
    CHECK(corral::resolve_accept_mutex(job, 1) == AcceptMutex::none);
    CHECK(corral::resolve_accept_mutex(job, 2) == AcceptMutex::pipe);
    CHECK(corral::resolve_accept_mutex(job, 5) == AcceptMutex::pipe);
    CHECK(corral::listeners_blocking(job, AcceptMutex::none, 1));
    CHECK_FALSE(corral::listeners_blocking(job, AcceptMutex::pipe, 2));
    // A hand-over from an image that resolved auto to pipe keeps non-blocking sockets.
    CHECK_FALSE(corral::listeners_blocking(job, AcceptMutex::pipe, 1));
  }
  CHECK(corral::resolve_accept_mutex(job_with(Mode::plain, AcceptMutex::automatic), 1) ==
        AcceptMutex::none);
}

TEST_CASE("explicit kinds are kept, and keep non-blocking sockets; plain mode is blocking") {
  using corral::AcceptMutex;
  using corral::Mode;
  for (AcceptMutex kind :
       {AcceptMutex::pipe, AcceptMutex::fcntl, AcceptMutex::epoll, AcceptMutex::none}) {
    auto job = job_with(Mode::prefork, kind);
    for (std::size_t n : {1U, 2U}) {
      CHECK(corral::resolve_accept_mutex(job, n) == kind);
      CHECK_FALSE(corral::listeners_blocking(job, kind, n));
    }
  }
  auto plain = job_with(Mode::plain, AcceptMutex::automatic);
  CHECK(corral::listeners_blocking(plain, AcceptMutex::none, 1));
  CHECK(corral::listeners_blocking(plain, AcceptMutex::none, 3));
}

TEST_CASE("set_listener_blocking sets and clears O_NONBLOCK on the shared description") {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  int other = ::dup(fd);  // a worker's copy: the same open file description
  REQUIRE(corral::set_listener_blocking(fd, false, "test").ok());
  CHECK((::fcntl(other, F_GETFL) & O_NONBLOCK) != 0);
  REQUIRE(corral::set_listener_blocking(fd, true, "test").ok());
  CHECK((::fcntl(other, F_GETFL) & O_NONBLOCK) == 0);
  REQUIRE(corral::set_listener_blocking(fd, true, "test").ok());  // idempotent
  CHECK((::fcntl(fd, F_GETFL) & O_NONBLOCK) == 0);
  ::close(other);
  ::close(fd);
  auto bad = corral::set_listener_blocking(fd, true, "listener x");
  CHECK_FALSE(bad.ok());
  CHECK(bad.error().what.find("listener x") != std::string::npos);
}
