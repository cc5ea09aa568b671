#include "cli.h"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <cctype>
#include <filesystem>

#include "common/error.h"
#include "listen/address.h"

namespace corral {
namespace {

constexpr int kExitOk = 0;
constexpr int kExitConfig = 2;

std::optional<unsigned> count_option(const std::optional<std::string>& text, WorkersCount which,
                                     const char* option) {
  if (!text) return std::nullopt;
  return parse_workers_count(which, *text, option);
}

}  // namespace

Config config_from_command_line(const RunOptions& o) {
  Config config;
  JobConfig job;
  job.command = o.program;
  job.name = std::filesystem::path(o.program.front()).filename().string();
  for (auto& c : job.name) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_') c = '_';
  }
  if (job.name.empty()) job.name = "_";
  std::string mode = o.inetd ? "inetd" : o.mode;
  if (!o.inetd || o.mode.empty() || o.mode == "inetd") {
    if (mode.empty() || mode == "prefork")
      job.mode = Mode::prefork;
    else if (mode == "inetd")
      job.mode = Mode::inetd;
    else if (mode == "plain")
      job.mode = Mode::plain;
    else
      throw ConfigError("--mode must be prefork, inetd or plain, not \"" + mode + "\"");
  } else {
    throw ConfigError("--inetd contradicts --mode " + o.mode);
  }
  // Every number is checked before any is used, with YAML's ranges; all errors at once.
  std::vector<ConfigIssue> issues;
  auto checked = [&](const std::optional<std::string>& text, WorkersCount which,
                     const char* option) -> std::optional<unsigned> {
    try {
      return count_option(text, which, option);
    } catch (const ConfigError& e) {
      for (const auto& issue : e.issues()) issues.push_back(issue);
      return std::nullopt;
    }
  };
  auto workers = checked(o.workers, WorkersCount::start, "--workers");
  auto min_spare = checked(o.min_spare, WorkersCount::min_spare, "--min-spare");
  auto max_spare = checked(o.max_spare, WorkersCount::max_spare, "--max-spare");
  auto max = checked(o.max, WorkersCount::max, "--max");
  if (!issues.empty()) throw ConfigError(std::move(issues));

  for (const auto& text : o.listen) {
    ListenerSpec spec;
    spec.address = parse_listen_address(text);
    if (auto* un = std::get_if<UnixAddress>(&spec.address);
        un && !un->abstract && un->path.front() != '/')
      un->path = std::filesystem::absolute(un->path).lexically_normal().string();
    if (const auto* un = std::get_if<UnixAddress>(&spec.address); un && un->path.size() >= 108)
      throw ConfigError("--listen " + text + ": unix socket path too long (108 bytes at most)");
    spec.mark = SourceMark{"--listen " + text, 0, 0};
    job.listeners.push_back(spec);
  }
  auto& w = job.workers;
  if (workers) w.start = *workers;
  if (min_spare) w.min_spare = *min_spare;
  if (max_spare) w.max_spare = *max_spare;
  if (max) w.max = *max;
  // Keep the defaults consistent with what was given (e.g. --max 2 alone).
  if (!max && w.start > w.max) w.max = w.start;
  if (!max_spare && w.min_spare > w.max_spare) w.max_spare = w.min_spare;
  if (!min_spare && w.min_spare > w.max) w.min_spare = w.max;
  if (!max_spare && w.max_spare > w.max && w.max >= w.min_spare)
    w.max_spare = std::max(w.min_spare, 1U);
  if (!workers && w.start > w.max) w.start = w.max;
  job.mark = SourceMark{"command line", 0, 0};
  config.jobs.push_back(job);
  if (!o.scoreboard_dir.empty())
    config.scoreboard_dir = std::filesystem::absolute(o.scoreboard_dir).lexically_normal().string();
  return config;
}

CommandLine parse_command_line(const std::vector<std::string>& argv, std::ostream& out,
                               std::ostream& err) {
  CommandLine cl;
  auto fail = [&](const std::string& message) {
    err << "corral: " << message << "\n";
    cl.exit_code = kExitConfig;
    return cl;
  };
  // Everything after the first "--" is the program to run; CLI11 never sees it.
  std::vector<std::string> args;
  bool after = false;
  for (std::size_t i = 1; i < argv.size(); ++i) {
    if (!after && argv[i] == "--") {
      after = true;
      continue;
    }
    (after ? cl.run.program : args).push_back(argv[i]);
  }
  if (after && cl.run.program.empty()) return fail("nothing after \"--\": name the program to run");
  if (after && cl.run.program.front().empty()) return fail("the program after \"--\" is empty");
  // CLI11 answers --version as soon as it sees it, whatever follows.
  if (std::find(args.begin(), args.end(), "--version") != args.end() && (args.size() != 1 || after))
    return fail("--version takes no other argument (try \"corral --version\")");

  CLI::App app{"corral: a process supervisor and socket-activation launcher", "corral"};
  app.set_version_flag("--version",
                       std::string("corral ") + CORRAL_VERSION + " (commit " + CORRAL_COMMIT + ")");
  app.require_subcommand(1);
  app.add_option("--log-level", cl.log_level, "trace, debug, info, warn, error or off")
      ->capture_default_str();

  auto& run = cl.run;
  auto* run_cmd = app.add_subcommand("run", "Run the supervisor in the foreground until stopped");
  run_cmd->footer(
      "Usage: corral run CONFIG.yaml\n"
      "       corral run [--listen ADDR]... [--mode prefork|inetd|plain] [--inetd] [--workers N]\n"
      "                  [--min-spare N] [--max-spare N] [--max N] [--scoreboard-dir DIR] -- "
      "PROGRAM [ARG...]\n"
      "Addresses: 127.0.0.1:8080, [::1]:8080, :8080, unix:/path, unix:@name, systemd:NAME; plain "
      "mode also udp:HOST:PORT, unix-dgram:/path");
  run_cmd->add_option("config", run.config, "YAML configuration file");
  run_cmd->add_option("--listen", run.listen, "Address to listen on (repeatable)");
  run_cmd->add_option("--mode", run.mode, "prefork, inetd or plain");
  run_cmd->add_flag("--inetd", run.inetd, "Short for --mode inetd");
  run_cmd->add_option("--workers", run.workers, "workers.start (0..16384)");
  run_cmd->add_option("--min-spare", run.min_spare, "workers.min_spare (0..16384)");
  run_cmd->add_option("--max-spare", run.max_spare, "workers.max_spare (1..16384)");
  run_cmd->add_option("--max", run.max, "workers.max (1..16384)");
  run_cmd->add_option("--scoreboard-dir", run.scoreboard_dir, "Directory of the scoreboard files");
  run_cmd->add_option("--log-level", cl.log_level, "trace, debug, info, warn, error or off");

  auto* check_cmd = app.add_subcommand("check", "Validate a configuration; binds nothing");
  check_cmd->add_option("config", cl.check_path, "YAML configuration file")->required();

  auto* status_cmd = app.add_subcommand("status", "Show the workers of a running supervisor");
  status_cmd->add_option("config", cl.status_config, "YAML configuration file");
  status_cmd->add_option("--scoreboard-dir", cl.status_dir, "Directory of the scoreboard files");
  auto* json_flag = status_cmd->add_flag("--json", cl.status_json, "Print JSON");
  status_cmd
      ->add_flag("--check", cl.status_check,
                 "Exit 0 if every job is running with its workers started, 1 if one is backing "
                 "off, failed or draining (one line per such job), 3 if no supervisor runs")
      ->excludes(json_flag);

  std::vector<const char*> cargv{argv.empty() ? "corral" : argv[0].c_str()};
  for (const auto& a : args) cargv.push_back(a.c_str());
  try {
    app.parse(static_cast<int>(cargv.size()), const_cast<char**>(cargv.data()));
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e, out, err);
    cl.exit_code = code == 0 ? kExitOk : kExitConfig;
    return cl;
  }
  if (!run.program.empty() && !run_cmd->parsed())
    return fail("\"-- PROGRAM\" belongs to \"corral run\"");
  if (run_cmd->parsed())
    cl.command = Command::run;
  else if (check_cmd->parsed())
    cl.command = Command::check;
  else if (status_cmd->parsed())
    cl.command = Command::status;
  else
    cl.exit_code = kExitConfig;
  return cl;
}

}  // namespace corral
