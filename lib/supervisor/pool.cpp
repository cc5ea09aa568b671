#include "supervisor/pool.h"

#include <algorithm>

namespace corral {

PoolAction plan_pool(const JobConfig& job, const PoolCounts& c, bool initial) {
  const auto& w = job.workers;
  PoolAction action;
  const unsigned total = c.starting + c.idle + c.busy;
  const unsigned room = w.max > total ? w.max - total : 0;
  if (job.mode == Mode::plain) {
    action.spawn = w.start > total ? w.start - total : 0;
    return action;
  }
  unsigned want_total = 0;
  if (initial) want_total = w.start;
  // Queued connections will each take an idle (or starting) worker; min_spare must be
  // left over after that.
  const unsigned available = c.idle + c.starting;
  const unsigned needed = w.min_spare + c.queued;
  if (available < needed) want_total = std::max(want_total, total + (needed - available));
  action.spawn = std::min(want_total > total ? want_total - total : 0, room);
  if (c.idle > w.max_spare) action.retire = c.idle - w.max_spare;
  return action;
}

}  // namespace corral
