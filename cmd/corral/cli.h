// corral's command line: parsing only, without running anything (main.cpp runs it;
// fuzz/cli_fuzz.cpp feeds it arbitrary argv).
#pragma once

#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "config/config.h"

namespace corral {

/// The options of `corral run`. The numbers stay text until config_from_command_line
/// checks them with the same rules as YAML (parse_workers_count).
struct RunOptions {
  std::string config;
  std::vector<std::string> listen;
  std::string mode;
  bool inetd = false;
  std::optional<std::string> workers, min_spare, max_spare, max;
  std::string scoreboard_dir;
  std::vector<std::string> program;  // after "--"
};

enum class Command { none, run, check, status };

struct CommandLine {
  Command command = Command::none;
  /// >= 0: parsing decided the outcome (help, version, a usage error) and has already
  /// printed what there was to print; exit with this code.
  int exit_code = -1;
  std::string log_level = "info";
  RunOptions run;
  std::string check_path;
  std::string status_config;
  std::string status_dir;
  bool status_json = false;
  bool status_check = false;
};

/// Parses argv (argv[0] included). Help and version go to `out`, usage errors to `err`.
/// Never runs, binds or reads anything. Never throws for any argv.
CommandLine parse_command_line(const std::vector<std::string>& argv, std::ostream& out,
                               std::ostream& err);

/// The one job of `corral run [OPTIONS] -- PROGRAM [ARG...]`, named after the program's
/// file name. Numbers are checked as YAML's are (messages name the option, e.g.
/// "--max must be between 1 and 16384, not 0"); bounds the user did not set are pulled
/// along to fit the ones given. Throws ConfigError. Call validate_config() next.
Config config_from_command_line(const RunOptions& options);

}  // namespace corral
