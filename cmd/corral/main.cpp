// corral: the command line. Parses (cli.cpp), validates, and hands over to the library.
#include <spdlog/spdlog.h>

#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <map>
#include <string_view>

#include "cli.h"
#include "common/error.h"
#include "config/config.h"
#include "log/log.h"
#include "status/status.h"
#include "supervisor/supervisor.h"

namespace {

constexpr int kExitOk = 0;
constexpr int kExitSetup = 1;
constexpr int kExitConfig = 2;

int print_config_error(const corral::ConfigError& e) {
  for (const auto& issue : e.issues()) std::cerr << issue.to_string() << "\n";
  return kExitConfig;
}

int run_command(const corral::RunOptions& o, int log_level, std::vector<std::string> argv) {
  corral::setup_logging(log_level);
  corral::SupervisorOptions options;
  options.argv = std::move(argv);
  // What this process cannot do (`user:` without root) is an error here, and at reloads.
  options.check.for_run = true;
  try {
    if (std::getenv("CORRAL_UPGRADE_STATE") != nullptr) {
      // A binary upgrade: the running configuration comes from the hand-over, never
      // from the file, which may be broken or gone by now (SIGHUP reads it).
      if (!o.program.empty()) {
        options.config = corral::config_from_command_line(o);
      } else if (!o.config.empty()) {
        options.config_path = std::filesystem::absolute(o.config).string();
      }
    } else if (!o.program.empty()) {
      if (!o.config.empty())
        throw corral::ConfigError("give either CONFIG.yaml or -- PROGRAM, not both");
      options.config = corral::config_from_command_line(o);
      corral::validate_config(options.config, options.check);
    } else {
      if (o.config.empty())
        throw corral::ConfigError(
            "nothing to run: give CONFIG.yaml, or -- PROGRAM [ARG...] (see --help)");
      if (!o.listen.empty() || !o.mode.empty() || o.inetd || o.workers || o.min_spare ||
          o.max_spare || o.max || !o.scoreboard_dir.empty())
        throw corral::ConfigError(
            "--listen, --mode, --workers ... apply to -- PROGRAM only; put them in " + o.config +
            " instead");
      options.config_text = corral::read_config_text(o.config);
      options.config = corral::load_config_text(options.config_text, o.config, options.check);
      options.config_path = std::filesystem::absolute(o.config).string();
    }
  } catch (const corral::ConfigError& e) {
    return print_config_error(e);
  }
  try {
    corral::Supervisor supervisor(std::move(options));
    return supervisor.run();
  } catch (const corral::ConfigError& e) {
    return print_config_error(e);
  } catch (const std::exception& e) {
    spdlog::critical("{}", e.what());
    return kExitSetup;
  }
}

int check_command(const std::string& path) {
  try {
    auto config = corral::load_config_file(path);
    for (const auto& warning : config.warnings) std::cerr << warning.to_string() << "\n";
    std::cout << corral::summarize(config) << "OK\n";
    return kExitOk;
  } catch (const corral::ConfigError& e) {
    return print_config_error(e);
  }
}

int status_command(const std::string& config_path, const std::string& dir, bool json, bool check) {
  std::vector<std::string> dirs;
  if (!dir.empty()) dirs.push_back(dir);
  std::vector<std::string> jobs;
  std::map<std::string, unsigned> starts;
  if (!config_path.empty()) {
    try {
      // Status needs no executables or users: whoever reads may lack them.
      auto config = corral::load_config_file(config_path, corral::CheckOptions{false, false});
      if (dirs.empty()) dirs = corral::status_scoreboard_dirs(config);
      for (const auto& job : config.jobs) {
        jobs.push_back(job.name);
        starts[job.name] = job.workers.start;
      }
    } catch (const corral::ConfigError& e) {
      return print_config_error(e);
    }
  }
  if (dirs.empty()) {
    std::cerr << "corral status: give CONFIG.yaml or --scoreboard-dir DIR\n";
    return kExitConfig;
  }
  if (check) return corral::check_status(dirs, jobs, starts, std::cout, std::cerr);
  return corral::print_status(dirs, jobs, json, std::cout, std::cerr);
}

}  // namespace

int main(int argc, char** argv) {
  // Asked by a running corral before a binary upgrade (docs/ARCHITECTURE.md, Upgrade).
  if (argc == 3 && std::string_view(argv[1]) == "--handover-check")
    return corral::handover_check_main(argv[2]);
  std::vector<std::string> full(argv, argv + argc);
  auto cl = corral::parse_command_line(full, std::cout, std::cerr);
  if (cl.exit_code >= 0) return cl.exit_code;
  int level = 0;
  try {
    level = corral::parse_log_level(cl.log_level);
  } catch (const corral::ConfigError& e) {
    return print_config_error(e);
  }
  switch (cl.command) {
    case corral::Command::run: return run_command(cl.run, level, std::move(full));
    case corral::Command::check: return check_command(cl.check_path);
    case corral::Command::status:
      return status_command(cl.status_config, cl.status_dir, cl.status_json, cl.status_check);
    case corral::Command::none: break;
  }
  return kExitConfig;
}
