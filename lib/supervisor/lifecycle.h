// The lifecycles of a worker and of a job: phases, events and the one transition table
// of each, in the spirit of s6-supervise's actions[state][event]. Pure: no system calls.
// The supervisor feeds events in and carries out the action that comes back.
#pragma once

#include <cstdint>

namespace corral {

/// A worker's phase, as the supervisor sees it (its scoreboard slot says idle/busy).
enum class WorkerPhase : std::uint8_t {
  starting,  // spawned, not yet idle (prefork, inetd) or not yet 1 s old (plain)
  up,        // has been ready
  stopping,  // asked to stop (stop signal, or an inetd program left to finish); a deadline runs
  killing,   // SIGKILL sent to its process group; waiting for the reap
};
inline constexpr int kWorkerPhases = 4;

enum class WorkerEvent : std::uint8_t {
  ready,     // its slot says idle or busy (plain: it lived kPlainCrashWindow)
  stop,      // retire, recycle, reload or graceful stop: the stop signal, then the deadline
  release,   // inetd: a running program is left to finish; only the deadline applies
  deadline,  // the graceful_timeout of a stopping worker expired
  kill,      // kill now (fast stop, start or busy timeout, stuck lock holder)
};
inline constexpr int kWorkerEvents = 5;

/// What the supervisor does on a worker transition.
enum class WorkerAction : std::uint8_t {
  none,
  mark_ready,    // reset the job's failure count
  signal_stop,   // the job's stop signal to the worker, and arm the kill deadline
  arm_deadline,  // no signal (inetd program running), arm the kill deadline
  kill_group,    // SIGKILL to the worker's process group (the one kill path)
};

struct WorkerTransition {
  WorkerPhase next;
  WorkerAction action;
};

/// The worker table: transition_worker(phase, event).
WorkerTransition transition_worker(WorkerPhase phase, WorkerEvent event) noexcept;

/// A job's phase.
enum class JobPhase : std::uint8_t {
  running,
  backing_off,  // a failure happened: no start before retry_at, then one probe at a time
  failed,       // gave up (max_failures, or a worker said the configuration is broken)
  draining,     // the supervisor is stopping: no starts, workers leave
  removed,      // dropped by a reload: no starts, forgotten once its workers are gone
};
inline constexpr int kJobPhases = 5;

enum class JobEvent : std::uint8_t {
  worker_up,     // a worker of the current generation became ready
  failure,       // a start or a worker failed (counts toward max_failures)
  soft_failure,  // failed for want of resources (backs off, does not count)
  give_up,       // max_failures reached, or a worker's exit said "do not respawn"
  stop,          // graceful or fast stop of the supervisor
  remove,        // a reload dropped the job
};
inline constexpr int kJobEvents = 6;

enum class JobAction : std::uint8_t {
  none,
  reset_failures,  // failure count and backoff back to zero
  back_off,        // count (or not) the failure, double the backoff, set retry_at
  give_up,         // log it; nothing starts any more
  stop_workers,    // every worker gets the stop event
};

struct JobTransition {
  JobPhase next;
  JobAction action;
};

/// The job table: transition_job(phase, event).
JobTransition transition_job(JobPhase phase, JobEvent event) noexcept;

/// Whether a job in `phase` may start workers at all (backing_off: only once retry_at passed).
constexpr bool may_spawn(JobPhase phase) {
  return phase == JobPhase::running || phase == JobPhase::backing_off;
}

const char* to_string(WorkerPhase phase) noexcept;
const char* to_string(JobPhase phase) noexcept;

}  // namespace corral
