// inetd mode: a pre-forked acceptor that execs a legacy program on the connection.
#pragma once

#include <string>

#include "common/error.h"
#include "spawn/spawn.h"

namespace corral {

/// Turns `plan`, a prefork worker's plan for `program` (listeners, lock, scoreboard and
/// notify fds inherited; the worker protocol's variables in `plan.env`), into the plan
/// of an inetd acceptor: the embedded corral-inetd program (cmd/corral-inetd), which
/// accepts one connection with lib/worker and then execs `program` on it with the
/// connection on fds 0 and 1, REMOTE_ADDR/REMOTE_PORT/PROTO/TCP* in the environment and
/// no other fd. The spawn report pipe is passed on, so that a failed exec of the program
/// is read at reap time like any spawn failure. Fails only when the embedded image
/// cannot be prepared (memfd_create).
Status make_inetd_plan(SpawnPlan& plan, const std::string& job, unsigned max_per_source);

}  // namespace corral
