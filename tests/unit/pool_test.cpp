// lib/supervisor/pool: the spare-pool decision as a function from counts to actions
// (Apache's perform_idle_server_maintenance without the side effects).
#include "supervisor/pool.h"

#include <doctest/doctest.h>

namespace {

corral::JobConfig job(corral::Mode mode, unsigned start, unsigned min_spare, unsigned max_spare,
                      unsigned max) {
  corral::JobConfig j;
  j.name = "web";
  j.mode = mode;
  j.workers.start = start;
  j.workers.min_spare = min_spare;
  j.workers.max_spare = max_spare;
  j.workers.max = max;
  return j;
}

corral::PoolCounts counts(unsigned starting, unsigned idle, unsigned busy) {
  corral::PoolCounts c;
  c.starting = starting;
  c.idle = idle;
  c.busy = busy;
  return c;
}

}  // namespace

TEST_CASE("the initial start spawns workers.start") {
  auto j = job(corral::Mode::prefork, 4, 2, 8, 64);
  auto a = corral::plan_pool(j, counts(0, 0, 0), true);
  CHECK(a.spawn == 4);
  CHECK(a.retire == 0);
}

TEST_CASE("the initial start tops up to workers.start, counting what already runs") {
  auto j = job(corral::Mode::prefork, 4, 2, 8, 64);
  CHECK(corral::plan_pool(j, counts(1, 1, 0), true).spawn == 2);
  CHECK(corral::plan_pool(j, counts(0, 4, 0), true).spawn == 0);
}

TEST_CASE("the initial start still honours min_spare when it is larger than start") {
  auto j = job(corral::Mode::prefork, 1, 3, 8, 64);
  CHECK(corral::plan_pool(j, counts(0, 0, 0), true).spawn == 3);
}

TEST_CASE("after the start, workers.start no longer applies") {
  auto j = job(corral::Mode::prefork, 4, 2, 8, 64);
  // Two idle workers meet min_spare: nothing to do even though start is 4.
  auto a = corral::plan_pool(j, counts(0, 2, 0), false);
  CHECK(a.spawn == 0);
  CHECK(a.retire == 0);
}

TEST_CASE("refill to min_spare when workers become busy") {
  auto j = job(corral::Mode::prefork, 4, 2, 8, 64);
  CHECK(corral::plan_pool(j, counts(0, 0, 4), false).spawn == 2);
  CHECK(corral::plan_pool(j, counts(0, 1, 3), false).spawn == 1);
}

TEST_CASE("workers still starting count as spare: no overshoot while they start") {
  auto j = job(corral::Mode::prefork, 4, 2, 8, 64);
  CHECK(corral::plan_pool(j, counts(2, 0, 4), false).spawn == 0);
  CHECK(corral::plan_pool(j, counts(1, 0, 4), false).spawn == 1);
}

TEST_CASE("never plans a total above workers.max") {
  auto j = job(corral::Mode::prefork, 4, 5, 8, 10);
  CHECK(corral::plan_pool(j, counts(0, 0, 8), false).spawn == 2);  // wants 5, room for 2
  CHECK(corral::plan_pool(j, counts(0, 0, 10), false).spawn == 0);
  // Even when the counts already exceed max (a smaller max after a reload).
  CHECK(corral::plan_pool(j, counts(0, 0, 12), false).spawn == 0);
  // And on the initial start with start > max room.
  auto k = job(corral::Mode::prefork, 20, 2, 8, 6);
  CHECK(corral::plan_pool(k, counts(0, 0, 0), true).spawn == 6);
}

TEST_CASE("retire idle workers above max_spare") {
  auto j = job(corral::Mode::prefork, 4, 2, 8, 64);
  auto a = corral::plan_pool(j, counts(0, 11, 3), false);
  CHECK(a.spawn == 0);
  CHECK(a.retire == 3);
  CHECK(corral::plan_pool(j, counts(0, 8, 3), false).retire == 0);
  // Starting workers are not idle yet and are not retired.
  CHECK(corral::plan_pool(j, counts(4, 8, 0), false).retire == 0);
}

TEST_CASE("inetd mode keeps spare acceptors the same way, within max") {
  auto j = job(corral::Mode::inetd, 2, 2, 4, 5);
  CHECK(corral::plan_pool(j, counts(0, 0, 0), true).spawn == 2);
  CHECK(corral::plan_pool(j, counts(0, 0, 4), false).spawn == 1);  // max 5 running programs
  CHECK(corral::plan_pool(j, counts(0, 0, 5), false).spawn == 0);
  CHECK(corral::plan_pool(j, counts(0, 6, 0), false).retire == 2);
}

TEST_CASE("plain mode keeps exactly workers.start copies") {
  // Spare bounds do not apply: all copies count as running (busy).
  auto j = job(corral::Mode::plain, 3, 2, 8, 64);
  auto a = corral::plan_pool(j, counts(0, 0, 0), true);
  CHECK(a.spawn == 3);
  CHECK(a.retire == 0);
  CHECK(corral::plan_pool(j, counts(0, 0, 3), false).spawn == 0);
  CHECK(corral::plan_pool(j, counts(0, 0, 3), false).retire == 0);
  CHECK(corral::plan_pool(j, counts(0, 0, 1), false).spawn == 2);  // a copy died
  CHECK(corral::plan_pool(j, counts(1, 0, 1), false).spawn == 1);
  // min_spare does not make plain mode spawn more.
  auto k = job(corral::Mode::plain, 1, 5, 8, 64);
  CHECK(corral::plan_pool(k, counts(0, 0, 1), false).spawn == 0);
}
