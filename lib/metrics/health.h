// Health for probes and scripts: one rule, used by `corral status --check` (from the
// scoreboards) and by GET /readyz (from the supervisor's own tables). Pure.
#pragma once

#include <string>

namespace corral {

enum class JobHealthState { running, backing_off, failed, draining, stopping };

/// What is known about one job.
struct JobHealthInput {
  std::string name;
  JobHealthState state = JobHealthState::running;
  bool plain = false;  // mode plain: copies run, nothing is idle or busy
  unsigned idle = 0;   // current-generation workers by state
  unsigned busy = 0;
  unsigned starting = 0;
  unsigned running = 0;  // plain
  unsigned start = 1;    // workers.start
  unsigned max = 0;      // workers.max
  double retry_in = 0;   // backing off: seconds to the next try
};

struct JobHealthVerdict {
  bool ready = false;
  /// One line for the output ("job web: backing off (next try in 1.2s)"), or "" when
  /// the job is plainly healthy. A saturated pool is ready and still gets a line.
  std::string line;
};

/// Ready: the job is running and has started its workers (prefork/inetd: at least one
/// ready, idle or busy, unless workers.start is 0; plain: workers.start copies
/// running). Backing off, failed, draining and stopping are not ready. A pool whose
/// workers are all busy at workers.max is ready ("saturated").
JobHealthVerdict judge_job_health(const JobHealthInput& job);

}  // namespace corral
