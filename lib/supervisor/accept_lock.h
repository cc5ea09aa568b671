// The accept mutex of one generation of a job (docs/PROTOCOL.md, section 4).
#pragma once

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

/// What `accept_mutex: auto` (or the job's explicit choice) resolves to for `job`.
AcceptMutex resolve_accept_mutex(const JobConfig& job);

/// Creates the lock of one generation: for `pipe` an anonymous pipe holding one token,
/// opened read-write twice through /proc/self/fd (the workers' blocking end, the
/// supervisor's non-blocking end), so that no path exists that another user could
/// replace; for `fcntl` a memfd; nothing for `none`/`epoll`. `dir` and `generation` are
/// unused since the FIFO left the scoreboard directory (kept for the callers).
Result<AcceptLock> make_accept_lock(AcceptMutex kind, const std::string& dir,
                                    const std::string& job, std::uint32_t generation);

}  // namespace corral
