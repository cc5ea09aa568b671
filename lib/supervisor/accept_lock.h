// The accept mutex of one generation of a job (docs/PROTOCOL.md, section 4).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "common/error.h"
#include "common/unique_fd.h"
#include "config/config.h"

namespace corral {

enum class AuditFinding { fine, lost, stalled, extra };

// The accept mutex of one generation of a job.
struct AcceptLock {
  AcceptMutex kind = AcceptMutex::none;
  UniqueFd fd;          // handed to workers (pipe: a pipe opened O_RDWR; fcntl: memfd)
  UniqueFd private_fd;  // pipe: the supervisor's own non-blocking end, for audits
  AuditFinding finding = AuditFinding::fine;
  std::uint64_t finding_since = 0;
  std::uint64_t last_requests = 0;
};

/// What `accept_mutex: auto` (or the job's explicit choice) resolves to for `job`, whose
/// workers get `sockets` listening sockets (a `systemd:NAME` listener may stand for
/// several): `auto` is `none` with exactly one socket (a blocking accept() on one socket
/// already wakes one waiter, FIFO), `pipe` with more; plain mode is always `none`.
/// Pure.
AcceptMutex resolve_accept_mutex(const JobConfig& job, std::size_t sockets);

/// Whether the listening sockets of `job`, running the accept mutex `kind` on `sockets`
/// sockets, must be blocking (O_NONBLOCK clear on their shared open file description):
/// yes for plain mode (the program gets the socket as bind() makes it) and for a prefork
/// or inetd job that `auto` made lock-free on one socket (workers block in accept4);
/// no for every other prefork or inetd job (workers poll, then accept non-blocking, and
/// a loser of the race must get EAGAIN). Pure. docs/PROTOCOL.md, section 2.
bool listeners_blocking(const JobConfig& job, AcceptMutex kind, std::size_t sockets);

/// Sets (blocking false) or clears (blocking true) O_NONBLOCK on listener `fd`; the
/// supervisor is the only process that changes it. Returns an error naming `what`.
Status set_listener_blocking(int fd, bool blocking, const std::string& what);

/// Creates the lock of one generation: for `pipe` an anonymous pipe holding one token,
/// opened read-write twice through /proc/self/fd (the workers' blocking end, the
/// supervisor's non-blocking end), so that no path exists that another user could
/// replace; for `fcntl` a memfd; nothing for `none`/`epoll`. `dir` and `generation` are
/// unused since the FIFO left the scoreboard directory (kept for the callers).
Result<AcceptLock> make_accept_lock(AcceptMutex kind, const std::string& dir,
                                    const std::string& job, std::uint32_t generation);

}  // namespace corral
