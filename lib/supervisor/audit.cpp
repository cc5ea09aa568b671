// Health checks of the accept mutex and the idle hint: a lost or stalled token, a worker
// stuck holding the mutex, a drifting idle count.
#include "supervisor/impl.h"

#include <corral/protocol.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <algorithm>

#include "common/duration.h"
#include "listen/sock_diag.h"
#include "log/log.h"
#include "scoreboard/scoreboard.h"

namespace corral {

// Connections waiting in the accept queues of `listeners`: TCP_INFO for TCP, sock_diag
// UNIX_DIAG_RQLEN for unix sockets (listen_queue_of); for other sockets poll() only
// says whether any waits (counted as 1).
unsigned queued_connections(const std::vector<std::shared_ptr<Listener>>& listeners,
                            QueuePeaks* peaks) {
  unsigned total = 0;
  for (const auto& l : listeners) {
    // A unix listener costs a netlink round trip: ask only when something waits.
    pollfd p{l->fd.get(), POLLIN, 0};
    if (::poll(&p, 1, 0) != 1 || (p.revents & POLLIN) == 0) continue;
    std::uint32_t length = 1;  // a socket the kernel says nothing about: "some"
    if (auto q = listen_queue_of(l->fd.get())) length = q->length;
    total += length;
    if (peaks != nullptr && length > 0) {
      try {
        auto& peak = (*peaks)[l->display];
        peak.scrape = std::max(peak.scrape, length);
        peak.file = std::max(peak.file, length);
      } catch (...) {
      }
    }
  }
  return total;
}

namespace {

// Bytes `pid` has read with read()/readv() so far (/proc/PID/io "rchar"), or kUnknown.
std::uint64_t bytes_read(pid_t pid) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/io", static_cast<int>(pid));
  int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return WorkerRec::kUnknown;
  char buf[512];
  ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  if (n <= 0) return WorkerRec::kUnknown;
  buf[n] = '\0';
  const char* p = std::strstr(buf, "rchar:");
  if (p == nullptr) return WorkerRec::kUnknown;
  return std::strtoull(p + 6, nullptr, 10);
}

}  // namespace

std::uint64_t Supervisor::Impl::audit_token(Job& job, std::uint64_t now) noexcept {
  // The token pipe holds one token, in the pipe or with the worker that read it. A
  // holder killed while holding it takes it along: restore it. What workers write in
  // their slots is untrusted, so a token is restored when no live worker claims it, or
  // when connections wait while the pipe is empty and no connection was accepted
  // since the last audit (a stall, whoever claims the token). Extra tokens (from a
  // wrong guess) only cost a little herd, and are drained once back in the pipe.
  // Every action needs two observations at least kAuditSpacing apart.
  //
  // A token that vanishes while nobody claims it was taken by a worker that lies (its
  // slot says idle, lock NONE) or by one that died holding it. Honest idle workers are
  // blocked reading the token; a worker seen idle, claiming nothing, and doing
  // something else at both observations is the hog: it is replaced.
  auto& lock = job.res.lock;
  if (lock.kind != AcceptMutex::pipe || !lock.private_fd) return 0;
  LogContext log_ctx{job.cfg.name};
  int in_pipe = 0;
  if (::ioctl(lock.private_fd.get(), FIONREAD, &in_pipe) != 0) return 0;
  int held = 0;
  std::uint64_t requests = 0;
  for (const auto& [pid, w] : job.workers) {
    if (w.generation != job.generation || w.phase == WorkerPhase::stopping ||
        w.phase == WorkerPhase::killing)
      continue;
    auto slot = job.res.sb.read_slot(w.slot);
    if (slot.lock == CORRAL_LOCK_HELD) ++held;
    requests += slot.requests;
  }
  bool progress = requests != lock.last_requests;
  lock.last_requests = requests;
  AuditFinding finding = AuditFinding::fine;
  if (in_pipe >= 2) {
    finding = AuditFinding::extra;
  } else if (in_pipe == 0) {
    if (held == 0) {
      finding = AuditFinding::lost;
    } else if (!progress) {
      for (const auto& l : job.res.listeners) {
        pollfd p{l->fd.get(), POLLIN, 0};
        if (::poll(&p, 1, 0) == 1 && (p.revents & POLLIN) != 0) finding = AuditFinding::stalled;
      }
    }
  }
  // The hog: after a restore, a worker whose slot still says idle and not holding,
  // that served nothing, but read since (the token) while the token vanished again.
  // An honest taker says HELD within microseconds, or accepts, or gives it back.
  if (finding == AuditFinding::lost) {
    bool found = false;
    for (auto& [pid, w] : job.workers) {
      if (w.rchar_at_restore == WorkerRec::kUnknown || w.generation != job.generation ||
          w.phase != WorkerPhase::up)
        continue;
      auto slot = job.res.sb.read_slot(w.slot);
      const auto read_now = bytes_read(pid);
      if (slot.state == CORRAL_SLOT_IDLE && slot.lock == CORRAL_LOCK_NONE &&
          slot.requests == w.requests_at_restore && read_now != WorkerRec::kUnknown &&
          read_now > w.rchar_at_restore) {
        LogContext worker_ctx{job.cfg.name, w.slot, w.pid};
        spdlog::warn(
            "job {}: worker {} (slot {}) took the accept token and kept it while its slot "
            "says idle and not holding it; replacing it",
            job.cfg.name, w.pid, w.slot);
        w.exit_reason = ExitReason::stuck_lock;
        worker_event(job, w, WorkerEvent::kill, now);
        found = true;
      }
      w.rchar_at_restore = WorkerRec::kUnknown;
    }
    if (found) {
      // We know where the token went: put one back now.
      [[maybe_unused]] auto r = ::write(lock.private_fd.get(), "T", 1);
      lock.finding = AuditFinding::fine;
      lock.finding_since = now;
      return now + kAuditSpacing;
    }
  } else if (finding == AuditFinding::fine) {
    for (auto& [pid, w] : job.workers) w.rchar_at_restore = WorkerRec::kUnknown;
  }
  if (finding == AuditFinding::fine || finding != lock.finding) {
    lock.finding = finding;
    lock.finding_since = now;
    return finding == AuditFinding::fine ? 0 : now + kAuditSpacing;
  }
  if (now - lock.finding_since < kAuditSpacing) return lock.finding_since + kAuditSpacing;
  lock.finding = AuditFinding::fine;
  switch (finding) {
    case AuditFinding::lost:
      spdlog::warn("job {}: the accept token was lost; restoring it", job.cfg.name);
      // Watch who takes the restored one.
      for (auto& [pid, w] : job.workers) {
        if (w.generation != job.generation || w.phase != WorkerPhase::up) continue;
        w.rchar_at_restore = bytes_read(pid);
        w.requests_at_restore = job.res.sb.read_slot(w.slot).requests;
      }
      break;
    case AuditFinding::stalled:
      spdlog::warn("job {}: connections wait but the accept token is not coming back; adding one",
                   job.cfg.name);
      break;
    case AuditFinding::extra: {
      spdlog::info("job {}: {} accept tokens in the pipe; removing the extra", job.cfg.name,
                   in_pipe);
      char buf[64];
      auto extra = std::min<size_t>(static_cast<size_t>(in_pipe - 1), sizeof buf);
      [[maybe_unused]] auto r = ::read(lock.private_fd.get(), buf, extra);
      return 0;
    }
    default: return 0;
  }
  [[maybe_unused]] auto r = ::write(lock.private_fd.get(), "T", 1);
  // Watch whether it stays: a hog takes the restored token too.
  return now + kAuditSpacing;
}

void Supervisor::Impl::correct_idle_hint(Job& job, unsigned idle) noexcept {
  // The hint drifts when a worker dies while idle; correct it when the same
  // difference is seen twice in a row (a single sighting may be a worker between
  // writing its state and adjusting the hint).
  int delta = static_cast<int>(idle) - job.res.sb.idle_hint();
  if (delta != 0 && delta == job.audit.hint_delta) {
    job.res.sb.add_idle_hint(delta);
    delta = 0;
  }
  job.audit.hint_delta = delta;
}

}  // namespace corral
