// lib/metrics/health: the one rule behind `corral status --check` and GET /readyz.
#include "metrics/health.h"

#include <doctest/doctest.h>

namespace {
corral::JobHealthInput web() {
  corral::JobHealthInput in;
  in.name = "web";
  in.start = 4;
  in.max = 4;
  return in;
}
}  // namespace

TEST_CASE("a running pool with a ready worker is healthy and says nothing") {
  auto in = web();
  in.idle = 2;
  in.busy = 1;
  auto v = corral::judge_job_health(in);
  CHECK(v.ready);
  CHECK(v.line.empty());
}

TEST_CASE("a saturated pool is ready, and says so") {
  auto in = web();
  in.busy = 4;
  auto v = corral::judge_job_health(in);
  CHECK(v.ready);
  CHECK(v.line ==
        "job web: saturated: all 4 workers busy at workers.max 4 (ready; new "
        "connections wait in the backlog)");
}

TEST_CASE("backing off, failed, draining and stopping are not ready") {
  auto in = web();
  in.idle = 4;
  in.state = corral::JobHealthState::backing_off;
  in.retry_in = 1.25;
  auto v = corral::judge_job_health(in);
  CHECK_FALSE(v.ready);
  CHECK(v.line == "job web: backing off after failures (next try in 1.2s)");
  in.state = corral::JobHealthState::failed;
  CHECK_FALSE(corral::judge_job_health(in).ready);
  in.state = corral::JobHealthState::draining;
  CHECK(corral::judge_job_health(in).line == "job web: draining");
  in.state = corral::JobHealthState::stopping;
  CHECK_FALSE(corral::judge_job_health(in).ready);
}

TEST_CASE("a pool that has not started its workers is not ready") {
  auto in = web();
  in.starting = 4;
  auto v = corral::judge_job_health(in);
  CHECK_FALSE(v.ready);
  CHECK(v.line == "job web: starting (no worker ready yet, 4 starting)");
  in.start = 0;  // nothing to start: ready with no worker at all
  CHECK(corral::judge_job_health(in).ready);
}

TEST_CASE("plain mode counts running copies against workers.start") {
  auto in = web();
  in.plain = true;
  in.running = 3;
  CHECK_FALSE(corral::judge_job_health(in).ready);
  CHECK(corral::judge_job_health(in).line == "job web: starting (3 of 4 copies running)");
  in.running = 4;
  CHECK(corral::judge_job_health(in).ready);
}
