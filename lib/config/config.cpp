#include "config/config.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <pwd.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <set>
#include <sstream>
#include <unordered_map>

#include "common/environment.h"
#include "common/size.h"
#include "common/unique_fd.h"
#include "container/cgroup.h"
#include "container/limits.h"

namespace corral {
namespace {

namespace fs = std::filesystem;

constexpr unsigned kMaxWorkers = 16384;

const std::vector<std::string> kTopKeys = {"scoreboard_dir", "stop", "metrics", "jobs"};
const std::vector<std::string> kStopKeys = {"drain"};
const std::vector<std::string> kMetricsKeys = {"listen", "textfile", "interval"};
const std::vector<std::string> kJobKeys = {
    "command",      "mode",        "listen", "workers", "accept_mutex", "max_per_source",
    "restart",      "user",        "group",  "env",     "cwd",          "graceful_timeout",
    "busy_timeout", "stop_signal", "limits", "memory",  "cgroup",       "env_conventions",
    "fastcgi",      "inetd",       "allow",  "deny"};
const std::vector<std::string> kInetdKeys = {"warm", "warm_header"};
const std::vector<std::string> kListenerKeys = {"address", "name",    "mode",  "owner",
                                                "group",   "backlog", "allow", "deny"};
const std::vector<std::string> kWorkersKeys = {
    "start",        "min_spare",           "max_spare",
    "max",          "max_requests",        "start_timeout",
    "max_lifetime", "max_lifetime_jitter", "max_requests_jitter"};
const std::vector<std::string> kLimitsKeys = {"nofile", "nproc", "core", "as", "cpu", "stack"};
const std::vector<std::string> kMemoryKeys = {"max_rss", "hard_max_rss", "budget", "measure",
                                              "interval"};
const std::vector<std::string> kCgroupKeys = {"memory_high", "memory_max", "pids_max",
                                              "cpu_weight"};
const std::vector<std::string> kRestartKeys = {"backoff_max", "max_failures"};

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string did_you_mean(const std::string& key, const std::vector<std::string>& known) {
  std::string best;
  size_t best_distance = 3;
  for (const auto& candidate : known) {
    size_t d = edit_distance(key, candidate);
    if (d < best_distance) {
      best_distance = d;
      best = candidate;
    }
  }
  return best.empty() ? "" : "; did you mean \"" + best + "\"?";
}

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : ", ") + item;
  return out;
}

bool valid_job_name(const std::string& name) {
  return !name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_';
  });
}

bool user_exists(const std::string& name) {
  std::vector<char> buf(16384);
  passwd pw{};
  passwd* result = nullptr;
  return getpwnam_r(name.c_str(), &pw, buf.data(), buf.size(), &result) == 0 && result != nullptr;
}

bool group_exists(const std::string& name) {
  std::vector<char> buf(16384);
  group gr{};
  group* result = nullptr;
  return getgrnam_r(name.c_str(), &gr, buf.data(), buf.size(), &result) == 0 && result != nullptr;
}

bool is_executable_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(path.c_str(), X_OK) == 0;
}

// Walks a YAML document into a Config, collecting every problem instead of stopping.
class Loader {
 public:
  Loader(std::string file, std::string base_dir)
      : file_(std::move(file)), base_dir_(std::move(base_dir)) {}

  Config load(const YAML::Node& root) {
    Config config;
    config.file = file_;
    if (!root || root.IsNull()) {
      issue(root, "the file is empty; it needs a \"jobs:\" map");
      return config;
    }
    if (!root.IsMap()) {
      issue(root, "the top level must be a map with \"jobs:\"");
      return config;
    }
    check_keys(root, kTopKeys, "top level");
    if (auto dir = root["scoreboard_dir"]) {
      if (auto s = scalar(dir, "scoreboard_dir")) config.scoreboard_dir = absolute(*s);
    }
    if (auto stop = root["stop"]) load_stop(config, stop);
    if (auto m = root["metrics"]) load_metrics(config.metrics, m);
    auto jobs = root["jobs"];
    if (!jobs) {
      issue(root, "\"jobs:\" is missing; define at least one job");
    } else if (!jobs.IsMap() || jobs.size() == 0) {
      issue(jobs, "\"jobs\" must be a map of job names to job definitions");
    } else {
      for (auto it = jobs.begin(); it != jobs.end(); ++it) {
        config.jobs.push_back(load_job(it->first, it->second));
      }
    }
    return config;
  }

  std::vector<ConfigIssue>& issues() { return issues_; }

 private:
  SourceMark mark_of(const YAML::Node& node) const {
    if (!node.IsDefined()) return SourceMark{file_, 0, 0};
    auto m = node.Mark();
    if (m.line < 0) return SourceMark{file_, 0, 0};
    return SourceMark{file_, m.line + 1, m.column + 1};
  }

  void issue(const YAML::Node& node, std::string message) {
    issues_.push_back(ConfigIssue{mark_of(node), std::move(message)});
  }

  void check_keys(const YAML::Node& map, const std::vector<std::string>& known,
                  const std::string& where) {
    for (auto it = map.begin(); it != map.end(); ++it) {
      std::string key = it->first.IsScalar() ? it->first.Scalar() : "?";
      if (std::find(known.begin(), known.end(), key) == known.end()) {
        issue(it->first, "unknown key \"" + key + "\" in " + where + did_you_mean(key, known) +
                             " (known keys: " + join(known) + ")");
      }
    }
  }

  std::optional<std::string> scalar(const YAML::Node& node, const std::string& what) {
    if (!node.IsScalar()) {
      issue(node, what + " must be a single value");
      return std::nullopt;
    }
    // A C string ends at the first NUL: exec, open and getpwnam would see a shorter value.
    if (node.Scalar().find('\0') != std::string::npos) {
      issue(node, what + " contains a NUL byte (\"\\0\"), which no program argument, " +
                      "environment value, path or name can hold");
      return std::nullopt;
    }
    return node.Scalar();
  }

  std::optional<unsigned> count(const YAML::Node& node, WorkersCount which,
                                const std::string& what) {
    auto text = scalar(node, what);
    if (!text) return std::nullopt;
    try {
      return parse_workers_count(which, *text, what);
    } catch (const ConfigError& e) {
      issue(node, e.issues().front().message);
      return std::nullopt;
    }
  }

  // One of a fixed set of words; the error lists them in the order given.
  template <typename E>
  std::optional<E> one_of(const YAML::Node& node, const std::string& what,
                          std::initializer_list<std::pair<const char*, E>> options) {
    auto text = scalar(node, what);
    if (!text) return std::nullopt;
    std::string words;
    std::size_t i = 0;
    for (const auto& [word, value] : options) {
      if (*text == word) return value;
      words += (i == 0 ? "" : i + 1 == options.size() ? " or " : ", ") + std::string(word);
      ++i;
    }
    issue(node, what + " must be " + words + ", not \"" + *text + "\"");
    return std::nullopt;
  }

  std::optional<std::uint64_t> integer(const YAML::Node& node, const std::string& what,
                                       std::uint64_t min, std::uint64_t max) {
    auto text = scalar(node, what);
    if (!text) return std::nullopt;
    std::uint64_t value = 0;
    auto [ptr, ec] = std::from_chars(text->data(), text->data() + text->size(), value);
    if (ec != std::errc() || ptr != text->data() + text->size()) {
      issue(node, what + " must be a whole number, not \"" + *text + "\"");
      return std::nullopt;
    }
    if (value < min || value > max) {
      issue(node, what + " must be between " + std::to_string(min) + " and " + std::to_string(max) +
                      ", not " + *text);
      return std::nullopt;
    }
    return value;
  }

  std::optional<Duration> duration(const YAML::Node& node, const std::string& what) {
    auto text = scalar(node, what);
    if (!text) return std::nullopt;
    try {
      return parse_duration(*text);
    } catch (const ConfigError& e) {
      issue(node, what + ": " + e.issues().front().message);
      return std::nullopt;
    }
  }

  std::string absolute(const std::string& path) const {
    if (path.empty() || path.front() == '/') return path;
    auto p = (fs::path(base_dir_) / path).lexically_normal();
    // "." normalises to "/dir/": drop the trailing slash so joined paths stay clean.
    if (!p.has_filename() && p.has_relative_path()) p = p.parent_path();
    return p.string();
  }

  JobConfig load_job(const YAML::Node& key, const YAML::Node& node) {
    JobConfig job;
    job.mark = mark_of(key);
    job.name = key.IsScalar() ? key.Scalar() : "";
    if (!valid_job_name(job.name)) {
      issue(key, "job name \"" + job.name + "\" may use only letters, digits, '-' and '_'");
    }
    if (!node.IsMap()) {
      issue(node, "job \"" + job.name + "\" must be a map (with at least \"command:\")");
      return job;
    }
    check_keys(node, kJobKeys, "job \"" + job.name + "\"");

    if (auto cmd = node["command"]) {
      if (cmd.IsScalar()) {
        // A single string is split on whitespace, as systemd's ExecStart= would (no quoting).
        std::istringstream words(cmd.Scalar());
        for (std::string w; words >> w;) job.command.push_back(w);
      } else if (cmd.IsSequence()) {
        for (const auto& arg : cmd) {
          if (auto s = scalar(arg, "each command argument")) job.command.push_back(*s);
        }
      } else {
        issue(cmd, "command must be a list of strings, e.g. [\"./server\", \"--flag\"]");
      }
      if (job.command.empty() && (cmd.IsScalar() || cmd.IsSequence()))
        issue(cmd, "command is empty; name the program to run");
      job_command_marks_[job.name] = mark_of(cmd);
    } else {
      issue(key, "job \"" + job.name + "\" has no \"command:\"; name the program to run");
    }

    if (auto m = node["mode"]) {
      auto mode = one_of<Mode>(
          m, "mode", {{"prefork", Mode::prefork}, {"inetd", Mode::inetd}, {"plain", Mode::plain}});
      if (mode) job.mode = *mode;
    }

    if (auto l = node["listen"]) {
      if (l.IsScalar()) {
        load_listener(job, l);
      } else if (l.IsSequence()) {
        for (const auto& item : l) load_listener(job, item);
      } else {
        issue(l, "listen must be a list of addresses");
      }
    }

    {
      // Rules on a listener replace the job's for that listener.
      AccessRules job_rules;
      if (load_access(node, job_rules)) {
        bool any_ip = false;
        for (const auto& l : job.listeners)
          any_ip = any_ip || !std::holds_alternative<UnixAddress>(l.address);
        if (!any_ip)
          issue(node["allow"] ? node["allow"] : node["deny"],
                "allow: and deny: apply to IP listeners, and job \"" + job.name +
                    "\" has none (unix sockets have no peer address)");
      }
      for (auto& l : job.listeners) {
        if (!l.own_access && !std::holds_alternative<UnixAddress>(l.address)) l.access = job_rules;
        l.kernel_filter = job.mode != Mode::inetd;
      }
    }

    if (auto w = node["workers"]) load_workers(job, w);
    if (auto sig = node["stop_signal"]) load_stop_signal(job, sig);
    if (auto l = node["limits"]) load_limits(job, l);
    if (auto m = node["memory"]) load_memory(job, m);
    if (auto g = node["cgroup"]) load_cgroup(job, g);

    if (auto a = node["accept_mutex"]) {
      auto kind = one_of<AcceptMutex>(a, "accept_mutex",
                                      {{"auto", AcceptMutex::automatic},
                                       {"pipe", AcceptMutex::pipe},
                                       {"fcntl", AcceptMutex::fcntl},
                                       {"epoll", AcceptMutex::epoll},
                                       {"none", AcceptMutex::none}});
      if (kind) job.accept_mutex = *kind;
    }
    if (auto m = node["max_per_source"]) {
      if (auto v = integer(m, "max_per_source", 0, 1000000)) job.max_per_source = unsigned(*v);
    }
    if (auto i = node["inetd"]) {
      job.inetd.mark = mark_of(i);
      if (!i.IsMap()) {
        issue(i, "inetd must be a map, e.g. { warm: true }");
      } else {
        check_keys(i, kInetdKeys, "inetd");
        if (auto warm = i["warm"]) {
          auto on = one_of<bool>(warm, "inetd.warm", {{"true", true}, {"false", false}});
          if (on) job.inetd.warm = *on;
        }
        if (auto h = i["warm_header"]) {
          auto kind =
              one_of<WarmHeader>(h, "inetd.warm_header",
                                 {{"none", WarmHeader::none}, {"proxy-v1", WarmHeader::proxy_v1}});
          if (kind) job.inetd.warm_header = *kind;
        }
      }
    }
    if (auto r = node["restart"]) {
      if (!r.IsMap()) {
        issue(r, "restart must be a map, e.g. { backoff_max: 30s, max_failures: 10 }");
      } else {
        check_keys(r, kRestartKeys, "restart");
        if (auto b = r["backoff_max"]) {
          if (auto d = duration(b, "restart.backoff_max")) job.restart.backoff_max = *d;
        }
        if (auto f = r["max_failures"]) {
          if (auto v = integer(f, "restart.max_failures", 0, 1000000))
            job.restart.max_failures = unsigned(*v);
        }
      }
    }
    if (auto u = node["user"]) {
      if (auto s = scalar(u, "user")) job.user = *s;
      user_marks_[job.name] = mark_of(u);
    }
    if (auto g = node["group"]) {
      if (auto s = scalar(g, "group")) job.group = *s;
      group_marks_[job.name] = mark_of(g);
    }
    if (auto e = node["env"]) {
      if (!e.IsMap()) {
        issue(e, "env must be a map of NAME: value");
      } else {
        for (auto it = e.begin(); it != e.end(); ++it) {
          std::string name = it->first.IsScalar() ? it->first.Scalar() : "";
          if (name.empty() || name.find('=') != std::string::npos ||
              name.find('\0') != std::string::npos) {
            issue(it->first, "environment variable name \"" + name + "\" is not valid");
            continue;
          }
          if (auto v = scalar(it->second, "env." + name)) job.env.emplace_back(name, *v);
        }
      }
    }
    if (auto c = node["cwd"]) {
      if (auto s = scalar(c, "cwd")) {
        job.cwd = absolute(*s);
        cwd_marks_[job.name] = mark_of(c);
      }
    }
    if (auto g = node["graceful_timeout"]) {
      if (auto d = duration(g, "graceful_timeout")) job.graceful_timeout = *d;
    }
    if (auto b = node["busy_timeout"]) {
      if (auto d = duration(b, "busy_timeout")) job.busy_timeout = *d;
    }
    load_compat(job, node);
    return job;
  }

  // env_conventions, fastcgi and the $(corral.sockets.NAME) in `command` (checked against
  // the listeners in validate_compat, once their names are known).
  void load_compat(JobConfig& job, const YAML::Node& node) {
    auto& compat = job.compat;
    if (auto c = node["env_conventions"]) {
      compat.conventions_mark = mark_of(c);
      if (!c.IsSequence()) {
        issue(c, "env_conventions must be a list, e.g. [systemd, einhorn, server_starter]");
      } else {
        for (const auto& item : c) {
          auto kind = one_of<EnvConvention>(item, "each of env_conventions",
                                            {{"systemd", EnvConvention::systemd},
                                             {"einhorn", EnvConvention::einhorn},
                                             {"server_starter", EnvConvention::server_starter}});
          if (kind) compat.conventions |= static_cast<unsigned>(*kind);
        }
      }
    }
    if (auto f = node["fastcgi"]) {
      compat.fastcgi_mark = mark_of(f);
      auto on = one_of<bool>(f, "fastcgi", {{"true", true}, {"false", false}});
      if (on) compat.fastcgi = *on;
    }
    auto cmd = node["command"];
    compat.refs_found = true;
    if (!cmd) return;
    for (std::size_t i = 0; i < job.command.size(); ++i) {
      // A list gives each argument its own position; a single string shares one.
      const bool own = cmd.IsSequence() && cmd.size() == job.command.size();
      const SourceMark at = own ? mark_of(cmd[i]) : mark_of(cmd);
      try {
        auto refs = find_socket_refs(job.command[i], i);
        if (i == 0 && !refs.empty()) {
          issues_.push_back(ConfigIssue{
              at, "$(corral.sockets.NAME) may stand in the arguments, not in the program name"});
          continue;
        }
        for (auto& ref : refs) {
          ref.mark = at;
          compat.socket_refs.push_back(std::move(ref));
        }
      } catch (const ConfigError& e) {
        issues_.push_back(ConfigIssue{at, e.issues().front().message});
      }
    }
  }

  void load_listener(JobConfig& job, const YAML::Node& node) {
    ListenerSpec spec;
    spec.mark = mark_of(node);
    // Bound once, never assigned: yaml-cpp's Node::operator= writes through to the referenced
    // node, and reset() throws InvalidNode when the key is missing (a zombie node).
    const YAML::Node address_node = node.IsMap() ? node["address"] : node;
    if (node.IsMap()) {
      check_keys(node, kListenerKeys, "listener");
      if (!address_node) {
        issue(node, "listener has no \"address:\"");
        return;
      }
      if (auto n = node["name"]) {
        if (auto s = scalar(n, "listener name")) {
          if (s->empty() || s->find(':') != std::string::npos)
            issue(n, "listener name \"" + *s + "\" must be non-empty and may not contain ':'");
          spec.name = *s;
        }
      }
      if (auto m = node["mode"]) {
        if (auto s = scalar(m, "listener mode")) {
          unsigned value = 0;
          auto [ptr, ec] = std::from_chars(s->data(), s->data() + s->size(), value, 8);
          if (ec != std::errc() || ptr != s->data() + s->size() || value > 07777)
            issue(m,
                  "listener mode must be octal permissions such as \"0660\", not \"" + *s + "\"");
          else
            spec.unix_mode = static_cast<mode_t>(value);
        }
      }
      if (auto o = node["owner"]) {
        if (auto s = scalar(o, "listener owner")) {
          spec.owner = *s;
          if (check_users_ && !user_exists(*s)) issue(o, "user \"" + *s + "\" does not exist");
        }
      }
      if (auto g = node["group"]) {
        if (auto s = scalar(g, "listener group")) {
          spec.group = *s;
          if (check_users_ && !group_exists(*s)) issue(g, "group \"" + *s + "\" does not exist");
        }
      }
      if (auto b = node["backlog"]) {
        if (auto v = integer(b, "backlog", 1, 65535)) spec.backlog = int(*v);
      }
      spec.own_access = load_access(node, spec.access);
    }
    auto text = scalar(address_node, "a listen address");
    if (!text) return;
    try {
      spec.address = parse_listen_address(*text);
    } catch (const ConfigError& e) {
      issue(address_node, e.issues().front().message);
      return;
    }
    bool is_unix = std::holds_alternative<UnixAddress>(spec.address);
    if (!is_unix && (spec.unix_mode || !spec.owner.empty() || !spec.group.empty())) {
      issue(node, "mode, owner and group apply to unix: sockets only");
    }
    if (auto* un = std::get_if<UnixAddress>(&spec.address); un && un->abstract) {
      if (spec.unix_mode || !spec.owner.empty() || !spec.group.empty())
        issue(node, to_string(spec.address) +
                        " is an abstract socket: it has no file, hence no mode, owner or group "
                        "(anyone in the network namespace may connect; use allow:/deny: for IP "
                        "listeners, or a unix:/path socket with mode: to restrict who connects)");
    } else if (un != nullptr) {
      un->path = absolute(un->path);
      if (un->path.size() >= 108)
        issue(address_node, "unix socket path too long (108 bytes at most)");
    }
    if (auto* sd = std::get_if<SystemdAddress>(&spec.address)) {
      if (spec.name.empty()) spec.name = sd->name;
    }
    if (spec.own_access && is_unix)
      issue(node, "allow: and deny: apply to IP listeners; " + to_string(spec.address) +
                      " is a unix socket, whose peers have no address (restrict it with mode:, "
                      "owner: and group:)");
    job.listeners.push_back(std::move(spec));
  }

  // `allow:` and `deny:` of a job or a listener map; returns whether either was given.
  bool load_access(const YAML::Node& node, AccessRules& rules) {
    bool given = false;
    for (const char* key : {"allow", "deny"}) {
      auto list = node[key];
      if (!list) continue;
      given = true;
      auto& into = std::string_view(key) == "allow" ? rules.allow : rules.deny;
      if (!list.IsSequence()) {
        issue(list, std::string(key) +
                        " must be a list of addresses or networks, e.g. [\"10.0.0.0/8\", \"::1\"]");
        continue;
      }
      if (list.size() == 0) {
        issue(list, std::string(key) + ": [] is empty; remove the key" +
                        (std::string_view(key) == "allow"
                             ? std::string(" to let every peer in, or name who may connect")
                             : std::string(" or name who is refused")));
        continue;
      }
      for (const auto& item : list) {
        auto text = scalar(item, std::string("each ") + key + " entry");
        if (!text) continue;
        try {
          into.push_back(parse_cidr(*text));
        } catch (const ConfigError& e) {
          issue(item, e.issues().front().message);
        }
      }
    }
    if (given) {
      try {
        (void)compile_access_filter(rules);
      } catch (const ConfigError& e) {
        issue(node, e.issues().front().message);
      }
    }
    return given;
  }

  void load_stop(Config& config, const YAML::Node& node) {
    if (!node.IsMap()) {
      issue(node, "stop must be a map, e.g. { drain: 5s }");
      return;
    }
    check_keys(node, kStopKeys, "stop");
    if (auto d = node["drain"]) {
      if (auto v = duration(d, "stop.drain")) config.stop.drain = *v;
    }
  }

  // One limit value: "N", "infinity", or "SOFT:HARD" (systemd's Limit*= form).
  std::optional<std::pair<std::uint64_t, std::uint64_t>> limit_value(const YAML::Node& node,
                                                                     const std::string& key) {
    auto text = scalar(node, "limits." + key);
    if (!text) return std::nullopt;
    auto one = [&](std::string_view part) -> std::uint64_t {
      if (part == "infinity") {
        if (key == "nofile") {
          // As systemd: nofile's infinity is the kernel's ceiling, fs.nr_open.
          std::uint64_t nr_open = 1048576;
          if (FILE* f = std::fopen("/proc/sys/fs/nr_open", "r")) {
            unsigned long long v = 0;
            if (std::fscanf(f, "%llu", &v) == 1) nr_open = v;
            std::fclose(f);
          }
          return nr_open;
        }
        return RLIM_INFINITY;
      }
      if (key == "cpu") {
        // Seconds of CPU; "10m", "90s", "0" (zero seconds, not "none"). Rounded up.
        auto d = parse_duration(part);
        return static_cast<std::uint64_t>((d.count() + 999999999) / 1000000000);
      }
      if (key == "nofile" || key == "nproc") {
        std::uint64_t v = 0;
        auto [ptr, ec] = std::from_chars(part.data(), part.data() + part.size(), v);
        if (ec != std::errc() || ptr != part.data() + part.size() || part.empty())
          throw ConfigError("\"" + std::string(part) + "\" is not a whole number or infinity");
        return v;
      }
      return *parse_size(part, false);  // core, as, stack: sizes
    };
    try {
      const auto colon = text->find(':');
      std::uint64_t soft = one(std::string_view(*text).substr(0, colon));
      std::uint64_t hard =
          colon == std::string::npos ? soft : one(std::string_view(*text).substr(colon + 1));
      if (soft > hard) {
        issue(node, "limits." + key + ": the soft limit is above the hard one (\"" + *text +
                        "\"); write SOFT:HARD with SOFT <= HARD");
        return std::nullopt;
      }
      return std::make_pair(soft, hard);
    } catch (const ConfigError& e) {
      issue(node, "limits." + key + ": " + e.issues().front().message);
      return std::nullopt;
    }
  }

  void load_limits(JobConfig& job, const YAML::Node& node) {
    if (!node.IsMap()) {
      issue(node, "limits must be a map, e.g. { nofile: 65536, core: 0, as: 2GiB }");
      return;
    }
    check_keys(node, kLimitsKeys, "limits");
    const std::pair<const char*, int> resources[] = {
        {"nofile", RLIMIT_NOFILE}, {"nproc", RLIMIT_NPROC}, {"core", RLIMIT_CORE},
        {"as", RLIMIT_AS},         {"cpu", RLIMIT_CPU},     {"stack", RLIMIT_STACK}};
    for (const auto& [key, resource] : resources) {
      auto n = node[key];
      if (!n) continue;
      auto v = limit_value(n, key);
      if (!v) continue;
      // Without root, a hard limit can only be lowered (setrlimit(2)): say so now.
      rlimit current{};
      if (::geteuid() != 0 && ::getrlimit(resource, &current) == 0 &&
          current.rlim_max != RLIM_INFINITY && v->second > current.rlim_max) {
        issue(n, std::string("limits.") + key + ": " + std::to_string(v->second) +
                     " is above this process's hard limit (" + std::to_string(current.rlim_max) +
                     "), which only root may raise");
        continue;
      }
      job.limits.push_back(RlimitSpec{resource, key, v->first, v->second});
    }
  }

  void load_memory(JobConfig& job, const YAML::Node& node) {
    if (!node.IsMap()) {
      issue(node, "memory must be a map, e.g. { max_rss: 256MiB, hard_max_rss: 512MiB }");
      return;
    }
    check_keys(node, kMemoryKeys, "memory");
    auto size = [&](const char* key) -> std::uint64_t {
      auto n = node[key];
      if (!n) return 0;
      auto text = scalar(n, std::string("memory.") + key);
      if (!text) return 0;
      try {
        return *parse_size(*text, false);
      } catch (const ConfigError& e) {
        issue(n, std::string("memory.") + key + ": " + e.issues().front().message);
        return 0;
      }
    };
    job.memory.max_rss = size("max_rss");
    job.memory.hard_max_rss = size("hard_max_rss");
    if (job.memory.max_rss != 0 && job.memory.hard_max_rss != 0 &&
        job.memory.hard_max_rss < job.memory.max_rss)
      issue(node["hard_max_rss"], "memory.hard_max_rss is below memory.max_rss");
    if (auto b = node["budget"]) load_budget(job, b);
    if (auto m = node["measure"]) {
      auto how = one_of<bool>(m, "memory.measure", {{"rss", false}, {"pss", true}});
      if (how) job.memory.pss = *how;
    }
    if (auto i = node["interval"]) {
      if (auto d = duration(i, "memory.interval")) {
        if (d->count() < 100000000)
          issue(i, "memory.interval must be at least 100ms");
        else
          job.memory.interval = *d;
      }
    }
  }

  // `budget: 90%` (of the cgroup memory limit, resolved by validation) or a size.
  void load_budget(JobConfig& job, const YAML::Node& node) {
    job.memory.budget_mark = mark_of(node);
    auto text = scalar(node, "memory.budget");
    if (!text) return;
    if (!text->empty() && text->back() == '%') {
      std::string_view digits(text->data(), text->size() - 1);
      unsigned pct = 0;
      auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), pct);
      if (ec != std::errc() || ptr != digits.data() + digits.size() || digits.empty() || pct < 1 ||
          pct > 100) {
        issue(node, "memory.budget: \"" + *text +
                        "\" must be a whole percentage from 1% to 100% (of the cgroup memory "
                        "limit), or a size such as 2GiB");
        return;
      }
      job.memory.budget_percent = pct;
      return;
    }
    try {
      job.memory.budget = *parse_size(*text, false);
      if (job.memory.budget < (1ULL << 20))
        issue(node, "memory.budget: " + *text +
                        " is below 1MiB, which no pool fits in; give a size such as 2GiB or a "
                        "percentage such as 90%");
    } catch (const ConfigError& e) {
      issue(node, "memory.budget: " + e.issues().front().message +
                      " (or a percentage of the cgroup memory limit, such as 90%)");
    }
  }

  void load_cgroup(JobConfig& job, const YAML::Node& node) {
    auto& g = job.cgroup;
    g.mark = mark_of(node);
    if (!node.IsMap()) {
      issue(node,
            "cgroup must be a map, e.g. { memory_max: 512MiB, pids_max: 64, cpu_weight: 100 }");
      return;
    }
    check_keys(node, kCgroupKeys, "cgroup");
    auto size = [&](const char* key) -> std::uint64_t {
      auto n = node[key];
      if (!n) return 0;
      auto text = scalar(n, std::string("cgroup.") + key);
      if (!text) return 0;
      try {
        const auto v = *parse_size(*text, false);
        // Below a few MiB, the program is killed by its own exec.
        if (v < (4ULL << 20)) {
          issue(n, std::string("cgroup.") + key + ": " + *text +
                       " is below 4MiB, where no program can even start; give at least 4MiB");
          return 0;
        }
        return v;
      } catch (const ConfigError& e) {
        issue(n, std::string("cgroup.") + key + ": " + e.issues().front().message);
        return 0;
      }
    };
    g.memory_high = size("memory_high");
    g.memory_high_mark = mark_of(node["memory_high"]);
    g.memory_max = size("memory_max");
    if (g.memory_high != 0 && g.memory_max != 0 && g.memory_high > g.memory_max)
      issue(node["memory_high"], "cgroup.memory_high is above cgroup.memory_max");
    // pids.max takes up to PID_MAX_LIMIT (4194304); cpu.weight 1..10000 (cgroup-v2.rst).
    if (auto n = node["pids_max"])
      if (auto v = integer(n, "cgroup.pids_max", 1, 4194304)) g.pids_max = *v;
    if (auto n = node["cpu_weight"])
      if (auto v = integer(n, "cgroup.cpu_weight", 1, 10000))
        g.cpu_weight = static_cast<unsigned>(*v);
    if (!g.any() && node.IsMap() && node.size() == 0)
      issue(node, "cgroup is empty; set memory_max, memory_high, pids_max or cpu_weight");
  }

  void load_metrics(MetricsSpec& metrics, const YAML::Node& node) {
    metrics.mark = mark_of(node);
    if (!node.IsMap()) {
      issue(node,
            "metrics must be a map, e.g. { listen: \"127.0.0.1:9101\", textfile: "
            "/var/lib/node_exporter/corral.prom, interval: 15s }");
      return;
    }
    check_keys(node, kMetricsKeys, "metrics");
    if (auto l = node["listen"]) {
      if (auto text = scalar(l, "metrics.listen")) {
        try {
          ListenerSpec spec;
          spec.address = parse_listen_address(*text);
          spec.name = "metrics";
          spec.backlog = 64;
          spec.mark = mark_of(l);
          if (std::holds_alternative<SystemdAddress>(spec.address) || is_datagram(spec.address)) {
            issue(l, "metrics.listen must be a host:port or unix: address, not \"" + *text +
                         "\" (the metrics socket is corral's own, and speaks HTTP over TCP)");
          } else {
            if (auto* un = std::get_if<UnixAddress>(&spec.address); un && !un->abstract) {
              un->path = absolute(un->path);
              if (un->path.size() >= 108) issue(l, "unix socket path too long (108 bytes at most)");
            }
            metrics.listen = std::move(spec);
            metrics.listen_text = *text;
          }
        } catch (const ConfigError& e) {
          issue(l, "metrics.listen: " + e.issues().front().message);
        }
      }
    }
    if (auto t = node["textfile"]) {
      if (auto s = scalar(t, "metrics.textfile")) {
        if (s->empty() || s->back() == '/')
          issue(t, "metrics.textfile must name a file, e.g. /var/lib/node_exporter/corral.prom");
        else
          metrics.textfile = absolute(*s);
      }
    }
    if (auto i = node["interval"]) {
      if (auto d = duration(i, "metrics.interval")) {
        if (*d < std::chrono::milliseconds(100))
          issue(i, "metrics.interval must be at least 100ms");
        else if (!node["textfile"])
          issue(i, "metrics.interval applies to metrics.textfile; add textfile: or remove it");
        else
          metrics.interval = *d;
      }
    }
  }

  void load_stop_signal(JobConfig& job, const YAML::Node& node) {
    auto sig = one_of<int>(node, "stop_signal",
                           {{"TERM", SIGTERM},
                            {"QUIT", SIGQUIT},
                            {"INT", SIGINT},
                            {"HUP", SIGHUP},
                            {"USR1", SIGUSR1},
                            {"USR2", SIGUSR2},
                            {"WINCH", SIGWINCH}});
    if (sig) job.stop_signal = *sig;
  }

  void load_workers(JobConfig& job, const YAML::Node& node) {
    if (!node.IsMap()) {
      issue(node, "workers must be a map, e.g. { start: 4, min_spare: 2, max_spare: 8, max: 64 }");
      return;
    }
    check_keys(node, kWorkersKeys, "workers");
    auto& w = job.workers;
    if (auto n = node["start"]) {
      if (auto v = count(n, WorkersCount::start, "workers.start")) w.start = *v;
    }
    if (auto n = node["min_spare"]) {
      if (auto v = count(n, WorkersCount::min_spare, "workers.min_spare")) w.min_spare = *v;
    }
    if (auto n = node["max_spare"]) {
      if (auto v = count(n, WorkersCount::max_spare, "workers.max_spare")) w.max_spare = *v;
    }
    if (auto n = node["max"]) {
      if (auto v = count(n, WorkersCount::max, "workers.max")) w.max = *v;
    }
    if (auto n = node["max_requests"]) {
      if (auto v = integer(n, "workers.max_requests", 0, UINT64_MAX / 2)) w.max_requests = *v;
    }
    if (auto n = node["start_timeout"]) {
      if (auto d = duration(n, "workers.start_timeout")) w.start_timeout = *d;
    }
    if (auto n = node["max_lifetime"]) {
      if (auto d = duration(n, "workers.max_lifetime")) w.max_lifetime = *d;
    }
    if (auto n = node["max_lifetime_jitter"]) {
      if (auto d = duration(n, "workers.max_lifetime_jitter")) w.max_lifetime_jitter = *d;
      if (w.max_lifetime.count() == 0)
        issue(n, "workers.max_lifetime_jitter needs workers.max_lifetime (the base it spreads)");
    }
    if (auto n = node["max_requests_jitter"]) {
      if (auto v = integer(n, "workers.max_requests_jitter", 0, UINT64_MAX / 4))
        w.max_requests_jitter = *v;
      if (w.max_requests == 0)
        issue(n, "workers.max_requests_jitter needs workers.max_requests (the base it spreads)");
    }
    auto is_auto = [&](const char* key) {
      auto n = node[key];
      return n && n.IsScalar() && n.Scalar() == "auto";
    };
    w.start_auto = is_auto("start");
    w.max_auto = is_auto("max");
    if (w.max_auto) {
      // max came from the container: the bounds the user did not set follow it down
      // (explicit conflicts stay errors, below).
      if (!node["start"] || w.start_auto) w.start = std::min(w.start, w.max);
      if (!node["min_spare"]) w.min_spare = std::min(w.min_spare, w.max);
      if (!node["max_spare"]) w.max_spare = std::min(std::max(w.max_spare, w.min_spare), w.max);
    } else if (w.start_auto && !node["max"]) {
      w.max = std::max(w.max, w.start);
    }
    if (w.start_auto && w.start > w.max) w.start = w.max;
    workers_marks_[job.name] = mark_of(node);
  }

 public:
  bool check_users_ = true;
  std::map<std::string, SourceMark> job_command_marks_, user_marks_, group_marks_, cwd_marks_,
      workers_marks_;

 private:
  std::string file_;
  std::string base_dir_;
  std::vector<ConfigIssue> issues_;
};

struct Marks {
  const std::map<std::string, SourceMark>* command = nullptr;
  const std::map<std::string, SourceMark>* user = nullptr;
  const std::map<std::string, SourceMark>* group = nullptr;
  const std::map<std::string, SourceMark>* cwd = nullptr;
  const std::map<std::string, SourceMark>* workers = nullptr;
};

SourceMark lookup(const std::map<std::string, SourceMark>* marks, const JobConfig& job) {
  if (marks != nullptr) {
    auto it = marks->find(job.name);
    if (it != marks->end()) return it->second;
  }
  return job.mark;
}

struct CountRange {
  unsigned min;
  unsigned max;
  const char* key;
};

constexpr CountRange range_of(WorkersCount which) {
  switch (which) {
    case WorkersCount::start: return {0, kMaxWorkers, "workers.start"};
    case WorkersCount::min_spare: return {0, kMaxWorkers, "workers.min_spare"};
    case WorkersCount::max_spare: return {1, kMaxWorkers, "workers.max_spare"};
    case WorkersCount::max: return {1, kMaxWorkers, "workers.max"};
  }
  return {0, kMaxWorkers, "workers"};
}

// root, or CAP_SETUID and CAP_SETGID in the effective set (systemd's AmbientCapabilities=).
bool can_change_user() {
  if (::geteuid() == 0) return true;
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  std::array<__user_cap_data_struct, 2> data{};
  if (::syscall(SYS_capget, &header, data.data()) != 0) return false;
  auto has = [&](unsigned cap) { return (data[cap / 32].effective & (1U << (cap % 32))) != 0; };
  return has(CAP_SETUID) && has(CAP_SETGID);
}

// MAX_ARG_STRLEN (linux/binfmts.h): the longest single argument or "KEY=value" exec takes.
constexpr std::size_t kMaxArgStrlen = 32 * 4096;
// Room kept for what corral adds to a worker's environment itself (LISTEN_*, CORRAL_*,
// HOME, USER, LOGNAME; inetd's REMOTE_* and TCP*), beyond the listener names and the user.
constexpr std::size_t kCorralEnvReserve = 4096;
constexpr std::size_t kCorralEnvCount = 24;

// What exec accepts for argv + envp, strings and pointers together: sysconf(_SC_ARG_MAX)
// (a quarter of the stack limit), never above 3/4 of the kernel's _STK_LIM of 8 MiB
// (fs/exec.c, bprm_stack_limits), never below the 128 KiB floor.
std::size_t exec_limit() {
  constexpr std::size_t kKernelCap = 6U << 20;
  long arg_max = ::sysconf(_SC_ARG_MAX);
  if (arg_max <= 0) return 128 * 1024;
  return std::min<std::size_t>(static_cast<std::size_t>(arg_max), kKernelCap);
}

std::string with_commas(std::size_t n) {
  std::string digits = std::to_string(n);
  std::string out;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i != 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

// exec fails with E2BIG when one string is longer than MAX_ARG_STRLEN or all of them and
// their pointers exceed exec_limit(); corral's own variables are counted as a reserve.
void check_exec_size(const JobConfig& job, const std::vector<std::string>& inherited,
                     const std::function<void(std::string)>& add) {
  std::size_t strings = 0;
  for (std::size_t i = 0; i < job.command.size(); ++i) {
    const auto& arg = job.command[i];
    if (arg.find('\0') != std::string::npos)
      add("command argument " + std::to_string(i) + " contains a NUL byte");
    if (arg.size() + 1 > kMaxArgStrlen)
      add("command argument " + std::to_string(i) + " is " + with_commas(arg.size()) +
          " bytes long; exec takes at most " + with_commas(kMaxArgStrlen) +
          " bytes per argument (MAX_ARG_STRLEN)");
    strings += arg.size() + 1;
  }
  std::unordered_map<std::string_view, bool> from_job;
  for (const auto& [k, v] : job.env) {
    from_job[k] = true;
    if (v.find('\0') != std::string::npos) add("env." + k + " contains a NUL byte");
  }
  const auto env = merge_environment(inherited, job.env);
  std::size_t inherited_count = 0;
  for (const auto& e : env) {
    std::string_view key_view(e.data(), std::min(e.find('='), e.size()));
    if (from_job.count(key_view) == 0) ++inherited_count;
    if (e.size() + 1 > kMaxArgStrlen) {
      std::string key(key_view);
      add((from_job.count(key) != 0 ? "env." + key : "the inherited environment variable " + key) +
          " is " + with_commas(e.size()) + " bytes long (as KEY=value); exec takes at most " +
          with_commas(kMaxArgStrlen) + " bytes per variable (MAX_ARG_STRLEN)");
    }
    strings += e.size() + 1;
  }
  std::size_t reserve = kCorralEnvReserve + job.name.size() + 3 * job.user.size();
  for (const auto& l : job.listeners) reserve += l.name.size() + 1;
  const std::size_t pointers =
      (job.command.size() + env.size() + kCorralEnvCount + 2) * sizeof(char*);
  const std::size_t total = strings + pointers + reserve;
  const std::size_t limit = exec_limit();
  if (total > limit)
    add("command and environment come to " + with_commas(total) + " bytes (" +
        with_commas(job.command.size()) + " arguments, " + with_commas(env.size()) +
        " environment variables, " + with_commas(inherited_count) +
        " of them inherited from this process, pointers and " + with_commas(reserve) +
        " bytes kept for corral's own variables); exec takes at most " + with_commas(limit) +
        " (sysconf(_SC_ARG_MAX)) and would fail with E2BIG: shorten env or command");
}

// Listeners that the kernel can never bind at the same time (beyond exact duplicates):
// a wildcard and a specific address on one port, ":P" and anything on P, and two
// spellings of one unix socket path.
class OverlapChecker {
 public:
  explicit OverlapChecker(std::vector<ConfigIssue>& issues) : issues_(issues) {}

  void add(const JobConfig& job, const ListenerSpec& l) {
    if (const auto* tcp = std::get_if<TcpAddress>(&l.address)) {
      if (tcp->port != 0) add_tcp(job, l, *tcp);
    } else if (const auto* un = std::get_if<UnixAddress>(&l.address)) {
      add_unix(job, l, *un);
    }
  }

 private:
  enum class Kind { dual, v4any, v4, v6any, v6 };
  struct Taken {
    std::string text;
    std::string job;
    Kind kind;
  };
  struct PortUse {
    std::optional<Taken> first, dual, v4any, v4, v6any, v6;
  };

  static Kind kind_of(const TcpAddress& tcp) {
    if (tcp.host.empty()) return Kind::dual;
    in_addr a4{};
    if (::inet_pton(AF_INET, tcp.host.c_str(), &a4) == 1)
      return a4.s_addr == htonl(INADDR_ANY) ? Kind::v4any : Kind::v4;
    in6_addr a6{};
    if (::inet_pton(AF_INET6, tcp.host.c_str(), &a6) == 1 &&
        std::memcmp(&a6, &in6addr_any, sizeof a6) == 0)
      return Kind::v6any;
    return Kind::v6;
  }

  static std::string why(Kind a, Kind b, std::uint16_t port) {
    auto p = std::to_string(port);
    if (a == Kind::dual || b == Kind::dual)
      return "\":" + p + "\" takes port " + p + " on every IPv4 and IPv6 address";
    if (a == Kind::v4any || b == Kind::v4any)
      return "0.0.0.0 takes port " + p + " on every IPv4 address";
    return "[::] takes port " + p + " on every IPv6 address";
  }

  void conflict(const JobConfig& job, const ListenerSpec& l, const std::string& text,
                const Taken& other, const std::string& reason) {
    issues_.push_back(ConfigIssue{l.mark, "job \"" + job.name + "\": address " + text +
                                              " can never be bound together with " + other.text +
                                              " of job \"" + other.job + "\": " + reason});
  }

  void add_tcp(const JobConfig& job, const ListenerSpec& l, const TcpAddress& tcp) {
    auto& use = ports_[{tcp.datagram, tcp.port}];  // UDP ports are not TCP ports
    const Kind kind = kind_of(tcp);
    const std::string text = to_string(l.address);
    const std::optional<Taken>* against = nullptr;
    switch (kind) {
      case Kind::dual: against = &use.first; break;
      case Kind::v4any: against = use.dual ? &use.dual : &use.v4; break;
      case Kind::v4: against = use.dual ? &use.dual : &use.v4any; break;
      case Kind::v6any: against = use.dual ? &use.dual : &use.v6; break;
      case Kind::v6: against = use.dual ? &use.dual : &use.v6any; break;
    }
    // The same text twice is reported as a duplicate already.
    if (*against && (*against)->text != text)
      conflict(job, l, text, **against, why(kind, (*against)->kind, tcp.port));
    Taken taken{text, job.name, kind};
    if (!use.first) use.first = taken;
    auto& slot = kind == Kind::dual    ? use.dual
                 : kind == Kind::v4any ? use.v4any
                 : kind == Kind::v6any ? use.v6any
                 : kind == Kind::v4    ? use.v4
                                       : use.v6;
    if (!slot) slot = taken;
    if (kind == Kind::v4any && !use.v4) use.v4 = taken;
    if (kind == Kind::v6any && !use.v6) use.v6 = taken;
  }

  // The parent directory resolved as far as it exists (symbolic links included), then
  // "." and ".." removed: "/run/./a", "/run//a" and "/run/x/../a" are all /run/a.
  static std::string normal_path(const std::string& path) {
    fs::path p(path);
    std::error_code ec;
    auto parent = fs::weakly_canonical(p.parent_path(), ec);
    if (ec || parent.empty()) return p.lexically_normal().string();
    return (parent / p.filename()).lexically_normal().string();
  }

  void add_unix(const JobConfig& job, const ListenerSpec& l, const UnixAddress& un) {
    const std::string text = to_string(l.address);
    // An abstract name is no file; its namespace is per socket type.
    const std::string where = un.abstract
                                  ? std::string(un.datagram ? "dgram @" : "stream @") + un.path
                                  : normal_path(un.path);
    auto [it, inserted] = unix_.emplace(where, Taken{text, job.name, Kind::v4});
    if (!inserted && it->second.text != text)
      conflict(job, l, text, it->second,
               un.abstract ? "both name the abstract socket " + to_string(l.address)
                           : "both name the socket file " + it->first);
  }

  std::vector<ConfigIssue>& issues_;
  std::map<std::pair<bool, std::uint16_t>, PortUse> ports_;
  std::map<std::string, Taken> unix_;
};

// How many sockets systemd passed this process under LISTEN_FDNAMES entry `name`, when
// it passed any (corral run under a socket unit reads its file before adopting them);
// nullopt when that cannot be known here (corral check, a reload).
std::optional<std::size_t> systemd_sockets_named(const std::string& name) {
  const char* pid = std::getenv("LISTEN_PID");
  const char* names = std::getenv("LISTEN_FDNAMES");
  if (pid == nullptr || names == nullptr || std::to_string(::getpid()) != pid) return std::nullopt;
  std::size_t n = 0;
  std::istringstream in(names);
  for (std::string entry; std::getline(in, entry, ':');) n += entry == name ? 1 : 0;
  return n;
}

// The fastcgi constraints, env_conventions in a mode that passes no listener, and each
// $(corral.sockets.NAME) naming exactly one socket. Listener names are set by now.
void validate_compat(JobConfig& job,
                     const std::function<void(const SourceMark&, std::string)>& add) {
  auto& compat = job.compat;
  if (!compat.refs_found) {  // the command line: no position but the job's
    compat.refs_found = true;
    for (std::size_t i = 1; i < job.command.size(); ++i) {
      try {
        for (auto& ref : find_socket_refs(job.command[i], i)) compat.socket_refs.push_back(ref);
      } catch (const ConfigError& e) {
        add(job.mark, "command argument " + std::to_string(i) + ": " + e.issues().front().message);
      }
    }
  }
  auto sockets_of = [](const ListenerSpec& l) -> std::optional<std::size_t> {
    if (const auto* sd = std::get_if<SystemdAddress>(&l.address))
      return systemd_sockets_named(sd->name);
    return 1;
  };
  const bool extra =
      compat.speaks(EnvConvention::einhorn) || compat.speaks(EnvConvention::server_starter);
  if (job.mode == Mode::inetd && extra)
    add(compat.conventions_mark,
        "env_conventions einhorn and server_starter describe inherited listeners, and an inetd "
        "program gets none (its connection is on fds 0 and 1)");
  if (compat.fastcgi) {
    if (job.mode != Mode::plain)
      add(compat.fastcgi_mark, std::string("fastcgi: true needs mode: plain, not ") +
                                   to_string(job.mode) +
                                   " (a FastCGI application writes no scoreboard slot)");
    if (job.listeners.size() != 1)
      add(compat.fastcgi_mark, "fastcgi: true needs exactly one listener (it goes on fd 0), not " +
                                   std::to_string(job.listeners.size()));
    else if (auto n = sockets_of(job.listeners.front()); n && *n != 1)
      add(compat.fastcgi_mark, "fastcgi: true needs exactly one listener (it goes on fd 0), and " +
                                   to_string(job.listeners.front().address) + " stands for " +
                                   std::to_string(*n) + " sockets passed by systemd");
    if (extra)
      add(compat.fastcgi_mark,
          "fastcgi: true passes the listener on fd 0 with no variables; env_conventions einhorn "
          "and server_starter do not apply to it");
  }
  for (const auto& ref : compat.socket_refs) {
    const std::string what = "$(corral.sockets." + ref.name + ")";
    if (job.mode == Mode::inetd) {
      add(ref.mark, what +
                        ": an inetd program gets no listener, only its connection on fds 0 "
                        "and 1");
      continue;
    }
    std::vector<const ListenerSpec*> named;
    std::vector<std::string> known;
    for (const auto& l : job.listeners) {
      if (l.name == ref.name) named.push_back(&l);
      if (std::find(known.begin(), known.end(), l.name) == known.end()) known.push_back(l.name);
    }
    if (named.empty()) {
      add(ref.mark, what + ": the job has no listener named \"" + ref.name + "\"" +
                        (known.empty() ? std::string(" (it has no listener)")
                                       : " (its listeners: " + join(known) + ")"));
    } else if (named.size() > 1) {
      add(ref.mark, what + " stands for " + std::to_string(named.size()) + " listeners named \"" +
                        ref.name +
                        "\", and one number can name one fd; give each listener its own \"name:\"");
    } else if (auto n = sockets_of(*named.front()); n && *n != 1) {
      add(ref.mark, what + " stands for " + std::to_string(*n) + " sockets systemd passed as \"" +
                        ref.name + "\" (LISTEN_FDNAMES), and one number can name one fd");
    }
  }
}

// memory.budget against the cgroup memory limit, and cgroup: against the hierarchies and
// this process's privileges.
template <typename Add>
void validate_resources(Config& config, JobConfig& job, const CheckOptions& options, Add add) {
  auto warn = [&](const SourceMark& m, const std::string& msg) {
    config.warnings.push_back(ConfigIssue{m, "warning: job \"" + job.name + "\": " + msg});
  };
  auto& mem = job.memory;
  if (mem.budget_percent != 0) {
    if (const auto limit = container_limits().memory_bytes) {
      mem.budget = *limit / 100 * mem.budget_percent;
    } else {
      mem.budget = 0;
      warn(mem.budget_mark, "memory.budget " + std::to_string(mem.budget_percent) +
                                "% is of the cgroup memory limit, and corral's cgroup has none; "
                                "the budget is off (give a size, such as 2GiB, to have one)");
    }
  }
  if ((mem.budget != 0 || mem.budget_percent != 0) && job.mode == Mode::plain)
    add(mem.budget_mark,
        "memory.budget applies to modes prefork and inetd (a plain job keeps a fixed number "
        "of copies); bound each copy with max_rss, hard_max_rss or cgroup.memory_max");
  const auto& g = job.cgroup;
  if (!g.any()) return;
  const auto& places = cgroup_places();
  CgroupValues values{g.memory_high, g.memory_max, g.pids_max, g.cpu_weight};
  std::vector<std::string> missing, v1;
  for (auto c : cgroup_controllers(values)) {
    const char* name = c == CgroupController::memory ? "memory"
                       : c == CgroupController::pids ? "pids"
                                                     : "cpu";
    const auto& place = places.of(c);
    if (!place.found()) {
      missing.emplace_back(name);
    } else if (!place.v2) {
      v1.emplace_back(name);
    }
  }
  if (!missing.empty())
    warn(g.mark, "cgroup: no cgroup hierarchy here has the " + join(missing) +
                     " controller; the job runs without per-worker cgroups, and memory_max "
                     "falls back to RSS sampling");
  if (g.memory_high != 0 && places.memory.found() && !places.memory.v2)
    warn(g.memory_high_mark,
         "cgroup.memory_high has no cgroup v1 equivalent (memory is a v1 controller here); "
         "it is ignored: use memory_max, or memory.max_rss to retire a worker gracefully");
  if (::geteuid() != 0) {
    std::string why;
    if (!v1.empty()) {
      why = "the " + join(v1) + " controller" + (v1.size() > 1 ? "s are" : " is") +
            " cgroup v1 here, where only root creates cgroups";
    } else if (places.memory.found() && ::access(places.memory.dir.c_str(), W_OK) != 0) {
      why = "corral's cgroup " + places.memory.dir +
            " is not delegated to it (run the unit with Delegate=yes)";
    }
    if (!why.empty()) {
      const std::string msg =
          "cgroup: needs root or a delegated cgroup v2 subtree, and this "
          "corral runs as uid " +
          std::to_string(::geteuid()) + ": " + why;
      if (options.for_run)
        add(g.mark, msg);
      else
        warn(g.mark, msg + "; \"corral run\" would refuse it");
    }
  }
}

// Checks that need the whole model: ranges between keys, the system (users, files),
// duplicates across jobs.
void validate_model(Config& config, const CheckOptions& options, const Marks& marks,
                    const std::string& base_dir, std::vector<ConfigIssue>& issues) {
  std::map<std::string, std::string> address_owner;  // canonical address -> job
  std::set<std::string> names;
  OverlapChecker overlaps(issues);
  const auto inherited = inheritable_environment();
  const bool may_change_user = can_change_user();
  for (auto& job : config.jobs) {
    auto add = [&](const SourceMark& m, std::string msg) {
      issues.push_back(ConfigIssue{m, "job \"" + job.name + "\": " + std::move(msg)});
    };
    if (!names.insert(job.name).second) add(job.mark, "defined twice");
    const auto& w = job.workers;
    auto wmark = lookup(marks.workers, job);
    // The same ranges as parse_workers_count, for a model built without it.
    for (auto [which, value] : {std::pair{WorkersCount::start, w.start},
                                {WorkersCount::min_spare, w.min_spare},
                                {WorkersCount::max_spare, w.max_spare},
                                {WorkersCount::max, w.max}}) {
      auto r = range_of(which);
      if (value < r.min || value > r.max)
        add(wmark, std::string(r.key) + " (" + std::to_string(value) + ") must be between " +
                       std::to_string(r.min) + " and " + std::to_string(r.max));
    }
    if (job.mode != Mode::plain) {
      if (w.min_spare > w.max_spare)
        add(wmark, "workers.min_spare (" + std::to_string(w.min_spare) +
                       ") must not exceed workers.max_spare (" + std::to_string(w.max_spare) + ")");
      if (w.min_spare > w.max)
        add(wmark, "workers.min_spare (" + std::to_string(w.min_spare) +
                       ") must not exceed workers.max (" + std::to_string(w.max) + ")");
      if (job.listeners.empty())
        add(job.mark, "mode " + std::string(to_string(job.mode)) +
                          " needs at least one address under \"listen:\"");
    }
    if (w.start > w.max)
      add(wmark, "workers.start (" + std::to_string(w.start) + ") must not exceed workers.max (" +
                     std::to_string(w.max) + ")");
    if (job.mode == Mode::plain && w.start == 0) add(wmark, "plain mode needs workers.start >= 1");
    if (job.mode != Mode::inetd && job.max_per_source != 0)
      add(job.mark, "max_per_source applies to mode inetd only");
    if (job.mode == Mode::inetd && job.accept_mutex == AcceptMutex::epoll)
      add(job.mark, "accept_mutex epoll is not available in inetd mode");
    if (job.mode != Mode::inetd && job.inetd.mark.line != 0)
      add(job.inetd.mark, "inetd: applies to mode inetd only (this job is mode " +
                              std::string(to_string(job.mode)) + ")");
    if (job.inetd.warm_header != WarmHeader::none && !job.inetd.warm)
      add(job.inetd.mark,
          "inetd.warm_header needs inetd.warm: true (a cold inetd program gets REMOTE_ADDR and "
          "the TCP* variables instead)");

    for (const auto& l : job.listeners) {
      if (is_datagram(l.address) && job.mode != Mode::plain)
        add(l.mark.line > 0 ? l.mark : job.mark,
            to_string(l.address) + " is a datagram socket, which only mode plain passes on (" +
                std::string(to_string(job.mode)) +
                " workers accept connections, and a datagram socket has none); use mode: plain");
    }
    for (auto& l : job.listeners) {
      if (l.name.empty()) l.name = job.name;
      if (const auto* tcp = std::get_if<TcpAddress>(&l.address); tcp && tcp->port == 0) continue;
      auto key = to_string(l.address);
      auto [it, inserted] = address_owner.emplace(key, job.name);
      if (!inserted)
        issues.push_back(ConfigIssue{l.mark, "job \"" + job.name + "\": address " + key +
                                                 " is already used by job \"" + it->second + "\""});
    }
    for (const auto& l : job.listeners) overlaps.add(job, l);
    validate_compat(job, [&](const SourceMark& m, std::string msg) {
      add(m.line > 0 ? m : job.mark, std::move(msg));
    });
    check_exec_size(job, inherited, [&](std::string msg) { add(job.mark, std::move(msg)); });
    validate_resources(config, job, options, add);

    if (!job.command.empty()) {
      auto cmark = lookup(marks.command, job);
      const std::string& dir = base_dir;
      std::string resolved = resolve_command(job.command[0], dir);
      if (!resolved.empty()) {
        job.command[0] = resolved;
      } else if (options.check_commands) {
        add(cmark, "command \"" + job.command[0] + "\" is not an executable file" +
                       (job.command[0].find('/') == std::string::npos ? " found in PATH" : "") +
                       "; check the path and its permissions");
      } else if (job.command[0].find('/') != std::string::npos && job.command[0].front() != '/') {
        job.command[0] = (fs::path(base_dir) / job.command[0]).lexically_normal().string();
      }
    }
    if (!job.cwd.empty() && options.check_commands) {
      std::error_code ec;
      if (!fs::is_directory(job.cwd, ec))
        add(lookup(marks.cwd, job), "cwd " + job.cwd + " is not a directory");
    }
    if (!job.user.empty() && !may_change_user) {
      std::string msg = "user: " + job.user + " needs root (or CAP_SETUID and CAP_SETGID), " +
                        "and this corral runs as uid " + std::to_string(::geteuid());
      if (options.for_run)
        add(lookup(marks.user, job), msg);
      else
        config.warnings.push_back(ConfigIssue{
            lookup(marks.user, job),
            "warning: job \"" + job.name + "\": " + msg + "; \"corral run\" would refuse it"});
    }
    if (options.check_users) {
      if (!job.user.empty() && !user_exists(job.user))
        add(lookup(marks.user, job), "user \"" + job.user + "\" does not exist");
      if (!job.group.empty() && !group_exists(job.group))
        add(lookup(marks.group, job), "group \"" + job.group + "\" does not exist");
    }
  }
}

std::string directory_of(const std::string& file) {
  auto parent = fs::absolute(fs::path(file)).parent_path();
  return parent.lexically_normal().string();
}

}  // namespace

const char* to_string(Mode mode) {
  switch (mode) {
    case Mode::prefork: return "prefork";
    case Mode::inetd: return "inetd";
    case Mode::plain: return "plain";
  }
  return "?";
}

const char* to_string(AcceptMutex kind) {
  switch (kind) {
    case AcceptMutex::automatic: return "auto";
    case AcceptMutex::fcntl: return "fcntl";
    case AcceptMutex::pipe: return "pipe";
    case AcceptMutex::epoll: return "epoll";
    case AcceptMutex::none: return "none";
  }
  return "?";
}

std::string resolve_command(const std::string& program, const std::string& base_dir) {
  if (program.empty()) return "";
  if (program.find('/') != std::string::npos) {
    std::string path = program.front() == '/'
                           ? program
                           : (fs::path(base_dir) / program).lexically_normal().string();
    return is_executable_file(path) ? path : "";
  }
  const char* env_path = std::getenv("PATH");
  std::string search = env_path != nullptr ? env_path : "/usr/local/bin:/usr/bin:/bin";
  std::istringstream dirs(search);
  for (std::string dir; std::getline(dirs, dir, ':');) {
    if (dir.empty()) dir = ".";
    std::string candidate = (fs::path(dir) / program).string();
    if (is_executable_file(candidate)) return candidate;
  }
  return "";
}

Config load_config_text(const std::string& text, const std::string& file,
                        const CheckOptions& options) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    // yaml-cpp's guard against deep nesting (which would overflow the stack) throws
    // "bad file"; nothing else can while parsing text.
    throw ConfigError(
        SourceMark{file, e.mark.line + 1, e.mark.column + 1},
        e.msg == YAML::ErrorMsg::BAD_FILE
            ? "lists and maps nested too deeply (yaml-cpp stops at a few hundred levels)"
            : e.msg);
  }
  Loader loader(file, directory_of(file));
  loader.check_users_ = options.check_users;
  Config config;
  try {
    config = loader.load(root);
  } catch (const YAML::Exception& e) {
    loader.issues().push_back(
        ConfigIssue{SourceMark{file, e.mark.line + 1, e.mark.column + 1}, e.msg});
  }
  Marks marks{&loader.job_command_marks_, &loader.user_marks_, &loader.group_marks_,
              &loader.cwd_marks_, &loader.workers_marks_};
  validate_model(config, options, marks, directory_of(file), loader.issues());
  if (!loader.issues().empty()) throw ConfigError(std::move(loader.issues()));
  return config;
}

std::string read_config_text(const std::string& path) {
  auto fail = [&](const std::string& why) { throw ConfigError(SourceMark{path, 0, 0}, why); };
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) fail(std::string("cannot read the file: ") + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0)
    fail(std::string("cannot read the file: ") + std::strerror(errno));
  if (S_ISDIR(st.st_mode)) fail("is a directory, not a configuration file");
  const std::string too_big = "the file is larger than " + with_commas(kMaxConfigBytes) +
                              " bytes (4 MiB), the most corral reads as a configuration";
  if (S_ISREG(st.st_mode) && static_cast<std::uint64_t>(st.st_size) > kMaxConfigBytes)
    fail(too_big + " (it has " + with_commas(static_cast<std::size_t>(st.st_size)) + ")");
  // Read at most one byte beyond the limit: a pipe or a growing file is bounded too.
  std::string text;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail(std::string("cannot read the file: ") + std::strerror(errno));
    if (n == 0) break;
    text.append(buf, static_cast<std::size_t>(n));
    if (text.size() > kMaxConfigBytes) fail(too_big);
  }
  return text;
}

Config load_config_file(const std::string& path, const CheckOptions& options) {
  return load_config_text(read_config_text(path), path, options);
}

unsigned parse_workers_count(WorkersCount which, std::string_view text, const std::string& what) {
  const auto r = range_of(which);
  if (text == "auto") {
    // docs/CONTAINERS.md: C = the CPU quota rounded up, or the CPUs of the affinity mask.
    const unsigned c = container_limits().cpus;
    if (which == WorkersCount::start) return std::min(c, r.max);
    if (which == WorkersCount::max) return std::min(4 * c, r.max);
    throw ConfigError(what + ": \"auto\" applies to workers.start and workers.max only; give a " +
                      "number between " + std::to_string(r.min) + " and " + std::to_string(r.max));
  }
  std::uint64_t value = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || (ec != std::errc() && ec != std::errc::result_out_of_range) ||
      ptr != text.data() + text.size())
    throw ConfigError(what + " must be a whole number, not \"" + std::string(text) + "\"");
  if (ec == std::errc::result_out_of_range || value < r.min || value > r.max)
    throw ConfigError(what + " must be between " + std::to_string(r.min) + " and " +
                      std::to_string(r.max) + ", not " + std::string(text));
  return static_cast<unsigned>(value);
}

std::vector<SocketRef> find_socket_refs(std::string_view text, std::size_t arg) {
  constexpr std::string_view kStart = "$(corral.";
  constexpr std::string_view kSockets = "$(corral.sockets.";
  std::vector<SocketRef> refs;
  for (std::size_t at = text.find(kStart); at != std::string_view::npos;
       at = text.find(kStart, at)) {
    auto close = text.find(')', at);
    const std::string whole(
        text.substr(at, close == std::string_view::npos ? std::string_view::npos : close - at + 1));
    if (close == std::string_view::npos)
      throw ConfigError("\"" + whole + "\" is not closed; write $(corral.sockets.NAME)");
    if (text.substr(at, kSockets.size()) != kSockets)
      throw ConfigError("\"" + whole +
                        "\" is not a substitution corral knows; the one it has is "
                        "$(corral.sockets.NAME), the fd number of listener NAME");
    std::string name(text.substr(at + kSockets.size(), close - at - kSockets.size()));
    const bool bad =
        name.empty() || std::any_of(name.begin(), name.end(), [](char c) {
          return c == ':' || c == '$' || c == '(' || std::isspace(static_cast<unsigned char>(c));
        });
    if (bad)
      throw ConfigError("\"" + whole + "\": NAME must be a listener's name (non-empty, no ':')");
    refs.push_back(SocketRef{arg, at, close - at + 1, std::move(name), {}});
    at = close + 1;
  }
  return refs;
}

std::vector<std::string> merge_environment(
    std::vector<std::string> env, const std::vector<std::pair<std::string, std::string>>& add) {
  // KEY -> its position in env: one look-up per entry instead of a search of env.
  std::unordered_map<std::string, std::size_t> index;
  index.reserve(env.size() + add.size());
  for (std::size_t i = 0; i < env.size(); ++i)
    index.emplace(env[i].substr(0, env[i].find('=')), i);  // the first wins, as a search would
  for (const auto& [key, value] : add) {
    auto [it, inserted] = index.emplace(key, env.size());
    if (inserted)
      env.push_back(key + "=" + value);
    else
      env[it->second] = key + "=" + value;
  }
  return env;
}

std::vector<std::string> status_scoreboard_dirs(const Config& config) {
  if (!config.scoreboard_dir.empty()) return {config.scoreboard_dir};
  std::vector<std::string> dirs;
  if (!config.file.empty()) {
    std::string name = fs::path(config.file).filename().string();
    if (name.size() > 5 && name.ends_with(".yaml")) name.resize(name.size() - 5);
    if (!name.empty() && name != "." && name != "..") dirs.push_back("/run/corral/" + name);
  }
  dirs.emplace_back("/run/corral");
  dirs.push_back(default_scoreboard_dir());
  std::vector<std::string> unique;
  for (auto& d : dirs) {
    if (std::find(unique.begin(), unique.end(), d) == unique.end()) unique.push_back(std::move(d));
  }
  return unique;
}

void validate_config(Config& config, const CheckOptions& options) {
  std::vector<ConfigIssue> issues;
  std::error_code ec;
  validate_model(config, options, Marks{}, fs::current_path(ec).string(), issues);
  if (!issues.empty()) throw ConfigError(std::move(issues));
}

std::string default_scoreboard_dir() {
  if (const char* d = std::getenv("RUNTIME_DIRECTORY"); d != nullptr && *d != '\0') {
    // systemd may list several directories separated by ':'; the first is ours.
    std::string dirs(d);
    return dirs.substr(0, dirs.find(':'));
  }
  if (::geteuid() == 0) return "/run/corral";
  if (const char* x = std::getenv("XDG_RUNTIME_DIR"); x != nullptr && *x == '/')
    return std::string(x) + "/corral";
  return "/tmp/corral-" + std::to_string(::getuid());
}

std::string scoreboard_dir_of(const Config& config) {
  return config.scoreboard_dir.empty() ? default_scoreboard_dir() : config.scoreboard_dir;
}

std::string summarize(const Config& config) {
  std::ostringstream out;
  out << (config.file.empty() ? "command line" : config.file) << ": " << config.jobs.size()
      << (config.jobs.size() == 1 ? " job" : " jobs") << ", scoreboards in "
      << scoreboard_dir_of(config) << "\n";
  for (const auto& job : config.jobs) {
    out << "  " << job.name << ": " << to_string(job.mode) << ", ";
    if (job.mode == Mode::plain) {
      out << (job.workers.start_auto ? "auto (= " : "") << job.workers.start
          << (job.workers.start_auto ? ")" : "") << " copies";
    } else {
      out << "start " << (job.workers.start_auto ? "auto (= " : "") << job.workers.start
          << (job.workers.start_auto ? ")" : "") << ", spare " << job.workers.min_spare << ".."
          << job.workers.max_spare << ", max " << (job.workers.max_auto ? "auto (= " : "")
          << job.workers.max << (job.workers.max_auto ? ")" : "");
    }
    out << ", listen";
    if (job.listeners.empty()) out << " (none)";
    for (const auto& l : job.listeners) {
      out << " " << to_string(l.address);
      if (!l.access.empty())
        out << " (allow " << l.access.allow.size() << ", deny " << l.access.deny.size() << ")";
    }
    out << ", command " << (job.command.empty() ? "?" : job.command[0]);
    if (job.compat.fastcgi) out << ", fastcgi (listener on fd 0)";
    if (job.compat.speaks(EnvConvention::einhorn)) out << ", einhorn variables";
    if (job.compat.speaks(EnvConvention::server_starter)) out << ", Server::Starter variables";
    out << "\n";
  }
  const auto& m = config.metrics;
  if (m.listen || !m.textfile.empty()) {
    out << "  metrics:";
    if (m.listen) out << " listen " << to_string(m.listen->address);
    if (!m.textfile.empty())
      out << " textfile " << m.textfile << " every " << format_duration(m.interval);
    out << "\n";
  }
  return out.str();
}

}  // namespace corral
