// `corral status`: reads the scoreboards of a running supervisor. Needs read access only.
#pragma once

#include <ostream>
#include <string>
#include <vector>

namespace corral {

/// Exit code of `corral status` when no supervisor runs for the files asked about.
constexpr int kExitNotRunning = 3;

/// Prints the status of `jobs` (every *.scoreboard in `dir` when empty) as a table,
/// or as the JSON of PRODUCT.md. Returns 0, or kExitNotRunning (after saying so on
/// `err`) when no supervisor holds the files.
int print_status(const std::string& dir, const std::vector<std::string>& jobs, bool json,
                 std::ostream& out, std::ostream& err);

/// The same over several candidate directories (status_scoreboard_dirs()): prints the
/// first one in which a supervisor holds any of the files. When none does, says every
/// directory it looked in, what it could not read, and how to point it
/// (`--scoreboard-dir`), and returns kExitNotRunning.
int print_status(const std::vector<std::string>& dirs, const std::vector<std::string>& jobs,
                 bool json, std::ostream& out, std::ostream& err);

}  // namespace corral
