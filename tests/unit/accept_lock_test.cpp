// lib/supervisor/accept_lock: the token pipe keeps docs/PROTOCOL.md 4.1 and has no path.
#include "supervisor/accept_lock.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/ioctl.h>
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
