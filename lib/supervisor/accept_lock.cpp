// The accept mutex of one generation of a job: created here, handed to workers by spawn.
#include "supervisor/accept_lock.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <string>

namespace corral {

AcceptMutex resolve_accept_mutex(const JobConfig& job, std::size_t sockets) {
  if (job.mode == Mode::plain) return AcceptMutex::none;
  if (job.accept_mutex != AcceptMutex::automatic) return job.accept_mutex;
  // docs/PROTOCOL.md, "Choosing accept_mutex". On one socket a blocking accept() is
  // already wake-one and FIFO-fair (an exclusive wait on the listener's queue, as
  // Apache's SINGLE_LISTEN_UNSERIALIZED_ACCEPT relies on): no mutex. A worker that must
  // choose among several sockets waits in poll(), which wakes everyone: the token pipe
  // lets one worker at a time wait there, whatever the number of idle workers.
  return sockets == 1 ? AcceptMutex::none : AcceptMutex::pipe;
}

bool listeners_blocking(const JobConfig& job, AcceptMutex kind, std::size_t sockets) {
  if (job.mode == Mode::plain) return true;
  // Only what `auto` chose: an explicit `none` keeps today's poll-then-accept (the herd
  // it documents), and every kind with a mutex or an epoll needs EAGAIN for a worker
  // that lost the race (two tokens after a restore, EPOLLEXCLUSIVE waking two).
  return job.accept_mutex == AcceptMutex::automatic && kind == AcceptMutex::none && sockets == 1;
}

Status set_listener_blocking(int fd, bool blocking, const std::string& what) {
  int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0) return errno_error("fcntl F_GETFL " + what);
  const int want = blocking ? (flags & ~O_NONBLOCK) : (flags | O_NONBLOCK);
  if (want != flags && ::fcntl(fd, F_SETFL, want) != 0) return errno_error("fcntl F_SETFL " + what);
  return Ok{};
}

Result<AcceptLock> make_accept_lock(AcceptMutex kind, const std::string& /*dir*/,
                                    const std::string& job, std::uint32_t /*generation*/) {
  AcceptLock lock;
  lock.kind = kind;
  if (kind == AcceptMutex::fcntl) {
    lock.fd = UniqueFd(::memfd_create("corral-accept-lock", MFD_CLOEXEC));
    if (!lock.fd) return errno_error("memfd_create for the accept lock of job " + job);
    if (::ftruncate(lock.fd.get(), 1) != 0) return errno_error("ftruncate accept lock");
  } else if (kind == AcceptMutex::pipe) {
    // No name in any directory, so nothing another user could swap: an anonymous pipe,
    // reopened read-write through /proc/self/fd. Opening a pipe there makes a new open
    // file description of the same pipe (fifo(7); O_RDWR never blocks on Linux). The
    // workers' end must stay blocking (a blocking read is what wakes exactly one
    // waiter); the supervisor's own end is a separate description, non-blocking.
    int ends[2];
    if (::pipe2(ends, O_CLOEXEC) != 0)
      return errno_error("pipe2 for the accept lock of job " + job);
    UniqueFd read_end(ends[0]);
    UniqueFd write_end(ends[1]);
    std::string path = "/proc/self/fd/" + std::to_string(read_end.get());
    lock.fd = UniqueFd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
    if (!lock.fd) return errno_error("open " + path + " (the accept lock of job " + job + ")");
    lock.private_fd = UniqueFd(::open(path.c_str(), O_RDWR | O_CLOEXEC | O_NONBLOCK));
    if (!lock.private_fd)
      return errno_error("open " + path + " (the accept lock of job " + job + ")");
    if (::write(lock.private_fd.get(), "T", 1) != 1) return errno_error("write the accept token");
  }
  return lock;
}

}  // namespace corral
