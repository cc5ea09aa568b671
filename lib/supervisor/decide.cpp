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
    case KillReason::max_lifetime: return "max_lifetime";
    case KillReason::memory: return "memory";
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
    // Memory: above the hard bound, killed in any state (an inetd program too); above
    // max_rss, a prefork worker is retired once idle (below), so no connection is cut.
    const auto& mem = snap.memory;
    if (mem.hard_max_rss != 0 && w.rss_bytes > mem.hard_max_rss) {
      d.kills.emplace_back(w.pid, KillReason::memory);
      continue;
    }
    const bool too_big =
        snap.mode == Mode::prefork && mem.max_rss != 0 && w.rss_bytes > mem.max_rss;
    // Lifetime: its stop signal once idle; SIGKILL at lifetime + graceful_timeout.
    const bool expired = w.retire_at != 0 && now >= w.retire_at && snap.mode != Mode::plain;
    if (w.retire_at != 0 && !expired && snap.mode != Mode::plain) b.wake(w.retire_at);
    if (expired && state == CORRAL_SLOT_BUSY) {
      const auto kill_at = w.retire_at + to_ns(snap.graceful_timeout);
      if (now >= kill_at) {
        d.kills.emplace_back(w.pid, KillReason::max_lifetime);
        continue;
      }
      b.wake(kill_at);
    }
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
      case CORRAL_SLOT_IDLE: {
        ++counts.idle;
        const auto quota = w.requests_limit != 0 ? w.requests_limit : cfg.max_requests;
        if (snap.mode == Mode::prefork && quota != 0 && w.requests >= quota) {
          d.stops.emplace_back(w.pid, StopReason::max_requests);
          --counts.idle;
        } else if (expired) {
          d.stops.emplace_back(w.pid, StopReason::max_lifetime);
          --counts.idle;
        } else if (too_big) {
          d.stops.emplace_back(w.pid, StopReason::memory);
          --counts.idle;
        } else {
          idle_current.push_back(&w);
        }
        break;
      }
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
  const std::uint64_t budget = snap.mode == Mode::plain ? 0 : snap.memory.budget;
  std::uint64_t budget_room = 0;   // what the budget leaves for new workers
  bool budget_floor = false;       // no worker stays: one may start whatever the budget
  bool budget_unmeasured = false;  // workers live, but none ready yet: no size to go by
  if (budget != 0) {
    auto leaving = [&](pid_t pid) {
      return std::any_of(d.stops.begin(), d.stops.end(),
                         [&](const auto& s) { return s.first == pid; }) ||
             std::any_of(d.kills.begin(), d.kills.end(),
                         [&](const auto& k) { return k.first == pid; });
    };
    // The median is taken over workers that have become ready: one still starting is
    // loading its code and data, and its size says nothing yet of what a worker needs
    // (a pool that took it at its word started a worker per retirement, and retired one
    // per start: a spin, seen with a Python worker of 60 MiB).
    std::vector<std::uint64_t> sizes;
    for (const auto& w : snap.workers)
      if (w.rss_bytes != 0 && w.phase != WorkerPhase::starting) sizes.push_back(w.rss_bytes);
    if (!sizes.empty()) {
      std::nth_element(sizes.begin(), sizes.begin() + static_cast<std::ptrdiff_t>(sizes.size() / 2),
                       sizes.end());
      pacing.budget_median = sizes[sizes.size() / 2];
    }
    const std::uint64_t median = pacing.budget_median;
    // Every live worker holds memory until it is reaped (a stopping one too); one not yet
    // sampled is counted at the median, and one still starting at least at the median
    // (it is on its way there).
    std::uint64_t all = 0;
    std::uint64_t staying_bytes = 0;
    unsigned staying = 0;
    for (const auto& w : snap.workers) {
      const std::uint64_t size = w.phase == WorkerPhase::starting
                                     ? std::max(w.rss_bytes, median)
                                     : (w.rss_bytes != 0 ? w.rss_bytes : median);
      all += size;
      const bool stays = w.current && w.phase != WorkerPhase::stopping &&
                         w.phase != WorkerPhase::killing && !leaving(w.pid);
      if (!stays) continue;
      staying_bytes += size;
      ++staying;
    }
    // Over the budget: the largest idle worker first, until the rest fit.
    std::sort(idle_current.begin(), idle_current.end(),
              [](const WorkerView* x, const WorkerView* y) { return x->rss_bytes > y->rss_bytes; });
    std::size_t taken = 0;
    while (staying_bytes > budget && staying > 1 && taken < idle_current.size()) {
      const WorkerView* w = idle_current[taken++];
      d.stops.emplace_back(w->pid, StopReason::budget);
      const std::uint64_t size = w->rss_bytes != 0 ? w->rss_bytes : median;
      staying_bytes -= std::min(staying_bytes, size);
      --staying;
      --counts.idle;
    }
    idle_current.erase(idle_current.begin(),
                       idle_current.begin() + static_cast<std::ptrdiff_t>(taken));
    budget_room = budget > all ? budget - all : 0;
    budget_floor = staying == 0;
    budget_unmeasured = median == 0 && staying > 0;
    d.pool_bytes = all;
    d.median_bytes = median;
    d.budget_room = budget_floor || budget_room >= std::max<std::uint64_t>(median, 1);
  }
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
  if (budget != 0 && spawn > 0 && budget_unmeasured && !pacing.start_pending) {
    // What a worker needs is not known until one is ready: the configured workers.start
    // goes, spare-driven growth waits for that first measurement (the memory sampling
    // wakes the next look).
    spawn = 0;
  }
  if (budget != 0 && spawn > 0) {
    // Never start a worker that would take the pool above the budget (a new one is
    // assumed to need the median); one may start when none stays, whatever the budget.
    const std::uint64_t need = std::max<std::uint64_t>(d.median_bytes, 1);
    std::uint64_t fits = budget_room / need;
    if (budget_floor) fits = std::max<std::uint64_t>(fits, 1);
    if (fits < spawn) {
      d.budget_limited = true;
      d.budget_wanted = spawn;
      spawn = static_cast<unsigned>(fits);
      // As far as the budget allows, the start is done: READY= and the top-up rules do not
      // wait for workers it will not let in.
      pacing.start_pending = false;
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
