// Paths corral creates or changes as root, opened so that no link is ever followed
// where another user could have put one (docs/SECURITY.md).
#pragma once

#include <sys/types.h>

#include <string>

#include "common/unique_fd.h"

namespace corral {

/// Opens the directory `path` (absolute) for files that only this process's user may
/// create: the scoreboard directory. A missing directory is created, along with missing
/// parents, mode 0755, or 0700 when its parent is writable by others (such as /tmp);
/// existing parents are used as configured (links in them are followed: /var/run).
/// The last component is never followed as a link, and it must be a directory owned
/// by root or by the effective uid, writable by neither group nor others. Returns an
/// O_DIRECTORY fd (close-on-exec). Throws SetupError naming the directory and the fix.
UniqueFd open_private_directory(const std::string& path);

/// Why a directory with this fstat result is not private to `euid` ("" when it is).
/// Pure; unit-tested.
std::string why_not_private(mode_t mode, uid_t owner, uid_t euid);

}  // namespace corral
