// corral: the command line. Parses, validates, and hands over to the library.
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <string_view>

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

struct RunOptions {
  std::string config;
  std::vector<std::string> listen;
  std::string mode;
  bool inetd = false;
  std::optional<unsigned> workers, min_spare, max_spare, max;
  std::string scoreboard_dir;
  std::vector<std::string> program;  // after "--"
};

// One job from the command line, named after the program's file name.
corral::Config config_from_command_line(const RunOptions& o) {
  corral::Config config;
  corral::JobConfig job;
  job.command = o.program;
  job.name = std::filesystem::path(o.program.front()).filename().string();
  for (auto& c : job.name) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_') c = '_';
  }
  std::string mode = o.inetd ? "inetd" : o.mode;
  if (!o.inetd || o.mode.empty() || o.mode == "inetd") {
    if (mode.empty() || mode == "prefork")
      job.mode = corral::Mode::prefork;
    else if (mode == "inetd")
      job.mode = corral::Mode::inetd;
    else if (mode == "plain")
      job.mode = corral::Mode::plain;
    else
      throw corral::ConfigError("--mode must be prefork, inetd or plain, not \"" + mode + "\"");
  } else {
    throw corral::ConfigError("--inetd contradicts --mode " + o.mode);
  }
  for (const auto& text : o.listen) {
    corral::ListenerSpec spec;
    spec.address = corral::parse_listen_address(text);
    if (auto* un = std::get_if<corral::UnixAddress>(&spec.address); un && un->path.front() != '/')
      un->path = std::filesystem::absolute(un->path).lexically_normal().string();
    spec.mark = corral::SourceMark{"--listen " + text, 0, 0};
    job.listeners.push_back(spec);
  }
  if (o.workers) job.workers.start = *o.workers;
  if (o.min_spare) job.workers.min_spare = *o.min_spare;
  if (o.max_spare) job.workers.max_spare = *o.max_spare;
  if (o.max) job.workers.max = *o.max;
  // Keep the defaults consistent with what was given (e.g. --max 2 alone).
  if (!o.max && job.workers.start > job.workers.max) job.workers.max = job.workers.start;
  if (!o.max_spare && job.workers.min_spare > job.workers.max_spare)
    job.workers.max_spare = job.workers.min_spare;
  if (!o.min_spare && job.workers.min_spare > job.workers.max)
    job.workers.min_spare = job.workers.max;
  if (!o.max_spare && job.workers.max_spare > job.workers.max &&
      job.workers.max >= job.workers.min_spare)
    job.workers.max_spare = std::max(job.workers.min_spare, 1U);
  if (!o.workers && job.workers.start > job.workers.max) job.workers.start = job.workers.max;
  job.mark = corral::SourceMark{"command line", 0, 0};
  config.jobs.push_back(job);
  if (!o.scoreboard_dir.empty())
    config.scoreboard_dir = std::filesystem::absolute(o.scoreboard_dir).lexically_normal().string();
  return config;
}

int run_command(const RunOptions& o, int log_level, std::vector<std::string> argv) {
  corral::setup_logging(log_level);
  corral::SupervisorOptions options;
  options.argv = std::move(argv);
  try {
    if (std::getenv("CORRAL_UPGRADE_STATE") != nullptr) {
      // A binary upgrade: the running configuration comes from the hand-over, never
      // from the file, which may be broken or gone by now (SIGHUP reads it).
      if (!o.program.empty()) {
        options.config = config_from_command_line(o);
      } else if (!o.config.empty()) {
        options.config_path = std::filesystem::absolute(o.config).string();
      }
    } else if (!o.program.empty()) {
      if (!o.config.empty())
        throw corral::ConfigError("give either CONFIG.yaml or -- PROGRAM, not both");
      options.config = config_from_command_line(o);
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
    std::cout << corral::summarize(config) << "OK\n";
    return kExitOk;
  } catch (const corral::ConfigError& e) {
    return print_config_error(e);
  }
}

int status_command(const std::string& config_path, const std::string& dir, bool json) {
  std::string scoreboard_dir = dir;
  std::vector<std::string> jobs;
  if (!config_path.empty()) {
    try {
      // Status needs no executables or users: whoever reads may lack them.
      auto config = corral::load_config_file(config_path, corral::CheckOptions{false, false});
      if (scoreboard_dir.empty()) scoreboard_dir = corral::scoreboard_dir_of(config);
      for (const auto& job : config.jobs) jobs.push_back(job.name);
    } catch (const corral::ConfigError& e) {
      return print_config_error(e);
    }
  }
  if (scoreboard_dir.empty()) {
    std::cerr << "corral status: give CONFIG.yaml or --scoreboard-dir DIR\n";
    return kExitConfig;
  }
  return corral::print_status(scoreboard_dir, jobs, json, std::cout, std::cerr);
}

}  // namespace

int main(int argc, char** argv) {
  // Asked by a running corral before a binary upgrade (docs/ARCHITECTURE.md, Upgrade).
  if (argc == 3 && std::string_view(argv[1]) == "--handover-check")
    return corral::handover_check_main(argv[2]);
  // Everything after the first "--" is the program to run; CLI11 never sees it.
  RunOptions run;
  std::vector<std::string> args;
  bool after = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (!after && a == "--") {
      after = true;
      continue;
    }
    (after ? run.program : args).push_back(a);
  }
  if (after && run.program.empty()) {
    std::cerr << "corral: nothing after \"--\": name the program to run\n";
    return kExitConfig;
  }

  CLI::App app{"corral: a process supervisor and socket-activation launcher", "corral"};
  app.set_version_flag("--version", std::string("corral ") + CORRAL_VERSION);
  app.require_subcommand(1);
  std::string log_level_text = "info";
  app.add_option("--log-level", log_level_text, "trace, debug, info, warn, error or off")
      ->capture_default_str();

  auto* run_cmd = app.add_subcommand("run", "Run the supervisor in the foreground until stopped");
  run_cmd->footer(
      "Usage: corral run CONFIG.yaml\n"
      "       corral run [--listen ADDR]... [--mode prefork|inetd|plain] [--inetd] [--workers N]\n"
      "                  [--min-spare N] [--max-spare N] [--max N] [--scoreboard-dir DIR] -- "
      "PROGRAM [ARG...]\n"
      "Addresses: 127.0.0.1:8080, [::1]:8080, :8080, unix:/path, systemd:NAME");
  run_cmd->add_option("config", run.config, "YAML configuration file");
  run_cmd->add_option("--listen", run.listen, "Address to listen on (repeatable)");
  run_cmd->add_option("--mode", run.mode, "prefork, inetd or plain");
  run_cmd->add_flag("--inetd", run.inetd, "Short for --mode inetd");
  run_cmd->add_option("--workers", run.workers, "workers.start");
  run_cmd->add_option("--min-spare", run.min_spare, "workers.min_spare");
  run_cmd->add_option("--max-spare", run.max_spare, "workers.max_spare");
  run_cmd->add_option("--max", run.max, "workers.max");
  run_cmd->add_option("--scoreboard-dir", run.scoreboard_dir, "Directory of the scoreboard files");
  run_cmd->add_option("--log-level", log_level_text, "trace, debug, info, warn, error or off");

  std::string check_path;
  auto* check_cmd = app.add_subcommand("check", "Validate a configuration; binds nothing");
  check_cmd->add_option("config", check_path, "YAML configuration file")->required();

  std::string status_config;
  std::string status_dir;
  bool status_json = false;
  auto* status_cmd = app.add_subcommand("status", "Show the workers of a running supervisor");
  status_cmd->add_option("config", status_config, "YAML configuration file");
  status_cmd->add_option("--scoreboard-dir", status_dir, "Directory of the scoreboard files");
  status_cmd->add_flag("--json", status_json, "Print JSON");

  std::vector<const char*> cargv{argv[0]};
  for (const auto& a : args) cargv.push_back(a.c_str());
  try {
    app.parse(static_cast<int>(cargv.size()), const_cast<char**>(cargv.data()));
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? kExitOk : kExitConfig;
  }
  if (!run.program.empty() && !run_cmd->parsed()) {
    std::cerr << "corral: \"-- PROGRAM\" belongs to \"corral run\"\n";
    return kExitConfig;
  }
  int level = 0;
  try {
    level = corral::parse_log_level(log_level_text);
  } catch (const corral::ConfigError& e) {
    return print_config_error(e);
  }
  if (run_cmd->parsed()) {
    std::vector<std::string> full(argv, argv + argc);
    return run_command(run, level, std::move(full));
  }
  if (check_cmd->parsed()) return check_command(check_path);
  if (status_cmd->parsed()) return status_command(status_config, status_dir, status_json);
  return kExitConfig;
}
