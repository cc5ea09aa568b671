// `corral status`: reads the scoreboards of a running supervisor. Needs read access only.
#pragma once

#include <map>
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

/// `corral status --check`: judges each job as GET /readyz does (lib/metrics/health.h)
/// from the scoreboards in the first of `dirs` where a supervisor holds any of them.
/// Prints one line per job that is not healthy (and one per saturated pool, which is
/// healthy) to `out`. Returns 0 when every job is healthy, 1 when one is not (backing
/// off, failed, draining, stopping, not started, or listed in `jobs` but not running),
/// kExitNotRunning when no supervisor runs. `starts`: workers.start by job name, when
/// the configuration is known (else 1).
int check_status(const std::vector<std::string>& dirs, const std::vector<std::string>& jobs,
                 const std::map<std::string, unsigned>& starts, std::ostream& out,
                 std::ostream& err);

}  // namespace corral
