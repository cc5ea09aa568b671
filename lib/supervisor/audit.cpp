// Health checks of the accept mutex and the idle hint: a lost or stalled token, a worker
// stuck holding the mutex, a drifting idle count.
#include "supervisor/impl.h"

#include <corral/protocol.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>

#include "common/duration.h"
#include "log/log.h"
#include "scoreboard/scoreboard.h"

namespace corral {

// Connections waiting in the accept queues of `listeners`: TCP_INFO's tcpi_unacked is
// the accept queue length of a listening TCP socket (tcp_get_info()); for other
// sockets poll() only says whether any waits (counted as 1).
unsigned queued_connections(const std::vector<std::shared_ptr<Listener>>& listeners) {
  unsigned total = 0;
  for (const auto& l : listeners) {
    tcp_info info{};
    socklen_t len = sizeof info;
    if (::getsockopt(l->fd.get(), IPPROTO_TCP, TCP_INFO, &info, &len) == 0 &&
        info.tcpi_state == TCP_LISTEN) {
      total += info.tcpi_unacked;
      continue;
    }
    pollfd p{l->fd.get(), POLLIN, 0};
    if (::poll(&p, 1, 0) == 1 && (p.revents & POLLIN) != 0) total += 1;
  }
  return total;
}

void Supervisor::Impl::audit_token(Job& job, std::uint64_t now) noexcept {
  // The token pipe holds one token, in the pipe or with the worker that read it. A
  // holder killed while holding it takes it along: restore it. What workers write in
  // their slots is untrusted, so a token is restored when no live worker claims it, or
  // when connections wait while the pipe is empty and no connection was accepted
  // since the last audit (a stall, whoever claims the token). Extra tokens (from a
  // wrong guess) only cost a little herd, and are drained once back in the pipe.
  // Every action needs two observations at least kAuditSpacing apart.
  if (job.lock.kind != AcceptMutex::pipe || !job.lock.private_fd) return;
  LogContext log_ctx{job.cfg.name};
  auto& lock = job.lock;
  int in_pipe = 0;
  if (::ioctl(lock.private_fd.get(), FIONREAD, &in_pipe) != 0) return;
  int held = 0;
  std::uint64_t requests = 0;
  for (const auto& [pid, w] : job.workers) {
    if (w.generation != job.generation || w.term_sent) continue;
    auto slot = job.sb.read_slot(w.slot);
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
      for (const auto& l : job.listeners) {
        pollfd p{l->fd.get(), POLLIN, 0};
        if (::poll(&p, 1, 0) == 1 && (p.revents & POLLIN) != 0) finding = AuditFinding::stalled;
      }
    }
  }
  if (finding == AuditFinding::fine || finding != lock.finding) {
    lock.finding = finding;
    lock.finding_since = now;
    return;
  }
  if (now - lock.finding_since < kAuditSpacing) return;
  lock.finding = AuditFinding::fine;
  switch (finding) {
    case AuditFinding::lost:
      spdlog::warn("job {}: the accept token was lost (its holder died); restoring it",
                   job.cfg.name);
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
      return;
    }
    default: return;
  }
  [[maybe_unused]] auto r = ::write(lock.private_fd.get(), "T", 1);
}

void Supervisor::Impl::replace_stuck_holders(Job& job, unsigned queued,
                                             std::uint64_t now) noexcept {
  // Holding the accept mutex while idle is normal. Holding it for kStuckHolder while
  // (a) connections waited all along and none was accepted, or (b) other workers
  // accepted meanwhile (possible only if the holder was bypassed by a restored token)
  // means the holder is alive but not accepting: replace it.
  if (job.lock.kind != AcceptMutex::pipe && job.lock.kind != AcceptMutex::fcntl) return;
  std::uint64_t requests = 0;
  for (const auto& [pid, w] : job.workers) {
    if (w.generation == job.generation) requests += job.sb.read_slot(w.slot).requests;
  }
  if (queued == 0 || requests != job.stall_requests) {
    job.stall_since = queued == 0 ? 0 : now;
    job.stall_requests = requests;
  } else if (job.stall_since == 0) {
    job.stall_since = now;
  }
  const bool stalled = job.stall_since != 0 && now - job.stall_since >= kStuckHolder;
  for (auto& [pid, w] : job.workers) {
    if (w.term_sent || w.generation != job.generation) continue;
    SlotView s = job.sb.read_slot(w.slot);
    if (s.lock != CORRAL_LOCK_HELD) {
      w.held_since = 0;
      continue;
    }
    if (w.held_since != s.lock_since_ns || w.held_since == 0) {
      w.held_since = s.lock_since_ns;
      w.held_seen_at = now;
      w.held_requests_base = requests - std::min(requests, s.requests);
      continue;
    }
    const std::uint64_t others = requests - std::min(requests, s.requests);
    const bool bypassed = others > w.held_requests_base;
    if (now - w.held_seen_at >= kStuckHolder && (stalled || bypassed)) {
      LogContext worker_ctx{job.cfg.name, w.slot, w.pid};
      spdlog::warn(
          "job {}: worker {} (slot {}) has held the accept mutex for {} while connections "
          "waited; replacing it",
          job.cfg.name, w.pid, w.slot, format_duration(Duration(now - w.held_seen_at)));
      signal_worker(job, w, SIGKILL);
      w.term_sent = true;
      w.kill_sent = true;
      job.stall_since = 0;
    }
  }
}

void Supervisor::Impl::correct_idle_hint(Job& job, unsigned idle) noexcept {
  // The hint drifts when a worker dies while idle; correct it when the same
  // difference is seen twice in a row (a single sighting may be a worker between
  // writing its state and adjusting the hint).
  int delta = static_cast<int>(idle) - job.sb.idle_hint();
  if (delta != 0 && delta == job.hint_delta) {
    job.sb.add_idle_hint(delta);
    delta = 0;
  }
  job.hint_delta = delta;
}

}  // namespace corral
