// The accept mutex of one generation of a job: created here, handed to workers by spawn.
#include "supervisor/accept_lock.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <string>

namespace corral {

AcceptMutex resolve_accept_mutex(const JobConfig& job) {
  if (job.mode == Mode::plain) return AcceptMutex::none;
  if (job.accept_mutex != AcceptMutex::automatic) return job.accept_mutex;
  // docs/PROTOCOL.md, "Choosing accept_mutex": the token pipe wakes one waiter
  // whatever the number of listeners and idle workers.
  return AcceptMutex::pipe;
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
