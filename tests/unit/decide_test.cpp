// lib/supervisor/decide: the pure pool policy, rule by rule, and a randomized
// simulation of thousands of event sequences checked against its invariants.
#include "supervisor/decide.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <deque>
#include <map>
#include <random>
#include <set>

using corral::Decision;
using corral::JobPhase;
using corral::KillReason;
using corral::Pacing;
using corral::PoolSnapshot;
using corral::StopReason;
using corral::WorkerPhase;
using corral::WorkerView;

namespace {

constexpr std::uint64_t kMs = 1000000ULL;
constexpr std::uint64_t kT0 = 1000000 * kMs;  // an arbitrary monotonic "now"

PoolSnapshot snapshot(unsigned start, unsigned min_spare, unsigned max_spare, unsigned max,
                      corral::Mode mode = corral::Mode::prefork) {
  PoolSnapshot s;
  s.mode = mode;
  s.spec.start = start;
  s.spec.min_spare = min_spare;
  s.spec.max_spare = max_spare;
  s.spec.max = max;
  s.spec.start_timeout = std::chrono::seconds(30);
  return s;
}

WorkerView worker(pid_t pid, corral_slot_state state, WorkerPhase phase = WorkerPhase::up) {
  WorkerView w;
  w.pid = pid;
  w.slot = static_cast<unsigned>(pid);
  w.state = state;
  w.phase = phase;
  w.started = kT0 - 1000 * kMs;
  w.state_since = kT0 - 10 * kMs;
  return w;
}

Pacing running_pacing() {
  Pacing p;
  p.start_pending = false;
  return p;
}

bool has_kill(const Decision& d, pid_t pid, KillReason why) {
  return std::find(d.kills.begin(), d.kills.end(), std::make_pair(pid, why)) != d.kills.end();
}

}  // namespace

TEST_CASE("the first decision starts workers.start at once") {
  auto s = snapshot(4, 2, 8, 64);
  Pacing p;
  auto d = corral::decide(s, p, kT0);
  CHECK(d.spawn == 4);
  CHECK_FALSE(p.start_pending);
}

TEST_CASE("queued connections and min_spare make the deficit, started at once") {
  auto s = snapshot(4, 2, 8, 64);
  for (pid_t pid = 1; pid <= 4; ++pid) s.workers.push_back(worker(pid, CORRAL_SLOT_BUSY));
  s.queued = 10;
  Pacing p = running_pacing();
  auto d = corral::decide(s, p, kT0);
  CHECK(d.spawn == 12);  // 10 waiting + min_spare 2
  CHECK(d.busy == 4);
}

TEST_CASE("the fork-rate cap withholds a start but asks to be woken when it lifts") {
  auto s = snapshot(1, 1, 8, 2000);
  s.queued = 1000;
  Pacing p = running_pacing();
  auto d = corral::decide(s, p, kT0);
  CHECK(d.spawn == corral::kMaxStarting);
  // Those are still starting: the in-flight cap holds the rest; the watch of starting
  // workers brings the next look.
  for (pid_t pid = 1; pid <= static_cast<pid_t>(d.spawn); ++pid)
    s.workers.push_back(worker(pid, CORRAL_SLOT_STARTING, WorkerPhase::starting));
  auto d2 = corral::decide(s, p, kT0 + kMs);
  CHECK(d2.spawn == 0);
  REQUIRE(d2.wake_at != 0);
  CHECK(d2.wake_at <= kT0 + kMs + corral::kWatchStarting);
  // Once they are up, the window cap applies: after kSpawnBurst starts in one window,
  // the next start waits for the window's end, and the decision says when that is.
  p.spawned_in_window = corral::kSpawnBurst;
  for (auto& w : s.workers) {
    w.state = CORRAL_SLOT_BUSY;
    w.phase = WorkerPhase::up;
  }
  auto d3 = corral::decide(s, p, kT0 + 2 * kMs);
  CHECK(d3.spawn == 0);
  CHECK(d3.wake_at == p.window_start + corral::kSpawnWindow);
}

TEST_CASE("a top-up while connections are served waits for a quiet moment, 50 ms at most") {
  auto s = snapshot(4, 4, 8, 64);
  s.workers = {worker(1, CORRAL_SLOT_IDLE), worker(2, CORRAL_SLOT_IDLE),
               worker(3, CORRAL_SLOT_IDLE), worker(4, CORRAL_SLOT_BUSY)};
  Pacing p = running_pacing();
  auto d = corral::decide(s, p, kT0);
  CHECK(d.spawn == 0);
  CHECK(d.wake_at == kT0 + corral::kTopUpMaxWait);
  auto later = corral::decide(s, p, kT0 + corral::kTopUpMaxWait);
  CHECK(later.spawn == 1);
}

TEST_CASE("a shortfall below half of min_spare is urgent: no top-up wait") {
  auto s = snapshot(4, 4, 8, 64);
  s.workers = {worker(1, CORRAL_SLOT_IDLE), worker(2, CORRAL_SLOT_BUSY)};
  Pacing p = running_pacing();
  CHECK(corral::decide(s, p, kT0).spawn == 3);
}

TEST_CASE(
    "idle workers above max_spare are retired only after the hysteresis, a quarter at a time") {
  auto s = snapshot(2, 1, 2, 64);
  for (pid_t pid = 1; pid <= 10; ++pid) s.workers.push_back(worker(pid, CORRAL_SLOT_IDLE));
  Pacing p = running_pacing();
  auto d = corral::decide(s, p, kT0);
  CHECK(d.stops.empty());
  CHECK(d.wake_at == kT0 + corral::kRetireHysteresis);
  auto d2 = corral::decide(s, p, kT0 + corral::kRetireHysteresis);
  CHECK(d2.stops.size() == 2);  // (8 + 3) / 4
  for (const auto& [pid, why] : d2.stops) {
    CHECK(why == StopReason::retire);
    CHECK(pid >= 9);  // highest slots first
  }
}

TEST_CASE("backing off: nothing before retry_at, then one probe at a time") {
  auto s = snapshot(4, 2, 8, 64);
  s.phase = JobPhase::backing_off;
  s.retry_at = kT0 + 400 * kMs;
  Pacing p = running_pacing();
  auto d = corral::decide(s, p, kT0);
  CHECK(d.spawn == 0);
  CHECK(d.wake_at == s.retry_at);
  auto probe = corral::decide(s, p, s.retry_at);
  CHECK(probe.spawn == 1);
  s.workers.push_back(worker(1, CORRAL_SLOT_STARTING, WorkerPhase::starting));
  CHECK(corral::decide(s, p, s.retry_at + kMs).spawn == 0);
}

TEST_CASE("failed, draining and removed jobs start nothing") {
  for (auto phase : {JobPhase::failed, JobPhase::draining, JobPhase::removed}) {
    auto s = snapshot(4, 2, 8, 64);
    s.phase = phase;
    Pacing p;
    CHECK(corral::decide(s, p, kT0).spawn == 0);
  }
}

TEST_CASE("start and busy timeouts kill; a state_since in the future never does") {
  auto s = snapshot(1, 0, 8, 64);
  s.busy_timeout = std::chrono::seconds(5);
  auto slow = worker(1, CORRAL_SLOT_STARTING, WorkerPhase::starting);
  slow.started = kT0 - 31000 * kMs;
  auto stuck = worker(2, CORRAL_SLOT_BUSY);
  stuck.state_since = kT0 - 6000 * kMs;
  auto liar = worker(3, CORRAL_SLOT_BUSY);
  liar.state_since = kT0 + 1000000 * kMs;  // a worker's scribble
  s.workers = {slow, stuck, liar};
  Pacing p = running_pacing();
  auto d = corral::decide(s, p, kT0);
  CHECK(has_kill(d, 1, KillReason::start_timeout));
  CHECK(has_kill(d, 2, KillReason::busy_timeout));
  CHECK(d.kills.size() == 2);
}

TEST_CASE("a stopping worker past its deadline is killed, and the deadline is a wake-up") {
  auto s = snapshot(1, 0, 8, 64);
  auto w = worker(7, CORRAL_SLOT_STOPPING, WorkerPhase::stopping);
  w.kill_at = kT0 + 100 * kMs;
  s.workers = {w};
  Pacing p = running_pacing();
  auto early = corral::decide(s, p, kT0);
  CHECK(early.kills.empty());
  CHECK(early.wake_at == kT0 + 100 * kMs);
  CHECK(has_kill(corral::decide(s, p, kT0 + 100 * kMs), 7, KillReason::graceful_timeout));
}

TEST_CASE("an idle worker at max_requests is recycled and no longer counts as spare") {
  auto s = snapshot(2, 2, 8, 64);
  s.spec.max_requests = 1;
  auto done = worker(1, CORRAL_SLOT_IDLE);
  done.requests = 1;
  s.workers = {done, worker(2, CORRAL_SLOT_IDLE)};
  Pacing p = running_pacing();
  auto d = corral::decide(s, p, kT0);
  REQUIRE(d.stops.size() == 1);
  CHECK(d.stops[0] == std::make_pair(pid_t{1}, StopReason::max_requests));
  CHECK(d.spawn == 1);
}

TEST_CASE("a holder of the accept mutex that blocks a waiting queue is replaced after 3 s") {
  auto s = snapshot(2, 1, 8, 64);
  s.stuck_checks = true;
  s.queued = 3;
  auto holder = worker(1, CORRAL_SLOT_IDLE);
  holder.lock_held = true;
  holder.lock_since = kT0 - 5 * kMs;
  s.workers = {holder, worker(2, CORRAL_SLOT_IDLE)};
  Pacing p = running_pacing();
  CHECK(corral::decide(s, p, kT0).kills.empty());
  CHECK(corral::decide(s, p, kT0 + 1000 * kMs).kills.empty());
  auto d = corral::decide(s, p, kT0 + corral::kStuckHolder);
  CHECK(has_kill(d, 1, KillReason::stuck_lock));
}

TEST_CASE(
    "a lock-free job (auto on one listener) never has a stuck holder, whatever its slots say") {
  // maintain.cpp sets stuck_checks for pipe and fcntl only: with no mutex, a slot that
  // claims HELD is a lie or garbage, and connections that wait are not its doing.
  auto s = snapshot(2, 1, 8, 64);
  s.stuck_checks = false;
  s.queued = 3;
  auto liar = worker(1, CORRAL_SLOT_IDLE);
  liar.lock_held = true;
  liar.lock_since = kT0 - 60 * 1000 * kMs;
  s.workers = {liar, worker(2, CORRAL_SLOT_IDLE)};
  Pacing p = running_pacing();
  for (int i = 0; i < 10; ++i) {
    auto d = corral::decide(s, p, kT0 + i * corral::kStuckHolder);
    CHECK_FALSE(has_kill(d, 1, KillReason::stuck_lock));
  }
}

TEST_CASE("holding the mutex while idle and nothing waits is normal") {
  auto s = snapshot(2, 1, 8, 64);
  s.stuck_checks = true;
  auto holder = worker(1, CORRAL_SLOT_IDLE);
  holder.lock_held = true;
  holder.lock_since = kT0;
  s.workers = {holder};
  Pacing p = running_pacing();
  for (int i = 0; i < 10; ++i) CHECK(corral::decide(s, p, kT0 + i * 1000 * kMs).kills.empty());
}

TEST_CASE("garbage in a slot reads as what our own phase says") {
  auto s = snapshot(2, 2, 8, 64);
  s.workers = {worker(1, CORRAL_SLOT_EMPTY), worker(2, CORRAL_SLOT_STOPPING)};
  Pacing p = running_pacing();
  auto d = corral::decide(s, p, kT0);
  CHECK(d.idle == 2);
  CHECK(d.spawn == 0);
}

TEST_CASE("old-generation workers finishing after a reload do not count against max") {
  auto s = snapshot(4, 2, 8, 4);
  for (pid_t pid = 1; pid <= 4; ++pid) {
    auto w = worker(pid, CORRAL_SLOT_BUSY, WorkerPhase::stopping);
    w.current = false;
    w.kill_at = kT0 + 30000 * kMs;
    s.workers.push_back(w);
  }
  Pacing p;  // the reload's new job: workers.start applies
  CHECK(corral::decide(s, p, kT0).spawn == 4);
}

TEST_CASE("plain mode: a copy that lived 1 s is up; exactly workers.start copies") {
  auto s = snapshot(3, 0, 0, 3, corral::Mode::plain);
  auto young = worker(1, CORRAL_SLOT_RUNNING, WorkerPhase::starting);
  young.started = kT0 - 100 * kMs;
  auto old = worker(2, CORRAL_SLOT_RUNNING, WorkerPhase::starting);
  old.started = kT0 - 1500 * kMs;
  s.workers = {young, old};
  Pacing p = running_pacing();
  auto d = corral::decide(s, p, kT0);
  CHECK(d.spawn == 1);
  CHECK(d.became_ready == std::vector<pid_t>{2});
  CHECK(d.wake_at <= young.started + corral::kPlainCrashWindow);
}

// ---------------------------------------------------------------------------
// The simulation: a model pool driven by random events, with decide() in the loop.

namespace {

struct SimWorker {
  WorkerView v;
  std::uint64_t ready_at = 0;  // when it turns idle (if it starts fine)
  bool crashes = false;
};

struct Sim {
  std::mt19937_64 rng;
  PoolSnapshot s;
  Pacing pacing;
  std::map<pid_t, SimWorker> table;
  pid_t next_pid = 100;
  std::uint64_t now = kT0;
  std::deque<std::uint64_t> spawn_times;  // starts outside the configured workers.start
  unsigned start_allowance = 0;

  explicit Sim(std::uint64_t seed) : rng(seed) {
    std::uniform_int_distribution<unsigned> pick(1, 12);
    unsigned max = pick(rng) * 4;
    unsigned min_spare = std::min(max, pick(rng) - 1);
    unsigned max_spare = std::min(max, min_spare + pick(rng));
    unsigned start = std::min(max, pick(rng));
    s = snapshot(start, min_spare, max_spare, max,
                 rng() % 4 == 0 ? corral::Mode::inetd : corral::Mode::prefork);
    s.spec.max_requests = rng() % 3 == 0 ? rng() % 5 + 1 : 0;
    s.busy_timeout =
        rng() % 2 == 0 ? corral::Duration(std::chrono::seconds(2)) : corral::Duration(0);
    s.stuck_checks = rng() % 2 == 0;
    // memory.budget: sometimes, with workers of random sizes (some not sampled yet).
    if (rng() % 3 == 0) s.memory.budget = (rng() % 20 + 1) * 100;
    start_allowance = start;
  }

  unsigned live_current() const {
    unsigned n = 0;
    for (const auto& [pid, w] : table)
      n += w.v.current && w.v.phase != WorkerPhase::stopping && w.v.phase != WorkerPhase::killing;
    return n;
  }

  void apply(const Decision& d) {
    std::set<pid_t> known;
    for (const auto& w : s.workers) known.insert(w.pid);
    for (pid_t pid : d.became_ready) REQUIRE(known.count(pid) == 1);
    for (const auto& [pid, why] : d.stops) REQUIRE(known.count(pid) == 1);
    for (const auto& [pid, why] : d.kills) REQUIRE(known.count(pid) == 1);
    if (s.memory.budget != 0 && d.spawn > 0) {
      // No start crosses the budget (a new worker at the median), but for the floor: a
      // pool with no staying worker may start one.
      unsigned staying = 0;
      for (const auto& w : s.workers) {
        const bool leaving =
            std::any_of(d.stops.begin(), d.stops.end(),
                        [&](auto& x) { return x.first == w.pid; }) ||
            std::any_of(d.kills.begin(), d.kills.end(), [&](auto& x) { return x.first == w.pid; });
        staying += w.current && w.phase != WorkerPhase::stopping &&
                   w.phase != WorkerPhase::killing && !leaving;
      }
      const std::uint64_t need = std::max<std::uint64_t>(d.median_bytes, 1);
      if (staying > 0 || d.spawn > 1) REQUIRE(d.pool_bytes + d.spawn * need <= s.memory.budget);
    }
    for (const auto& [pid, why] : d.stops) {
      if (why != StopReason::budget) continue;
      // Never the last one staying.
      REQUIRE(std::count_if(s.workers.begin(), s.workers.end(), [](const WorkerView& w) {
                return w.current && w.phase != WorkerPhase::stopping &&
                       w.phase != WorkerPhase::killing;
              }) > 1);
    }
    for (pid_t pid : d.became_ready) table[pid].v.phase = WorkerPhase::up;
    for (const auto& [pid, why] : d.stops) {
      auto& w = table[pid].v;
      if (w.phase == WorkerPhase::up || w.phase == WorkerPhase::starting) {
        w.phase = WorkerPhase::stopping;
        w.kill_at = now + 500 * kMs;
      }
    }
    for (const auto& [pid, why] : d.kills) table[pid].v.phase = WorkerPhase::killing;
    for (unsigned i = 0; i < d.spawn; ++i) {
      SimWorker w;
      w.v.pid = next_pid++;
      w.v.slot = static_cast<unsigned>(w.v.pid);
      w.v.phase = WorkerPhase::starting;
      w.v.state = CORRAL_SLOT_STARTING;
      w.v.started = now;
      w.v.rss_bytes = s.memory.budget != 0 && rng() % 4 != 0 ? rng() % 100 + 10 : 0;
      w.ready_at = now + (rng() % 40) * kMs;
      w.crashes = rng() % 20 == 0;
      table[w.v.pid] = w;
      if (start_allowance > 0) {
        --start_allowance;
      } else {
        spawn_times.push_back(now);
      }
    }
    // Never above max for the current generation.
    REQUIRE(live_current() <= s.spec.max);
    // A bounded spawn rate: kSpawnBurst per window, whatever the events.
    while (!spawn_times.empty() && now - spawn_times.front() >= corral::kSpawnWindow)
      spawn_times.pop_front();
    REQUIRE(spawn_times.size() <= corral::kSpawnBurst);
  }

  // The world moves: workers come up, take connections, finish, crash, get reaped.
  void world(bool load) {
    unsigned busy_now = 0;
    for (auto it = table.begin(); it != table.end();) {
      auto& w = it->second;
      bool gone = false;
      if (w.v.phase == WorkerPhase::killing) gone = rng() % 2 == 0;
      if (w.v.phase == WorkerPhase::stopping && (w.v.state != CORRAL_SLOT_BUSY || rng() % 4 == 0))
        gone = rng() % 2 == 0;
      if (w.v.state == CORRAL_SLOT_STARTING && now >= w.ready_at) {
        if (w.crashes) {
          gone = true;
        } else {
          w.v.state = CORRAL_SLOT_IDLE;
          w.v.state_since = now;
        }
      }
      if (!gone && w.v.state == CORRAL_SLOT_IDLE && load && rng() % 3 == 0) {
        w.v.state = CORRAL_SLOT_BUSY;
        w.v.state_since = now;
      } else if (!gone && w.v.state == CORRAL_SLOT_BUSY && rng() % 3 == 0) {
        ++w.v.requests;
        if (s.mode == corral::Mode::inetd) {
          gone = true;  // the program ends with its connection
        } else {
          w.v.state = CORRAL_SLOT_IDLE;
          w.v.state_since = now;
        }
      }
      if (!gone && load && rng() % 500 == 0) {
        // A worker that lies in its slot.
        w.v.state = static_cast<corral_slot_state>(rng() % 6);
        w.v.lock_held = rng() % 2 == 0;
        w.v.lock_since = rng();
        w.v.state_since = rng();
      }
      if (!gone && w.v.state == CORRAL_SLOT_BUSY) ++busy_now;
      it = gone ? table.erase(it) : std::next(it);
    }
    s.queued = load ? static_cast<unsigned>(rng() % 8) : 0;
  }

  Decision step(bool load) {
    now += (rng() % 20 + 1) * kMs;
    world(load);
    if (load && rng() % 400 == 0) {
      // A reload: every worker becomes old generation and is asked to stop.
      for (auto& [pid, w] : table) {
        w.v.current = false;
        if (w.v.phase == WorkerPhase::up || w.v.phase == WorkerPhase::starting) {
          w.v.phase = WorkerPhase::stopping;
          w.v.kill_at = now + 300 * kMs;
        }
      }
      pacing = Pacing{};
      start_allowance = s.spec.start;
    }
    s.workers.clear();
    for (const auto& [pid, w] : table) s.workers.push_back(w.v);
    auto d = corral::decide(s, pacing, now);
    apply(d);
    return d;
  }
};

}  // namespace

TEST_CASE("simulation: thousands of random event sequences keep the pool's invariants") {
  for (std::uint64_t seed = 1; seed <= 300; ++seed) {
    CAPTURE(seed);
    Sim sim(seed);
    for (int i = 0; i < 300; ++i) sim.step(true);  // load (and lies, crashes, reloads)
    // The load is gone; lies are repaired (a real worker rewrites its slot) and the
    // pool must settle within the spare bounds once the retire hysteresis has passed.
    for (auto& [pid, w] : sim.table) {
      if (w.v.state != CORRAL_SLOT_STARTING) w.v.state = CORRAL_SLOT_IDLE;
      w.v.lock_held = false;
    }
    Decision last;
    const std::uint64_t settle_until = sim.now + corral::kRetireHysteresis + 30000 * kMs;
    while (sim.now < settle_until) {
      last = sim.step(false);
      if (last.wake_at == 0 && last.spawn == 0 && last.stops.empty() && last.kills.empty())
        sim.now += 100 * kMs;  // nothing asked: time passes, as the periodic tick would
    }
    const auto& spec = sim.s.spec;
    // (A budget may hold fewer than min_spare: then it says so.)
    CHECK((last.idle >= std::min(spec.min_spare, spec.max) || last.budget_limited));
    CHECK(last.idle <= std::max(spec.max_spare, spec.min_spare));
  }
}

TEST_CASE("a holder seen bypassed for a moment (it is handing the token back) is not stuck") {
  auto s = snapshot(2, 1, 8, 64);
  s.stuck_checks = true;
  auto holder = worker(1, CORRAL_SLOT_IDLE);
  holder.lock_held = true;
  holder.lock_since = kT0 - 5 * kMs;
  auto other = worker(2, CORRAL_SLOT_IDLE);
  s.workers = {holder, other};
  Pacing p = running_pacing();
  CHECK(corral::decide(s, p, kT0).kills.empty());
  // Long quiet hold, then a connection: another worker accepted (its count rose) at the
  // very moment of a look, while the holder's slot still says HELD.
  s.workers[1].requests = 1;
  CHECK(corral::decide(s, p, kT0 + 10000 * kMs).kills.empty());
  // The holder's slot catches up: it served one too and released. Never killed.
  s.workers[0].requests = 1;
  s.workers[0].lock_held = false;
  CHECK(corral::decide(s, p, kT0 + 10001 * kMs).kills.empty());
}

TEST_CASE("a holder bypassed for good is replaced once the bypass has lasted") {
  auto s = snapshot(2, 1, 8, 64);
  s.stuck_checks = true;
  auto holder = worker(1, CORRAL_SLOT_IDLE);
  holder.lock_held = true;
  holder.lock_since = kT0 - 5 * kMs;
  s.workers = {holder, worker(2, CORRAL_SLOT_IDLE)};
  Pacing p = running_pacing();
  CHECK(corral::decide(s, p, kT0).kills.empty());
  s.workers[1].requests = 5;
  CHECK(corral::decide(s, p, kT0 + 4000 * kMs).kills.empty());
  auto d = corral::decide(s, p, kT0 + 4000 * kMs + corral::kBypassConfirm);
  CHECK(has_kill(d, 1, KillReason::stuck_lock));
}

TEST_CASE("memory: above hard_max_rss killed in any state; above max_rss retired once idle") {
  auto s = snapshot(2, 0, 8, 64);
  s.memory.max_rss = 100;
  s.memory.hard_max_rss = 1000;
  auto fat = worker(1, CORRAL_SLOT_BUSY);
  fat.rss_bytes = 2000;
  auto big_busy = worker(2, CORRAL_SLOT_BUSY);
  big_busy.rss_bytes = 500;
  auto big_idle = worker(3, CORRAL_SLOT_IDLE);
  big_idle.rss_bytes = 500;
  s.workers = {fat, big_busy, big_idle};
  Pacing p = running_pacing();
  auto d = corral::decide(s, p, kT0);
  CHECK(has_kill(d, 1, KillReason::memory));
  REQUIRE(d.stops.size() == 1);
  CHECK(d.stops[0] == std::make_pair(pid_t{3}, StopReason::memory));  // not the busy one
}

TEST_CASE("lifetime: stopped once idle, killed at lifetime + graceful_timeout if still busy") {
  auto s = snapshot(2, 0, 8, 64);
  s.graceful_timeout = std::chrono::seconds(2);
  auto idle = worker(1, CORRAL_SLOT_IDLE);
  idle.retire_at = kT0 - kMs;
  auto busy = worker(2, CORRAL_SLOT_BUSY);
  busy.retire_at = kT0 - kMs;
  auto young = worker(3, CORRAL_SLOT_IDLE);
  young.retire_at = kT0 + 500 * kMs;
  s.workers = {idle, busy, young};
  Pacing p = running_pacing();
  auto d = corral::decide(s, p, kT0);
  REQUIRE(d.stops.size() == 1);
  CHECK(d.stops[0] == std::make_pair(pid_t{1}, StopReason::max_lifetime));
  CHECK(d.kills.empty());
  CHECK(d.wake_at <= kT0 + 500 * kMs);
  auto later = corral::decide(s, p, kT0 + 2000 * kMs);
  CHECK(has_kill(later, 2, KillReason::max_lifetime));
}

TEST_CASE("each worker's own max_requests draw decides its recycling") {
  auto s = snapshot(2, 0, 8, 64);
  s.spec.max_requests = 10;
  auto a = worker(1, CORRAL_SLOT_IDLE);
  a.requests = 12;
  a.requests_limit = 15;  // drew 10 + 5
  auto b = worker(2, CORRAL_SLOT_IDLE);
  b.requests = 12;
  b.requests_limit = 11;
  s.workers = {a, b};
  Pacing p = running_pacing();
  auto d = corral::decide(s, p, kT0);
  REQUIRE(d.stops.size() == 1);
  CHECK(d.stops[0].first == 2);
}

// ---------------------------------------------------------------------------
// memory.budget

namespace {

WorkerView sized(pid_t pid, corral_slot_state state, std::uint64_t rss,
                 WorkerPhase phase = WorkerPhase::up) {
  auto w = worker(pid, state, phase);
  w.rss_bytes = rss;
  return w;
}

std::vector<pid_t> budget_stops(const Decision& d) {
  std::vector<pid_t> out;
  for (const auto& [pid, why] : d.stops)
    if (why == StopReason::budget) out.push_back(pid);
  return out;
}

}  // namespace

TEST_CASE("budget: over it, the largest idle workers go first until the rest fit") {
  auto s = snapshot(4, 1, 8, 8);
  s.memory.budget = 1000;
  s.workers = {sized(1, CORRAL_SLOT_IDLE, 200), sized(2, CORRAL_SLOT_IDLE, 400),
               sized(3, CORRAL_SLOT_BUSY, 500), sized(4, CORRAL_SLOT_IDLE, 300)};
  Pacing p = running_pacing();
  auto d = corral::decide(s, p, kT0);
  // 1400 in all: the 400 goes (1000 left, which fits); the busy 500 is never cut.
  CHECK(budget_stops(d) == std::vector<pid_t>{2});
  CHECK(d.pool_bytes == 1400);
  CHECK(d.spawn == 0);
  CHECK(d.kills.empty());
}

TEST_CASE("budget: no start that would cross it, a new worker counted at the median") {
  auto s = snapshot(2, 4, 8, 8);  // min_spare 4 wants two more
  s.memory.budget = 1000;
  s.workers = {sized(1, CORRAL_SLOT_IDLE, 300), sized(2, CORRAL_SLOT_IDLE, 300)};
  Pacing p = running_pacing();
  auto d = corral::decide(s, p, kT0);
  CHECK(d.median_bytes == 300);
  CHECK(d.spawn == 1);  // 600 + 300 fits, 600 + 600 does not
  CHECK(d.budget_limited);
  CHECK(d.budget_wanted == 2);
  // Room for both: nothing held back.
  s.memory.budget = 1200;
  Pacing q = running_pacing();
  d = corral::decide(s, q, kT0);
  CHECK(d.spawn == 2);
  CHECK_FALSE(d.budget_limited);
  CHECK(d.budget_room);
}

TEST_CASE("budget: a stopping worker's memory counts until it is reaped") {
  auto s = snapshot(2, 2, 8, 8);
  s.memory.budget = 1000;
  s.workers = {sized(1, CORRAL_SLOT_IDLE, 400),
               sized(2, CORRAL_SLOT_STOPPING, 500, WorkerPhase::stopping)};
  Pacing p = running_pacing();
  auto d = corral::decide(s, p, kT0);
  CHECK(d.spawn == 0);  // 900 + a median of 450 would cross 1000
  CHECK(d.budget_limited);
  CHECK(budget_stops(d).empty());  // the staying one alone fits
}

TEST_CASE("budget: an unsampled worker counts at the median; all gone, the last median") {
  auto s = snapshot(2, 2, 8, 8);
  s.memory.budget = 1000;
  s.workers = {sized(1, CORRAL_SLOT_IDLE, 400),
               sized(2, CORRAL_SLOT_STARTING, 0, WorkerPhase::starting)};
  Pacing p = running_pacing();
  auto d = corral::decide(s, p, kT0);
  CHECK(d.pool_bytes == 800);
  CHECK(p.budget_median == 400);
  // Every worker exits at once: a pool with none may start one whatever the budget, and
  // the rest are held to the last median.
  s.workers.clear();
  s.memory.budget = 100;
  d = corral::decide(s, p, kT0 + 10 * kMs);
  CHECK(d.spawn == 1);
  CHECK(d.budget_limited);
}

TEST_CASE("budget: a worker still starting counts at the median of the ready ones") {
  // A worker loading 60 MiB was sampled at 43 while a ready one had 64: the starting
  // one's size is not what a worker needs. Taken at its word, the pool retired the ready
  // one, found room for another at 43, started it, and so on (a spin, in test_cgroups).
  auto s = snapshot(1, 2, 4, 4);
  s.memory.budget = 100;
  s.workers = {sized(1, CORRAL_SLOT_IDLE, 64),
               sized(2, CORRAL_SLOT_STARTING, 43, WorkerPhase::starting)};
  Pacing p = running_pacing();
  auto d = corral::decide(s, p, kT0);
  CHECK(d.median_bytes == 64);
  CHECK(d.pool_bytes == 128);                       // the starting one at 64
  CHECK(budget_stops(d) == std::vector<pid_t>{1});  // over: the idle one goes
  CHECK(d.spawn == 0);
  // The retired one is gone, the other still starting: still no room for a third.
  s.workers = {sized(2, CORRAL_SLOT_STARTING, 50, WorkerPhase::starting)};
  d = corral::decide(s, p, kT0 + 100 * kMs);
  CHECK(d.pool_bytes == 64);
  CHECK(d.spawn == 0);
  CHECK(d.budget_limited);
  // Ready at its full size: one worker, and it stays one.
  s.workers = {sized(2, CORRAL_SLOT_IDLE, 76)};
  d = corral::decide(s, p, kT0 + 200 * kMs);
  CHECK(d.median_bytes == 76);
  CHECK(d.spawn == 0);
  CHECK(budget_stops(d).empty());
}

TEST_CASE("budget: spare-driven starts wait for the first ready worker's size") {
  auto s = snapshot(1, 2, 4, 4);
  s.memory.budget = 100;
  s.workers = {sized(1, CORRAL_SLOT_STARTING, 5, WorkerPhase::starting)};
  Pacing p = running_pacing();
  auto d = corral::decide(s, p, kT0);
  CHECK(d.spawn == 0);            // min_spare wants one more; its size is not known yet
  CHECK_FALSE(d.budget_limited);  // not a limit: a wait for a measurement
  s.workers = {sized(1, CORRAL_SLOT_IDLE, 30)};
  d = corral::decide(s, p, kT0 + 100 * kMs);
  CHECK(d.spawn == 1);  // 30 + 30 fits in 100
  // The configured workers.start is not held back.
  Pacing q;
  auto t = snapshot(3, 0, 8, 8);
  t.memory.budget = 1000;
  d = corral::decide(t, q, kT0);
  CHECK(d.spawn == 3);
}

TEST_CASE("budget: the last staying worker is never retired for it; no spin when it is full") {
  auto s = snapshot(1, 2, 8, 8);
  s.memory.budget = 100;
  s.workers = {sized(1, CORRAL_SLOT_IDLE, 500)};
  Pacing p = running_pacing();
  auto d = corral::decide(s, p, kT0);
  CHECK(budget_stops(d).empty());
  CHECK(d.spawn == 0);
  CHECK(d.budget_limited);
  CHECK_FALSE(d.budget_room);  // and not even one more would fit (until it shrinks)
  CHECK_FALSE(p.start_pending);
  // It asks for no early wake-up of its own: the memory sampling paces the next look.
  CHECK(d.wake_at == 0);
  // Twice too big: still one stays; the busy one is not cut, the idle one goes.
  s.workers = {sized(1, CORRAL_SLOT_IDLE, 500), sized(2, CORRAL_SLOT_BUSY, 500)};
  d = corral::decide(s, p, kT0 + kMs);
  CHECK(budget_stops(d) == std::vector<pid_t>{1});
}

TEST_CASE("budget: not applied to plain mode, nor without one") {
  auto s = snapshot(3, 0, 8, 8, corral::Mode::plain);
  s.memory.budget = 10;
  s.workers = {sized(1, CORRAL_SLOT_RUNNING, 500)};
  Pacing p = running_pacing();
  auto d = corral::decide(s, p, kT0);
  CHECK(d.spawn == 2);
  CHECK_FALSE(d.budget_limited);
  auto t = snapshot(4, 0, 8, 8);
  t.workers = {sized(1, CORRAL_SLOT_IDLE, 1ULL << 40)};
  Pacing q;
  d = corral::decide(t, q, kT0);
  CHECK(d.spawn == 3);
  CHECK(d.pool_bytes == 0);
}
