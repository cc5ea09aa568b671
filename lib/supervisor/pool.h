// The spare-pool decision, without side effects (Apache's
// perform_idle_server_maintenance as a pure function), unit-tested.
#pragma once

#include "config/config.h"

namespace corral {

/// What the current generation of one job looks like right now.
struct PoolCounts {
  unsigned starting = 0;  // spawned, not yet idle
  unsigned idle = 0;
  unsigned busy = 0;    // prefork: holding a connection; inetd: running the program;
                        // plain: running
  unsigned queued = 0;  // connections waiting in the listen queues
};

struct PoolAction {
  unsigned spawn = 0;
  unsigned retire = 0;  // idle workers above max_spare (the caller retires gradually)
};

/// How many workers to start or retire. `initial`: the job has just (re)started and
/// `workers.start` applies. Starts enough for every queued connection plus min_spare
/// (the deficit, not Apache's 1, 2, 4... per second). Never plans a total above
/// `workers.max`.
PoolAction plan_pool(const JobConfig& job, const PoolCounts& counts, bool initial);

}  // namespace corral
