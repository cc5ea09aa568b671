// The accept mutex of one generation of a job: created here, handed to workers by spawn.
#include "supervisor/accept_lock.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
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

Result<AcceptLock> make_accept_lock(AcceptMutex kind, const std::string& dir,
                                    const std::string& job, std::uint32_t generation) {
  AcceptLock lock;
  lock.kind = kind;
  if (kind == AcceptMutex::fcntl) {
    lock.fd = UniqueFd(::memfd_create("corral-accept-lock", MFD_CLOEXEC));
    if (!lock.fd) return errno_error("memfd_create for the accept lock of job " + job);
    if (::ftruncate(lock.fd.get(), 1) != 0) return errno_error("ftruncate accept lock");
  } else if (kind == AcceptMutex::pipe) {
    std::string path =
        dir + "/." + job + ".lock." + std::to_string(::getpid()) + "." + std::to_string(generation);
    ::unlink(path.c_str());
    if (::mkfifo(path.c_str(), 0600) != 0) return errno_error("mkfifo " + path);
    // O_RDWR on a FIFO never blocks on Linux (fifo(7)); the workers' end must stay
    // blocking (a blocking read is what wakes exactly one waiter), the supervisor's
    // own end is a separate open file description and non-blocking.
    lock.fd = UniqueFd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
    int err = errno;
    lock.private_fd = UniqueFd(::open(path.c_str(), O_RDWR | O_CLOEXEC | O_NONBLOCK));
    ::unlink(path.c_str());
    if (!lock.fd || !lock.private_fd) return Error{err != 0 ? err : errno, "open " + path};
    if (::write(lock.private_fd.get(), "T", 1) != 1) return errno_error("write the accept token");
  }
  return lock;
}

}  // namespace corral
