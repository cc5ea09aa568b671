// libFuzzer target: the command-line parser (cmd/corral/cli.cpp) on arbitrary argv.
//
// The input is argv[1..] separated by NUL bytes (argv[0] is "corral"). The contract:
// parse_command_line never throws and either decides an exit code (0 for help and
// version, 2 for a usage error) or names a command; for `run -- PROGRAM`,
// config_from_command_line and validate_config either give a configuration that keeps
// the supervisor's promises or throw corral::ConfigError with at least one issue.
// Nothing is run, bound or read (no user or executable look-ups).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "cli.h"
#include "config/config.h"

namespace {

[[noreturn]] void broken(const char* what) {
  std::fprintf(stderr, "cli_fuzz: invariant broken: %s\n", what);
  std::abort();
}

void check_config(const corral::Config& config) {
  if (config.jobs.size() != 1) broken("the command line makes exactly one job");
  const auto& job = config.jobs.front();
  if (job.name.empty() || job.command.empty()) broken("a job without a name or command");
  const auto& w = job.workers;
  if (w.max == 0 || w.max > 16384 || w.max_spare == 0 || w.max_spare > 16384 ||
      w.min_spare > 16384 || w.start > 16384)
    broken("a workers count out of YAML's range");
  if (w.start > w.max) broken("workers.start > workers.max");
  if (job.mode != corral::Mode::plain) {
    if (w.min_spare > w.max_spare || w.min_spare > w.max) broken("spare range inverted");
    if (job.listeners.empty()) broken("a prefork/inetd job without a listener");
  }
  for (const auto& l : job.listeners)
    if (l.name.empty()) broken("a listener without a name");
  (void)corral::summarize(config);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<std::string> argv{"corral"};
  std::string current;
  for (std::size_t i = 0; i < size; ++i) {
    if (data[i] == 0) {
      argv.push_back(current);
      current.clear();
    } else {
      current.push_back(static_cast<char>(data[i]));
    }
  }
  if (size != 0) argv.push_back(current);
  if (argv.size() > 64) return 0;  // longer argv adds nothing but time

  std::ostringstream out;
  std::ostringstream err;
  auto cl = corral::parse_command_line(argv, out, err);
  if (cl.exit_code >= 0) {
    if (cl.exit_code != 0 && cl.exit_code != 2) broken("an exit code other than 0 or 2");
    if (cl.exit_code == 2 && err.str().empty()) broken("a usage error without a message");
    return 0;
  }
  if (cl.command == corral::Command::none) broken("neither an exit code nor a command");
  if (cl.command != corral::Command::run || cl.run.program.empty()) return 0;
  try {
    auto config = corral::config_from_command_line(cl.run);
    corral::validate_config(config, corral::CheckOptions{false, false});
    check_config(config);
  } catch (const corral::ConfigError& e) {
    if (e.issues().empty()) broken("ConfigError without an issue");
    for (const auto& issue : e.issues()) {
      if (issue.message.empty()) broken("an issue without a message");
      (void)issue.to_string();
    }
  }
  return 0;
}
