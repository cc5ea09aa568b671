#include "supervisor/decide.h"

#include <algorithm>

#include "supervisor/pool.h"

namespace corral {
namespace {

std::uint64_t to_ns(Duration d) {
  return d.count() > 0 ? static_cast<std::uint64_t>(d.count()) : 0;
}

struct Builder {
  Decision d;
  std::uint64_t now;
  void wake(std::uint64_t at) {
    if (at == 0) return;
    at = std::max(at, now);
    if (d.wake_at == 0 || at < d.wake_at) d.wake_at = at;
  }
};

// The stuck-lock rule. Holding the accept mutex while idle is normal. Holding it for
// kStuckHolder while (a) connections waited all along and none was accepted, or (b)
// other workers accepted meanwhile (possible only if the holder was bypassed by a
// restored token) means the holder is alive but not accepting: replace it.
void find_stuck_holders(const PoolSnapshot& snap, Pacing& pacing, Builder& b) {
  std::uint64_t requests = 0;
  for (const auto& w : snap.workers) {
    if (w.current) requests += w.requests;
  }
  if (snap.queued == 0 || requests != pacing.stall_requests) {
    pacing.stall_since = snap.queued == 0 ? 0 : b.now;
    pacing.stall_requests = requests;
  } else if (pacing.stall_since == 0) {
    pacing.stall_since = b.now;
  }
  const bool stalled = pacing.stall_since != 0 && b.now - pacing.stall_since >= kStuckHolder;
  std::map<pid_t, HolderWatch> seen;
  for (const auto& w : snap.workers) {
    if (!w.current || w.phase == WorkerPhase::stopping || w.phase == WorkerPhase::killing) continue;
    if (!w.lock_held) continue;
    const std::uint64_t others = requests - std::min(requests, w.requests);
    auto it = pacing.holders.find(w.pid);
    if (it == pacing.holders.end() || it->second.lock_since != w.lock_since ||
        it->second.lock_since == 0) {
      seen[w.pid] = HolderWatch{w.lock_since, b.now, others, w.requests, 0};
      if (snap.queued > 0) b.wake(b.now + kStuckHolder);
      continue;
    }
    HolderWatch watch = it->second;
    // A holder that served a connection since is not stuck, whatever the others did.
    const bool progressed = w.requests != watch.own_base;
    const bool bypassed_now = others > watch.others_base && !progressed;
    if (!bypassed_now) {
      watch.bypassed_at = 0;
    } else if (watch.bypassed_at == 0) {
      watch.bypassed_at = b.now;
    }
    const bool bypassed = bypassed_now && b.now - watch.bypassed_at >= kBypassConfirm;
    if (progressed) {
      watch.own_base = w.requests;
      watch.others_base = others;
      watch.seen_at = b.now;
    }
    seen[w.pid] = watch;
    if (b.now - watch.seen_at >= kStuckHolder && (stalled || bypassed)) {
      b.d.kills.emplace_back(w.pid, KillReason::stuck_lock);
      pacing.stall_since = 0;
    } else if (snap.queued > 0 || bypassed_now) {
      b.wake(std::max(watch.seen_at + kStuckHolder,
                      bypassed_now ? watch.bypassed_at + kBypassConfirm : 0));
    }
  }
  pacing.holders = std::move(seen);  // forget workers gone or no longer holding
}

}  // namespace

const char* to_string(KillReason reason) noexcept {
  switch (reason) {
    case KillReason::start_timeout: return "start_timeout";
    case KillReason::busy_timeout: return "busy_timeout";
    case KillReason::stuck_lock: return "stuck_lock";
    case KillReason::graceful_timeout: return "graceful_timeout";
  }
  return "?";
}

Decision decide(const PoolSnapshot& snap, Pacing& pacing, std::uint64_t now) {
  Builder b{{}, now};
  Decision& d = b.d;
  PoolCounts counts;
  std::vector<const WorkerView*> idle_current;
  const auto& cfg = snap.spec;
  for (const auto& w : snap.workers) {
    if (w.phase == WorkerPhase::stopping && w.kill_at != 0) {
      if (now >= w.kill_at) {
        d.kills.emplace_back(w.pid, KillReason::graceful_timeout);
      } else {
        b.wake(w.kill_at);
      }
    }
    if (!w.current || w.phase == WorkerPhase::stopping || w.phase == WorkerPhase::killing) continue;
    corral_slot_state state = w.state;
    if (snap.mode == Mode::plain) {
      state = CORRAL_SLOT_RUNNING;
      if (w.phase == WorkerPhase::starting) {
        if (now - std::min(now, w.started) >= kPlainCrashWindow) {
          d.became_ready.push_back(w.pid);
        } else {
          b.wake(w.started + kPlainCrashWindow);
        }
      }
    } else if (state == CORRAL_SLOT_EMPTY || state == CORRAL_SLOT_RUNNING ||
               state == CORRAL_SLOT_STOPPING) {
      // Nonsense from the worker (only corral writes STOPPING): trust our own phase.
      state = w.phase == WorkerPhase::up ? CORRAL_SLOT_IDLE : CORRAL_SLOT_STARTING;
    }
    if ((state == CORRAL_SLOT_IDLE || state == CORRAL_SLOT_BUSY) &&
        w.phase == WorkerPhase::starting)
      d.became_ready.push_back(w.pid);
    switch (state) {
      case CORRAL_SLOT_STARTING: {
        ++counts.starting;
        b.wake(now + kWatchStarting);
        const auto limit = to_ns(cfg.start_timeout);
        if (snap.mode != Mode::plain && limit != 0) {
          if (now - std::min(now, w.started) > limit) {
            d.kills.emplace_back(w.pid, KillReason::start_timeout);
            --counts.starting;
          } else {
            b.wake(w.started + limit + 1);
          }
        }
        break;
      }
      case CORRAL_SLOT_IDLE:
        ++counts.idle;
        if (snap.mode == Mode::prefork && cfg.max_requests != 0 && w.requests >= cfg.max_requests) {
          d.stops.emplace_back(w.pid, StopReason::max_requests);
          --counts.idle;
        } else {
          idle_current.push_back(&w);
        }
        break;
      case CORRAL_SLOT_BUSY:
      case CORRAL_SLOT_RUNNING: {
        ++counts.busy;
        const auto limit = to_ns(snap.busy_timeout);
        const auto since = w.state_since;
        if (state == CORRAL_SLOT_BUSY && limit != 0 && since != 0 && since <= now) {
          if (now - since > limit) {
            d.kills.emplace_back(w.pid, KillReason::busy_timeout);
          } else {
            b.wake(since + limit + 1);
          }
        }
        break;
      }
      default: break;
    }
  }
  if (snap.stuck_checks) find_stuck_holders(snap, pacing, b);
  counts.queued = snap.queued;
  const unsigned total = counts.starting + counts.idle + counts.busy;
  d.idle = counts.idle;
  d.busy = counts.busy;
  d.starting = counts.starting;
  d.at_max = total >= cfg.max;
  if (!may_spawn(snap.phase)) return d;
  if (snap.phase == JobPhase::backing_off && now < snap.retry_at) {
    b.wake(snap.retry_at);
    return d;
  }

  JobConfig shape;
  shape.mode = snap.mode;
  shape.workers = cfg;
  PoolAction action = plan_pool(shape, counts, pacing.start_pending);
  if (now - pacing.window_start >= kSpawnWindow) {
    pacing.window_start = now;
    pacing.spawned_in_window = 0;
  }
  unsigned spawn = action.spawn;
  if (!pacing.start_pending) {
    // The configured workers.start goes at once (Apache forks its StartServers at once
    // too); anything else is held to the rate and in-flight caps, and a capped round
    // wakes us when the cap lifts: no connection waits for a periodic tick.
    const unsigned window_room = kSpawnBurst - std::min(kSpawnBurst, pacing.spawned_in_window);
    const unsigned flight_room = kMaxStarting - std::min(kMaxStarting, counts.starting);
    if (spawn > window_room) b.wake(pacing.window_start + kSpawnWindow);
    spawn = std::min({spawn, window_room, flight_room});
  }
  if (snap.phase == JobPhase::backing_off) spawn = std::min(spawn, counts.starting == 0 ? 1U : 0U);
  // plain mode keeps a fixed number of copies: a missing one is always wanted now.
  const bool urgent = snap.mode == Mode::plain || pacing.start_pending || counts.queued > 0 ||
                      counts.idle * 2 < cfg.min_spare;
  if (spawn == 0) {
    pacing.topup_at = 0;
  } else if (!urgent && counts.busy > 0) {
    if (pacing.topup_at == 0) pacing.topup_at = now + kTopUpMaxWait;
    if (now < pacing.topup_at) {
      spawn = 0;
      b.wake(pacing.topup_at);
    }
  }
  if (spawn > 0) pacing.topup_at = 0;
  pacing.spawned_in_window += spawn;
  if (spawn == action.spawn) pacing.start_pending = false;
  d.spawn = spawn;

  if (action.retire == 0) {
    pacing.excess_since = 0;
  } else if (pacing.excess_since == 0) {
    pacing.excess_since = now;
    b.wake(now + kRetireHysteresis);
  } else if (now - pacing.excess_since < kRetireHysteresis) {
    b.wake(pacing.excess_since + kRetireHysteresis);
  } else if (now - pacing.last_retire < kRetireInterval) {
    b.wake(pacing.last_retire + kRetireInterval);
  } else if (!idle_current.empty()) {
    // Highest slots first (Apache retires one idle child at a time; a quarter of the
    // excess per interval empties a burst's surplus in a few seconds).
    std::sort(idle_current.begin(), idle_current.end(),
              [](const WorkerView* x, const WorkerView* y) { return x->slot > y->slot; });
    const unsigned n =
        std::min<unsigned>((action.retire + 3) / 4, static_cast<unsigned>(idle_current.size()));
    for (unsigned i = 0; i < n; ++i) d.stops.emplace_back(idle_current[i]->pid, StopReason::retire);
    pacing.last_retire = now;
    b.wake(now + kRetireInterval);
  }
  return d;
}

}  // namespace corral
