// lib/supervisor/lifecycle: the worker and job transition tables.
#include "supervisor/lifecycle.h"

#include <doctest/doctest.h>

#include <initializer_list>
#include <string>

using corral::JobAction;
using corral::JobEvent;
using corral::JobPhase;
using corral::WorkerAction;
using corral::WorkerEvent;
using corral::WorkerPhase;

TEST_CASE("a starting worker becomes up once, and only then resets the failure count") {
  auto t = corral::transition_worker(WorkerPhase::starting, WorkerEvent::ready);
  CHECK(t.next == WorkerPhase::up);
  CHECK(t.action == WorkerAction::mark_ready);
  auto again = corral::transition_worker(WorkerPhase::up, WorkerEvent::ready);
  CHECK(again.next == WorkerPhase::up);
  CHECK(again.action == WorkerAction::none);
}

TEST_CASE("a stop is sent once; the deadline or a kill escalates to the one kill path") {
  auto stop = corral::transition_worker(WorkerPhase::up, WorkerEvent::stop);
  CHECK(stop.next == WorkerPhase::stopping);
  CHECK(stop.action == WorkerAction::signal_stop);
  auto twice = corral::transition_worker(WorkerPhase::stopping, WorkerEvent::stop);
  CHECK(twice.action == WorkerAction::none);
  auto deadline = corral::transition_worker(WorkerPhase::stopping, WorkerEvent::deadline);
  CHECK(deadline.next == WorkerPhase::killing);
  CHECK(deadline.action == WorkerAction::kill_group);
}

TEST_CASE("an inetd program left to finish gets a deadline but no signal") {
  auto t = corral::transition_worker(WorkerPhase::up, WorkerEvent::release);
  CHECK(t.next == WorkerPhase::stopping);
  CHECK(t.action == WorkerAction::arm_deadline);
}

TEST_CASE("a worker being killed is never signalled again, whatever comes") {
  for (int e = 0; e < corral::kWorkerEvents; ++e) {
    auto t = corral::transition_worker(WorkerPhase::killing, static_cast<WorkerEvent>(e));
    CHECK(t.next == WorkerPhase::killing);
    CHECK(t.action == WorkerAction::none);
  }
}

TEST_CASE("no deadline applies to a worker nobody asked to stop") {
  for (auto p : {WorkerPhase::starting, WorkerPhase::up}) {
    auto t = corral::transition_worker(p, WorkerEvent::deadline);
    CHECK(t.next == p);
    CHECK(t.action == WorkerAction::none);
  }
}

TEST_CASE("failures back off; a worker coming up ends the backoff") {
  auto f = corral::transition_job(JobPhase::running, JobEvent::failure);
  CHECK(f.next == JobPhase::backing_off);
  CHECK(f.action == JobAction::back_off);
  auto up = corral::transition_job(JobPhase::backing_off, JobEvent::worker_up);
  CHECK(up.next == JobPhase::running);
  CHECK(up.action == JobAction::reset_failures);
}

TEST_CASE("a failed job stays failed until it is stopped or removed") {
  for (auto e :
       {JobEvent::worker_up, JobEvent::failure, JobEvent::soft_failure, JobEvent::give_up}) {
    auto t = corral::transition_job(JobPhase::failed, e);
    CHECK(t.next == JobPhase::failed);
    CHECK(t.action == JobAction::none);
  }
  CHECK(corral::transition_job(JobPhase::failed, JobEvent::remove).next == JobPhase::removed);
  CHECK(corral::transition_job(JobPhase::failed, JobEvent::stop).next == JobPhase::draining);
}

TEST_CASE("draining is final, and only phases that may start workers do") {
  for (int e = 0; e < corral::kJobEvents; ++e)
    CHECK(corral::transition_job(JobPhase::draining, static_cast<JobEvent>(e)).next ==
          JobPhase::draining);
  CHECK(corral::may_spawn(JobPhase::running));
  CHECK(corral::may_spawn(JobPhase::backing_off));
  CHECK_FALSE(corral::may_spawn(JobPhase::failed));
  CHECK_FALSE(corral::may_spawn(JobPhase::draining));
  CHECK_FALSE(corral::may_spawn(JobPhase::removed));
}

TEST_CASE("phase names are the ones status and the hand-over use") {
  CHECK(std::string(corral::to_string(JobPhase::backing_off)) == "backing-off");
  CHECK(std::string(corral::to_string(WorkerPhase::killing)) == "killing");
}
