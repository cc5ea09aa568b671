#include "metrics/health.h"

#include <cstdio>

namespace corral {

JobHealthVerdict judge_job_health(const JobHealthInput& j) {
  JobHealthVerdict v;
  const std::string job = "job " + j.name + ": ";
  switch (j.state) {
    case JobHealthState::backing_off: {
      char retry[32];
      std::snprintf(retry, sizeof retry, "%.1f", j.retry_in);
      v.line = job + "backing off after failures (next try in " + retry + "s)";
      return v;
    }
    case JobHealthState::failed:
      v.line = job + "failed (gave up after repeated failures; see the log)";
      return v;
    case JobHealthState::draining: v.line = job + "draining"; return v;
    case JobHealthState::stopping: v.line = job + "stopping"; return v;
    case JobHealthState::running: break;
  }
  if (j.plain) {
    if (j.running < j.start) {
      v.line = job + "starting (" + std::to_string(j.running) + " of " + std::to_string(j.start) +
               " copies running)";
      return v;
    }
    v.ready = true;
    return v;
  }
  const unsigned ready_workers = j.idle + j.busy;
  if (j.start > 0 && ready_workers == 0) {
    v.line = job + "starting (no worker ready yet, " + std::to_string(j.starting) + " starting)";
    return v;
  }
  v.ready = true;
  if (j.idle == 0 && j.max > 0 && j.busy >= j.max) {
    v.line = job + "saturated: all " + std::to_string(j.busy) + " workers busy at workers.max " +
             std::to_string(j.max) + " (ready; new connections wait in the backlog)";
  }
  return v;
}

}  // namespace corral
