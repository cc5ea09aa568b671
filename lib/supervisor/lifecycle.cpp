#include "supervisor/lifecycle.h"

namespace corral {
namespace {

using WP = WorkerPhase;
using WA = WorkerAction;

// kWorkerTable[phase][event]. Events: ready, stop, release, deadline, kill.
constexpr WorkerTransition kWorkerTable[kWorkerPhases][kWorkerEvents] = {
    // starting
    {{WP::up, WA::mark_ready},
     {WP::stopping, WA::signal_stop},
     {WP::stopping, WA::arm_deadline},
     {WP::starting, WA::none},  // no deadline runs before a stop
     {WP::killing, WA::kill_group}},
    // up
    {{WP::up, WA::none},
     {WP::stopping, WA::signal_stop},
     {WP::stopping, WA::arm_deadline},
     {WP::up, WA::none},
     {WP::killing, WA::kill_group}},
    // stopping: asked once; the deadline or a kill escalates
    {{WP::stopping, WA::none},
     {WP::stopping, WA::none},
     {WP::stopping, WA::none},
     {WP::killing, WA::kill_group},
     {WP::killing, WA::kill_group}},
    // killing: nothing more to do but reap
    {{WP::killing, WA::none},
     {WP::killing, WA::none},
     {WP::killing, WA::none},
     {WP::killing, WA::none},
     {WP::killing, WA::none}},
};

using JP = JobPhase;
using JA = JobAction;

// kJobTable[phase][event]. Events: worker_up, failure, soft_failure, give_up, stop, remove.
constexpr JobTransition kJobTable[kJobPhases][kJobEvents] = {
    // running
    {{JP::running, JA::reset_failures},
     {JP::backing_off, JA::back_off},
     {JP::backing_off, JA::back_off},
     {JP::failed, JA::give_up},
     {JP::draining, JA::stop_workers},
     {JP::removed, JA::stop_workers}},
    // backing_off
    {{JP::running, JA::reset_failures},
     {JP::backing_off, JA::back_off},
     {JP::backing_off, JA::back_off},
     {JP::failed, JA::give_up},
     {JP::draining, JA::stop_workers},
     {JP::removed, JA::stop_workers}},
    // failed: only a stop or a removal moves it (a reload builds a new job)
    {{JP::failed, JA::none},
     {JP::failed, JA::none},
     {JP::failed, JA::none},
     {JP::failed, JA::none},
     {JP::draining, JA::stop_workers},
     {JP::removed, JA::stop_workers}},
    // draining: final
    {{JP::draining, JA::none},
     {JP::draining, JA::none},
     {JP::draining, JA::none},
     {JP::draining, JA::none},
     {JP::draining, JA::none},
     {JP::draining, JA::none}},
    // removed: a stop still stops what is left (its workers already got theirs)
    {{JP::removed, JA::none},
     {JP::removed, JA::none},
     {JP::removed, JA::none},
     {JP::removed, JA::none},
     {JP::removed, JA::stop_workers},
     {JP::removed, JA::none}},
};

}  // namespace

WorkerTransition transition_worker(WorkerPhase phase, WorkerEvent event) noexcept {
  return kWorkerTable[static_cast<int>(phase)][static_cast<int>(event)];
}

JobTransition transition_job(JobPhase phase, JobEvent event) noexcept {
  return kJobTable[static_cast<int>(phase)][static_cast<int>(event)];
}

const char* to_string(WorkerPhase phase) noexcept {
  switch (phase) {
    case WorkerPhase::starting: return "starting";
    case WorkerPhase::up: return "up";
    case WorkerPhase::stopping: return "stopping";
    case WorkerPhase::killing: return "killing";
  }
  return "?";
}

const char* to_string(JobPhase phase) noexcept {
  switch (phase) {
    case JobPhase::running: return "running";
    case JobPhase::backing_off: return "backing-off";
    case JobPhase::failed: return "failed";
    case JobPhase::draining: return "draining";
    case JobPhase::removed: return "removed";
  }
  return "?";
}

}  // namespace corral
