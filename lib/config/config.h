// The configuration model, the YAML loader and the validation `corral check` runs.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/duration.h"
#include "common/error.h"
#include "listen/address.h"
#include "listen/spec.h"

namespace corral {

enum class Mode { prefork, inetd, plain };
/// `automatic` is resolved by resolve_accept_mutex() (see docs/PROTOCOL.md).
enum class AcceptMutex { automatic, fcntl, pipe, epoll, none };

const char* to_string(Mode mode);
const char* to_string(AcceptMutex kind);

struct WorkersSpec {
  unsigned start = 4;
  unsigned min_spare = 2;
  unsigned max_spare = 8;
  unsigned max = 64;
  std::uint64_t max_requests = 0;         // 0: unlimited
  Duration max_lifetime{0};               // 0: none; a worker past it leaves once idle
  Duration max_lifetime_jitter{0};        // each worker draws its lifetime in [v, v + jitter]
  std::uint64_t max_requests_jitter = 0;  // ... and its max_requests likewise
  bool start_auto = false;                // `start: auto`: start is the container's CPUs (C)
  bool max_auto = false;                  // `max: auto`: max is 4·C
  Duration start_timeout = std::chrono::seconds(30);
};

/// One `limits:` entry, as systemd's Limit*=: soft and hard, RLIM_INFINITY for infinity.
struct RlimitSpec {
  int resource = 0;  // RLIMIT_NOFILE, ...
  std::string key;   // "nofile", ...
  std::uint64_t soft = 0;
  std::uint64_t hard = 0;
};

/// `memory:`: per-worker resident-memory bounds (0: none).
struct MemorySpec {
  std::uint64_t max_rss = 0;       // above: retired gracefully once idle
  std::uint64_t hard_max_rss = 0;  // above: killed at once
  bool pss = false;                // measure PSS (smaps_rollup) instead of RSS (statm)
  Duration interval = std::chrono::seconds(1);
  /// `budget:` for the whole pool, in bytes (a percentage resolved against the cgroup
  /// memory limit by validation); 0: none, or a percentage with no limit to take it of.
  std::uint64_t budget = 0;
  unsigned budget_percent = 0;  // `budget: N%` as written; 0: an absolute size (or none)
  SourceMark budget_mark;
};

/// `cgroup:`: one cgroup per worker slot (docs/LIMITS.md), values per worker; 0: not set.
struct CgroupSpec {
  std::uint64_t memory_high = 0;  // v2 memory.high (v1 has none: a check warning)
  std::uint64_t memory_max = 0;   // v2 memory.max, v1 memory.limit_in_bytes
  std::uint64_t pids_max = 0;     // pids.max
  unsigned cpu_weight = 0;        // v2 cpu.weight (1..10000), v1 cpu.shares = w * 1024 / 100
  SourceMark mark;
  SourceMark memory_high_mark;
  [[nodiscard]] bool any() const {
    return memory_high != 0 || memory_max != 0 || pids_max != 0 || cpu_weight != 0;
  }
};

struct RestartSpec {
  Duration backoff_max = std::chrono::seconds(30);
  unsigned max_failures = 10;  // consecutive failures before the job is marked failed; 0: never
};

/// A launcher convention a job's environment speaks (env_conventions). systemd's
/// LISTEN_* are always set (but with `fastcgi: true`); the others only add variables.
enum class EnvConvention : unsigned { systemd = 1U, einhorn = 2U, server_starter = 4U };

/// One `$(corral.sockets.NAME)` in a command argument: replaced, at each spawn, by the fd
/// number at which the worker finds listener NAME.
struct SocketRef {
  std::size_t arg = 0;     // index in JobConfig::command (1 or more)
  std::size_t offset = 0;  // where "$(corral.sockets." starts in that argument
  std::size_t length = 0;  // up to and including the ')'
  std::string name;
  SourceMark mark;  // the argument's position in the file
};

/// What makes programs written for other launchers run unchanged (docs/MIGRATING.md).
struct CompatSpec {
  unsigned conventions = static_cast<unsigned>(EnvConvention::systemd);  // EnvConvention bits
  bool fastcgi = false;  // the single listener on fd 0, blocking; no LISTEN_*
  std::vector<SocketRef> socket_refs;
  bool refs_found = false;  // socket_refs filled in (the YAML loader); else validation does it
  SourceMark conventions_mark;
  SourceMark fastcgi_mark;

  [[nodiscard]] bool speaks(EnvConvention c) const {
    return (conventions & static_cast<unsigned>(c)) != 0;
  }
};

/// Finds each `$(corral.sockets.NAME)` in `text`, argument `arg` of a command, in order.
/// Only "$(corral." starts a substitution; any other '$' is literal. Throws ConfigError
/// (no position) for a "$(corral." that is not "$(corral.sockets.NAME)", NAME non-empty,
/// without ':', '$', '(' or whitespace.
std::vector<SocketRef> find_socket_refs(std::string_view text, std::size_t arg);

/// `command` with each ref replaced by `fd_of(ref)` (refs in the order find_socket_refs
/// gives, any number of arguments). Pure; fd_of returns the fd number.
template <typename FdOf>
std::vector<std::string> expand_socket_refs(std::vector<std::string> command,
                                            const std::vector<SocketRef>& refs, FdOf fd_of) {
  // Back to front, so that an earlier offset in the same argument stays valid.
  for (std::size_t i = refs.size(); i-- > 0;) {
    const auto& ref = refs[i];
    if (ref.arg >= command.size()) continue;
    auto& arg = command[ref.arg];
    if (ref.offset + ref.length > arg.size()) continue;
    arg.replace(ref.offset, ref.length, std::to_string(fd_of(ref)));
  }
  return command;
}

/// `inetd:` (mode inetd, docs/INETD.md): warm programs, started before the connection.
enum class WarmHeader { none, proxy_v1 };
struct InetdSpec {
  bool warm = false;                          // start the program ahead, relay the connection to it
  WarmHeader warm_header = WarmHeader::none;  // proxy-v1: a PROXY v1 line first, on stdin
  SourceMark mark;                            // of `inetd:`, when present
};

struct JobConfig {
  std::string name;
  std::vector<std::string> command;  // command[0] resolved to an absolute path when found
  Mode mode = Mode::prefork;
  std::vector<ListenerSpec> listeners;
  WorkersSpec workers;
  AcceptMutex accept_mutex = AcceptMutex::automatic;
  unsigned max_per_source = 0;
  RestartSpec restart;
  std::string user;   // "" = no privilege change
  std::string group;  // "" = the user's primary group
  std::vector<std::pair<std::string, std::string>> env;
  std::string cwd;  // absolute, or "" = the supervisor's
  Duration graceful_timeout = std::chrono::seconds(30);
  Duration busy_timeout{0};
  std::vector<RlimitSpec> limits;
  MemorySpec memory;
  CgroupSpec cgroup;
  int stop_signal = 15;  // SIGTERM (15 on Linux); `stop_signal:` TERM|QUIT|INT|HUP|USR1|USR2|WINCH
  CompatSpec compat;     // env_conventions, fastcgi, $(corral.sockets.NAME)
  InetdSpec inetd;
  SourceMark mark;
};

/// Top-level `stop:`: how the supervisor leaves on SIGTERM.
struct StopSpec {
  Duration drain{0};  // on SIGTERM: report not ready, keep serving this long, then stop
};

/// `metrics:` (docs/METRICS.md): the HTTP endpoint and the textfile.
struct MetricsSpec {
  std::optional<ListenerSpec> listen;            // TCP or unix; none: no endpoint
  std::string listen_text;                       // as written, for messages and reload comparison
  std::string textfile;                          // absolute path; "": none
  Duration interval = std::chrono::seconds(15);  // how often the textfile is rewritten
  SourceMark mark;
};

struct Config {
  std::string file;            // "" when built from the command line
  std::string scoreboard_dir;  // "" = default_scoreboard_dir()
  StopSpec stop;
  MetricsSpec metrics;
  std::vector<JobConfig> jobs;
  /// What `corral check` prints but accepts (e.g. `user:` while not root); with
  /// CheckOptions::for_run these are errors instead.
  std::vector<ConfigIssue> warnings;
};

/// What the checks that touch the system may look at. Tests may turn them off.
struct CheckOptions {
  bool check_users = true;     // users and groups exist
  bool check_commands = true;  // each command resolves to an executable file
  /// The configuration is about to run here: what this process cannot do (`user:`
  /// without root) is an error, not a warning.
  bool for_run = false;
};

/// The largest configuration file corral reads (4 MiB).
constexpr std::size_t kMaxConfigBytes = 4U << 20;

/// The counts under `workers:` that YAML and the command line both set.
enum class WorkersCount { start, min_spare, max_spare, max };

/// Parses one of them, the same for YAML and for `corral run --workers`, `--min-spare`,
/// `--max-spare` and `--max`: a whole number in the key's range (start and min_spare
/// 0..16384, max_spare and max 1..16384). `what` names it in the message ("workers.max"
/// or "--max"). "auto" is refused as not supported yet. Throws ConfigError (no position).
unsigned parse_workers_count(WorkersCount which, std::string_view text, const std::string& what);

/// The environment a job's workers start from: `inherited` ("KEY=value"), then the job's
/// `env` in order, a later KEY replacing the earlier one in place. Linear in the number
/// of entries (an index by key, not a search per entry).
std::vector<std::string> merge_environment(
    std::vector<std::string> inherited,
    const std::vector<std::pair<std::string, std::string>>& add);

/// The directories `corral status CONFIG` looks in, in order: the configuration's
/// scoreboard_dir when it sets one; else /run/corral/NAME (NAME: the file's base name
/// without ".yaml", as corral@NAME.service lays it out), /run/corral, then
/// default_scoreboard_dir() of the caller; without duplicates.
std::vector<std::string> status_scoreboard_dirs(const Config& config);

/// Reads and validates a YAML file. Throws ConfigError carrying every problem found,
/// each with FILE:LINE:COLUMN. Binds nothing.
Config load_config_file(const std::string& path, const CheckOptions& options = {});

/// Reads a configuration file's text. Throws ConfigError naming the file.
std::string read_config_text(const std::string& path);

/// The same from text already read; `file` names it in messages and anchors
/// relative paths (its directory).
Config load_config_text(const std::string& text, const std::string& file,
                        const CheckOptions& options = {});

/// Validates a configuration built elsewhere (the command line). Throws ConfigError.
void validate_config(Config& config, const CheckOptions& options = {});

/// The default scoreboard directory (PRODUCT.md): $RUNTIME_DIRECTORY, /run/corral as
/// root, $XDG_RUNTIME_DIR/corral, /tmp/corral-$UID.
std::string default_scoreboard_dir();

/// The scoreboard directory a configuration uses.
std::string scoreboard_dir_of(const Config& config);

/// Looks a bare program name up in PATH, or resolves a relative path against `base_dir`.
/// Returns "" when nothing executable is found.
std::string resolve_command(const std::string& program, const std::string& base_dir);

/// One line per job, for `corral check`.
std::string summarize(const Config& config);

}  // namespace corral
