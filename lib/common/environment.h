// The environment a worker inherits from the supervisor.
#pragma once

#include <string>
#include <vector>

namespace corral {

/// This process's environment minus what belongs to the supervisor alone
/// (NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID, LISTEN_*): what a worker inherits before
/// the job's own `env:` and the protocol variables are added. Call once, early (the
/// supervisor) or at check time (config, to size the environment).
std::vector<std::string> inheritable_environment();

}  // namespace corral
