// lib/config: the YAML contract of PRODUCT.md, its defaults, and every error path
// `corral check` reports (as FILE:LINE:COLUMN: message).
#include "config/config.h"

#include "container/limits.h"

#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace {

using namespace std::chrono_literals;

const std::string kFile = "/tmp/x/test.yaml";
const corral::CheckOptions kNoChecks{false, false};
const corral::CheckOptions kAllChecks{true, true};

corral::Config load(const std::string& text, const corral::CheckOptions& options = kNoChecks) {
  return corral::load_config_text(text, kFile, options);
}

// Every issue of a configuration that must fail, as `corral check` prints them.
std::vector<std::string> issues_of(const std::string& text,
                                   const corral::CheckOptions& options = kNoChecks,
                                   const std::string& file = kFile) {
  try {
    (void)corral::load_config_text(text, file, options);
  } catch (const corral::ConfigError& e) {
    std::vector<std::string> out;
    for (const auto& issue : e.issues()) out.push_back(issue.to_string());
    return out;
  }
  return {};
}

// True when some issue contains `needle`.
bool has_issue(const std::vector<std::string>& issues, const std::string& needle) {
  return std::any_of(issues.begin(), issues.end(),
                     [&](const std::string& i) { return i.find(needle) != std::string::npos; });
}

std::string joined(const std::vector<std::string>& issues) {
  std::string out;
  for (const auto& i : issues) out += i + "\n";
  return out;
}

// A job "web" in prefork mode with one listener and the given extra lines
// (indented by four spaces, under the job).
std::string web_job(const std::string& extra) {
  return "jobs:\n"
         "  web:\n"
         "    command: [\"/bin/sh\"]\n"
         "    listen: [\"127.0.0.1:8080\"]\n" +
         extra;
}

// Sets or unsets an environment variable for one scope, restoring it afterwards.
class EnvGuard {
 public:
  explicit EnvGuard(std::string name) : name_(std::move(name)) {
    if (const char* v = std::getenv(name_.c_str())) saved_ = v;
  }
  ~EnvGuard() {
    if (saved_)
      ::setenv(name_.c_str(), saved_->c_str(), 1);
    else
      ::unsetenv(name_.c_str());
  }
  EnvGuard(const EnvGuard&) = delete;
  EnvGuard& operator=(const EnvGuard&) = delete;
  void set(const std::string& value) const { ::setenv(name_.c_str(), value.c_str(), 1); }
  void unset() const { ::unsetenv(name_.c_str()); }

 private:
  std::string name_;
  std::optional<std::string> saved_;
};

// A fresh directory under /tmp, removed with everything in it at scope exit.
class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/corral-config-test.XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  [[nodiscard]] const std::string& path() const { return path_; }

 private:
  std::string path_;
};

void write_file(const std::string& path, const std::string& text, mode_t mode) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  {
    std::ofstream out(path);
    out << text;
    REQUIRE(out.good());
  }
  REQUIRE(::chmod(path.c_str(), mode) == 0);
}

// default_scoreboard_dir() as a non-root user sees it: in a child that dropped to
// nobody when the tests run as root, else in-process.
std::string default_dir_as_non_root(uid_t& uid) {
  if (::geteuid() != 0) {
    uid = ::getuid();
    return corral::default_scoreboard_dir();
  }
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(fds[0]);
    if (::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(1);
    std::string dir = corral::default_scoreboard_dir();
    auto n = ::write(fds[1], dir.data(), dir.size());
    ::_exit(n == static_cast<ssize_t>(dir.size()) ? 0 : 1);
  }
  ::close(fds[1]);
  std::string out;
  char buf[512];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;)
    out.append(buf, static_cast<size_t>(n));
  ::close(fds[0]);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  uid = 65534;
  return out;
}

}  // namespace

// ---- defaults and values ------------------------------------------------

TEST_CASE("defaults follow PRODUCT.md") {
  auto config = load(web_job(""));
  CHECK(config.file == kFile);
  CHECK(config.scoreboard_dir.empty());
  CHECK(corral::scoreboard_dir_of(config) == corral::default_scoreboard_dir());
  REQUIRE(config.jobs.size() == 1);
  const auto& job = config.jobs[0];
  CHECK(job.name == "web");
  CHECK(job.command == std::vector<std::string>{"/bin/sh"});
  CHECK(job.mode == corral::Mode::prefork);
  CHECK(job.workers.start == 4);
  CHECK(job.workers.min_spare == 2);
  CHECK(job.workers.max_spare == 8);
  CHECK(job.workers.max == 64);
  CHECK(job.workers.max_requests == 0);
  CHECK(job.workers.start_timeout == 30s);
  CHECK(job.accept_mutex == corral::AcceptMutex::automatic);
  CHECK(job.max_per_source == 0);
  CHECK(job.restart.backoff_max == 30s);
  CHECK(job.restart.max_failures == 10);
  CHECK(job.user.empty());
  CHECK(job.group.empty());
  CHECK(job.env.empty());
  CHECK(job.cwd.empty());
  CHECK(job.graceful_timeout == 30s);
  CHECK(job.busy_timeout == corral::Duration::zero());
  REQUIRE(job.listeners.size() == 1);
  const auto& l = job.listeners[0];
  CHECK(corral::to_string(l.address) == "127.0.0.1:8080");
  CHECK(l.name == "web");  // a listener without a name is named after its job
  CHECK(l.backlog == 1024);
  CHECK_FALSE(l.unix_mode.has_value());  // 0666 applied when bound
  CHECK(l.owner.empty());
  CHECK(l.group.empty());
}

TEST_CASE("the PRODUCT.md example parses key by key") {
  auto config = load(R"(scoreboard_dir: /run/corral
jobs:
  web:
    command: ["./build/examples/hello-http", "--flag"]
    mode: prefork
    listen:
      - "127.0.0.1:8080"
      - { address: "unix:/run/web.sock", name: admin, mode: "0660", owner: www-data,
          group: www-data, backlog: 512 }
      - "systemd:web-https"
    workers:
      start: 5
      min_spare: 3
      max_spare: 9
      max: 65
      max_requests: 10000
      start_timeout: 45s
    accept_mutex: fcntl
    restart: { backoff_max: 1m, max_failures: 3 }
    user: www-data
    group: nogroup
    env: { KEY: value, OTHER: 2 }
    cwd: /srv/web
    graceful_timeout: 1m30s
    busy_timeout: 5m
)");
  CHECK(config.scoreboard_dir == "/run/corral");
  REQUIRE(config.jobs.size() == 1);
  const auto& job = config.jobs[0];
  CHECK(job.command == std::vector<std::string>{"/tmp/x/build/examples/hello-http", "--flag"});
  CHECK(job.mode == corral::Mode::prefork);
  REQUIRE(job.listeners.size() == 3);
  CHECK(corral::to_string(job.listeners[0].address) == "127.0.0.1:8080");
  CHECK(job.listeners[0].name == "web");
  const auto& un = job.listeners[1];
  CHECK(corral::to_string(un.address) == "unix:/run/web.sock");
  CHECK(un.name == "admin");
  REQUIRE(un.unix_mode.has_value());
  CHECK(*un.unix_mode == 0660);
  CHECK(un.owner == "www-data");
  CHECK(un.group == "www-data");
  CHECK(un.backlog == 512);
  CHECK(corral::to_string(job.listeners[2].address) == "systemd:web-https");
  CHECK(job.workers.start == 5);
  CHECK(job.workers.min_spare == 3);
  CHECK(job.workers.max_spare == 9);
  CHECK(job.workers.max == 65);
  CHECK(job.workers.max_requests == 10000);
  CHECK(job.workers.start_timeout == 45s);
  CHECK(job.accept_mutex == corral::AcceptMutex::fcntl);
  CHECK(job.restart.backoff_max == 1min);
  CHECK(job.restart.max_failures == 3);
  CHECK(job.user == "www-data");
  CHECK(job.group == "nogroup");
  CHECK(job.env ==
        std::vector<std::pair<std::string, std::string>>{{"KEY", "value"}, {"OTHER", "2"}});
  CHECK(job.cwd == "/srv/web");
  CHECK(job.graceful_timeout == 90s);
  CHECK(job.busy_timeout == 5min);
}

TEST_CASE("several jobs keep their order and their own settings") {
  auto config = load(R"(jobs:
  web:
    command: ["/bin/sh"]
    listen: ["127.0.0.1:8080"]
  legacy:
    command: /usr/bin/cat -u
    mode: inetd
    listen: [":7000"]
    max_per_source: 3
    workers: { start: 2, min_spare: 1, max_spare: 4, max: 20 }
  copies:
    command: ["/bin/sleep", "1000"]
    mode: plain
    workers: { start: 3 }
)");
  REQUIRE(config.jobs.size() == 3);
  CHECK(config.jobs[0].name == "web");
  CHECK(config.jobs[1].name == "legacy");
  CHECK(config.jobs[2].name == "copies");
  CHECK(config.jobs[1].mode == corral::Mode::inetd);
  CHECK(config.jobs[1].command ==
        std::vector<std::string>{"/usr/bin/cat", "-u"});  // split on spaces
  CHECK(config.jobs[1].max_per_source == 3);
  CHECK(config.jobs[1].workers.max == 20);
  CHECK(config.jobs[1].listeners[0].name == "legacy");
  CHECK(config.jobs[2].mode == corral::Mode::plain);
  CHECK(config.jobs[2].listeners.empty());  // plain mode may run without listeners
  CHECK(config.jobs[2].workers.start == 3);
  CHECK(config.jobs[0].workers.start == 4);  // other jobs keep the defaults
}

TEST_CASE("each mode and accept_mutex value") {
  auto mode_of = [](const std::string& m) {
    return load(web_job("    mode: " + m + "\n")).jobs[0].mode;
  };
  CHECK(mode_of("prefork") == corral::Mode::prefork);
  CHECK(mode_of("inetd") == corral::Mode::inetd);
  CHECK(mode_of("plain") == corral::Mode::plain);
  auto mutex_of = [](const std::string& m) {
    return load(web_job("    accept_mutex: " + m + "\n")).jobs[0].accept_mutex;
  };
  CHECK(mutex_of("auto") == corral::AcceptMutex::automatic);
  CHECK(mutex_of("fcntl") == corral::AcceptMutex::fcntl);
  CHECK(mutex_of("pipe") == corral::AcceptMutex::pipe);
  CHECK(mutex_of("epoll") == corral::AcceptMutex::epoll);
  CHECK(mutex_of("none") == corral::AcceptMutex::none);
}

TEST_CASE("durations in every form PRODUCT.md allows") {
  auto graceful = [](const std::string& d) {
    return load(web_job("    graceful_timeout: " + d + "\n")).jobs[0].graceful_timeout;
  };
  CHECK(graceful("500ms") == 500ms);
  CHECK(graceful("30s") == 30s);
  CHECK(graceful("5m") == 5min);
  CHECK(graceful("1h") == 1h);
  CHECK(graceful("1m30s") == 90s);
  CHECK(graceful("2") == 2s);
  CHECK(graceful("0.5") == 500ms);
  CHECK(graceful("0") == corral::Duration::zero());
  CHECK(graceful("\"45s\"") == 45s);
}

TEST_CASE("a bad duration names the key, the text and the position") {
  auto issues = issues_of(web_job("    busy_timeout: 5x\n"));
  REQUIRE(issues.size() == 1);
  CHECK(issues[0] ==
        "/tmp/x/test.yaml:5:19: busy_timeout: invalid duration \"5x\": unknown unit \"x\" (write "
        "e.g. "
        "500ms, 30s, 5m, 1h, 1m30s, or a number of seconds)");
  CHECK(has_issue(issues_of(web_job("    workers: { start_timeout: -1s }\n")),
                  "workers.start_timeout: invalid duration \"-1s\""));
  CHECK(has_issue(issues_of(web_job("    restart: { backoff_max: soon }\n")),
                  "restart.backoff_max: invalid duration \"soon\""));
}

TEST_CASE("listen may be a single address string") {
  auto single = load(R"(jobs:
  web:
    command: ["/bin/sh"]
    listen: "[::1]:9000"
)");
  REQUIRE(single.jobs[0].listeners.size() == 1);
  CHECK(corral::to_string(single.jobs[0].listeners[0].address) == "[::1]:9000");
}

TEST_CASE("a relative unix socket path is resolved against the YAML file's directory") {
  auto config = load(R"(jobs:
  web:
    command: ["/bin/sh"]
    listen: ["unix:run/web.sock"]
)");
  CHECK(corral::to_string(config.jobs[0].listeners[0].address) == "unix:/tmp/x/run/web.sock");
}

TEST_CASE("listener map errors: mode, backlog, name, address, tcp-only keys") {
  auto listener = [](const std::string& map) {
    return issues_of("jobs:\n  web:\n    command: [\"/bin/sh\"]\n    listen:\n      - " + map +
                     "\n");
  };
  CHECK(listener("{ address: \"unix:/r/w.sock\", mode: \"0999\" }") ==
        std::vector<std::string>{
            "/tmp/x/test.yaml:5:44: listener mode must be octal permissions such as \"0660\", not "
            "\"0999\""});
  CHECK(has_issue(listener("{ address: \"unix:/r/w.sock\", mode: rw }"), "not \"rw\""));
  CHECK(has_issue(listener("{ address: \"unix:/r/w.sock\", backlog: 0 }"),
                  "backlog must be between 1 and 65535, not 0"));
  CHECK(has_issue(listener("{ address: \"unix:/r/w.sock\", backlog: many }"),
                  "backlog must be a whole number, not \"many\""));
  CHECK(has_issue(listener("{ address: \"unix:/r/w.sock\", name: \"a:b\" }"),
                  "listener name \"a:b\" must be non-empty and may not contain ':'"));
  CHECK(has_issue(listener("{ address: \"127.0.0.1:80\", mode: \"0660\" }"),
                  "mode, owner and group apply to unix: sockets only"));
  CHECK(has_issue(listener("{ address: \"127.0.0.1:80\", owner: root }"),
                  "mode, owner and group apply to unix: sockets only"));
  // Reported at the map, as an issue among the others (not an exception that hides them).
  CHECK(
      has_issue(listener("{ name: admin }"), "/tmp/x/test.yaml:5:9: listener has no \"address:\""));
  CHECK(
      has_issue(issues_of("jobs:\n  web:\n    command: [\"/bin/sh\"]\n    mode: frob\n    listen:\n"
                          "      - { name: admin }\n"),
                "mode must be prefork, inetd or plain"));
  CHECK(has_issue(listener("{ address: \"unix:/r/w.sock\", adress: x }"),
                  "unknown key \"adress\" in listener; did you mean \"address\"?"));
}

TEST_CASE("a bad listen address is reported at its position with the parser's message") {
  auto issues = issues_of(R"(jobs:
  web:
    command: ["/bin/sh"]
    listen:
      - "127.0.0.1:8080"
      - "::1:8080"
)");
  CHECK(issues == std::vector<std::string>{
                      "/tmp/x/test.yaml:6:9: invalid listen address \"::1:8080\": an IPv6 address "
                      "needs brackets, as in [::1]:8080"});
  CHECK(has_issue(
      issues_of(web_job("").replace(web_job("").find("127.0.0.1:8080"), 14, "example.com:80")),
      "host names are not resolved"));
}

TEST_CASE("a unix path too long once resolved against the YAML directory is rejected") {
  // 102 bytes relative: fits the parser, but not once "/tmp/x/" is prepended (109).
  std::string rel(102, 'a');
  auto issues =
      issues_of("jobs:\n  web:\n    command: [\"/bin/sh\"]\n    listen: [\"unix:" + rel + "\"]\n");
  CHECK(has_issue(issues, "unix socket path too long"));
}

// ---- unknown keys ---------------------------------------------------------

TEST_CASE("an unknown key is an error with a suggestion at its exact position") {
  auto issues = issues_of(web_job("    workers:\n      min_spar: 3\n"));
  CHECK(issues == std::vector<std::string>{
                      "/tmp/x/test.yaml:6:7: unknown key \"min_spar\" in workers; did you mean "
                      "\"min_spare\"? (known keys: start, min_spare, max_spare, max, max_requests, "
                      "start_timeout, max_lifetime, max_lifetime_jitter, max_requests_jitter)"});
}

TEST_CASE("an unknown job key is reported, and so is the missing command it meant") {
  auto issues = issues_of(R"(jobs:
  web:
    comand: ["/bin/sh"]
    listen: ["127.0.0.1:8080"]
)");
  REQUIRE(issues.size() == 2);
  // The list of known keys grows with the features; its start and the hint are fixed.
  CHECK(issues[0].rfind("/tmp/x/test.yaml:3:5: unknown key \"comand\" in job \"web\"; did you mean "
                        "\"command\"? (known keys: command, mode, listen, workers, accept_mutex, ",
                        0) == 0);
  CHECK(issues[0].find("graceful_timeout, busy_timeout") != std::string::npos);
  CHECK(issues[1] ==
        "/tmp/x/test.yaml:2:3: job \"web\" has no \"command:\"; name the program to run");
}

TEST_CASE("an unknown top-level key") {
  auto issues = issues_of("job:\n  web:\n    command: [\"/bin/sh\"]\n");
  CHECK(has_issue(
      issues, "/tmp/x/test.yaml:1:1: unknown key \"job\" in top level; did you mean \"jobs\"?"));
  CHECK(has_issue(issues, "\"jobs:\" is missing"));
}

TEST_CASE("an unknown key far from every known one gets no suggestion") {
  auto issues = issues_of(web_job("    frobnicate: yes\n"));
  REQUIRE(issues.size() == 1);
  CHECK(issues[0].find(
            "/tmp/x/test.yaml:5:5: unknown key \"frobnicate\" in job \"web\" (known keys:") == 0);
  CHECK(issues[0].find("did you mean") == std::string::npos);
}

TEST_CASE("unknown keys inside restart are rejected") {
  auto issues = issues_of(web_job("    restart:\n      max_failure: 3\n"));
  CHECK(issues == std::vector<std::string>{
                      "/tmp/x/test.yaml:6:7: unknown key \"max_failure\" in restart; did you mean "
                      "\"max_failures\"? (known keys: backoff_max, max_failures)"});
}

// ---- types ------------------------------------------------------------

TEST_CASE("type errors name the key and the value") {
  CHECK(issues_of(web_job("    workers:\n      start: abc\n")) ==
        std::vector<std::string>{
            "/tmp/x/test.yaml:6:14: workers.start must be a whole number, not \"abc\""});
  CHECK(has_issue(issues_of(web_job("    workers: { start: 2.5 }\n")),
                  "workers.start must be a whole number, not \"2.5\""));
  CHECK(has_issue(issues_of(web_job("    workers: { start: -1 }\n")),
                  "workers.start must be a whole number, not \"-1\""));
  CHECK(has_issue(issues_of(web_job("    workers: { start: [1] }\n")),
                  "workers.start must be a single value"));
  CHECK(has_issue(issues_of(web_job("    workers: 4\n")), "workers must be a map"));
  CHECK(has_issue(issues_of(web_job("    restart: 3\n")), "restart must be a map"));
  CHECK(has_issue(issues_of(web_job("    env: [A]\n")), "env must be a map of NAME: value"));
  CHECK(has_issue(issues_of(web_job("    env: { A: [1, 2] }\n")), "env.A must be a single value"));
  CHECK(has_issue(issues_of(web_job("    mode: fork\n")),
                  "mode must be prefork, inetd or plain, not \"fork\""));
  CHECK(has_issue(issues_of(web_job("    accept_mutex: futex\n")),
                  "accept_mutex must be auto, pipe, fcntl, epoll or none, not \"futex\""));
  CHECK(has_issue(issues_of(web_job("    user: [a, b]\n")), "user must be a single value"));
  CHECK(has_issue(issues_of(web_job("    max_per_source: lots\n")),
                  "max_per_source must be a whole number, not \"lots\""));
}

TEST_CASE("command: a list, or a string split on spaces; never empty or a map") {
  auto issues = issues_of("jobs:\n  web:\n    command: { a: b }\n    listen: [\":80\"]\n");
  CHECK(has_issue(issues, "/tmp/x/test.yaml:3:14: command must be a list of strings"));
  CHECK(has_issue(issues_of("jobs:\n  web:\n    command: []\n    listen: [\":80\"]\n"),
                  "/tmp/x/test.yaml:3:14: command is empty; name the program to run"));
  CHECK(has_issue(issues_of("jobs:\n  web:\n    command: \"  \"\n    listen: [\":80\"]\n"),
                  "command is empty"));
}

TEST_CASE("the document must be a map with jobs") {
  CHECK(issues_of("") ==
        std::vector<std::string>{"/tmp/x/test.yaml: the file is empty; it needs a \"jobs:\" map"});
  CHECK(has_issue(issues_of("- a\n- b\n"), "the top level must be a map with \"jobs:\""));
  CHECK(
      has_issue(issues_of("jobs: []\n"), "\"jobs\" must be a map of job names to job definitions"));
  CHECK(has_issue(issues_of("jobs:\n"), "\"jobs\" must be a map of job names to job definitions"));
  CHECK(has_issue(issues_of("jobs:\n  web: /bin/sh\n"), "job \"web\" must be a map"));
}

TEST_CASE("environment variable names may not contain '='") {
  CHECK(has_issue(issues_of(web_job("    env: { \"A=B\": 1 }\n")),
                  "environment variable name \"A=B\" is not valid"));
}

// ---- ranges -----------------------------------------------------------

TEST_CASE("min_spare may not exceed max_spare") {
  auto issues = issues_of(web_job("    workers:\n      min_spare: 5\n      max_spare: 3\n"));
  CHECK(issues == std::vector<std::string>{
                      "/tmp/x/test.yaml:6:7: job \"web\": workers.min_spare (5) must not exceed "
                      "workers.max_spare (3)"});
}

TEST_CASE("start may not exceed max") {
  auto issues = issues_of(web_job("    workers: { start: 10, max: 5 }\n"));
  CHECK(has_issue(issues, "job \"web\": workers.start (10) must not exceed workers.max (5)"));
  // The default max (64) counts too.
  CHECK(has_issue(issues_of(web_job("    workers: { start: 100 }\n")),
                  "workers.start (100) must not exceed workers.max (64)"));
}

TEST_CASE("min_spare may not exceed max") {
  CHECK(has_issue(
      issues_of(web_job("    workers: { min_spare: 8, max_spare: 10, max: 4, start: 1 }\n")),
      "workers.min_spare (8) must not exceed workers.max (4)"));
}

TEST_CASE("max and max_spare must be at least 1; counts have an upper bound") {
  CHECK(issues_of(web_job("    workers:\n      max: 0\n")) ==
        std::vector<std::string>{
            "/tmp/x/test.yaml:6:12: workers.max must be between 1 and 16384, not 0"});
  CHECK(has_issue(issues_of(web_job("    workers: { max_spare: 0 }\n")),
                  "workers.max_spare must be between 1 and 16384, not 0"));
  CHECK(has_issue(issues_of(web_job("    workers: { max: 100000 }\n")),
                  "workers.max must be between 1 and 16384, not 100000"));
}

TEST_CASE("plain mode needs at least one copy") {
  auto issues = issues_of(
      "jobs:\n  p:\n    command: [\"/bin/sh\"]\n    mode: plain\n    workers: { start: 0 }\n");
  CHECK(has_issue(issues, "job \"p\": plain mode needs workers.start >= 1"));
}

TEST_CASE("prefork and inetd need a listener; plain does not") {
  auto issues = issues_of("jobs:\n  web:\n    command: [\"/bin/sh\"]\n");
  CHECK(issues == std::vector<std::string>{
                      "/tmp/x/test.yaml:2:3: job \"web\": mode prefork needs at least one address "
                      "under \"listen:\""});
  CHECK(has_issue(issues_of("jobs:\n  old:\n    command: [\"/bin/sh\"]\n    mode: inetd\n"),
                  "job \"old\": mode inetd needs at least one address under \"listen:\""));
  CHECK(has_issue(issues_of("jobs:\n  web:\n    command: [\"/bin/sh\"]\n    listen: []\n"),
                  "needs at least one address"));
  CHECK_NOTHROW(load("jobs:\n  p:\n    command: [\"/bin/sh\"]\n    mode: plain\n"));
}

TEST_CASE("max_per_source applies to inetd mode only") {
  CHECK(issues_of(web_job("    max_per_source: 2\n")) ==
        std::vector<std::string>{
            "/tmp/x/test.yaml:2:3: job \"web\": max_per_source applies to mode inetd only"});
  CHECK_NOTHROW(load(web_job("    max_per_source: 0\n")));
  CHECK(load(web_job("    mode: inetd\n    max_per_source: 2\n")).jobs[0].max_per_source == 2);
}

TEST_CASE("the epoll accept mutex is refused in inetd mode") {
  CHECK(has_issue(issues_of(web_job("    mode: inetd\n    accept_mutex: epoll\n")),
                  "accept_mutex epoll is not available in inetd mode"));
}

// ---- names and duplicates -------------------------------------------------

TEST_CASE("job names use letters, digits, '-' and '_' only") {
  for (const char* bad : {"web server", "a.b", "a/b", "\"a:b\"", "\"\""}) {
    CAPTURE(bad);
    auto issues = issues_of(std::string("jobs:\n  ") + bad +
                            ":\n    command: [\"/bin/sh\"]\n    mode: plain\n");
    CHECK(has_issue(issues, "may use only letters, digits, '-' and '_'"));
  }
  CHECK(issues_of("jobs:\n  a.b:\n    command: [\"/bin/sh\"]\n    mode: plain\n") ==
        std::vector<std::string>{
            "/tmp/x/test.yaml:2:3: job name \"a.b\" may use only letters, digits, '-' and '_'"});
  CHECK_NOTHROW(load("jobs:\n  Web-2_x:\n    command: [\"/bin/sh\"]\n    mode: plain\n"));
}

TEST_CASE("one address in two jobs is an error naming both") {
  auto issues = issues_of(R"(jobs:
  a:
    command: ["/bin/sh"]
    listen: ["127.0.0.1:8080"]
  b:
    command: ["/bin/sh"]
    listen: ["unix:/run/b.sock", "localhost:8080"]
)");
  CHECK(issues == std::vector<std::string>{
                      "/tmp/x/test.yaml:7:34: job \"b\": address 127.0.0.1:8080 is already used by "
                      "job \"a\""});
  CHECK(has_issue(issues_of(R"(jobs:
  a:
    command: ["/bin/sh"]
    listen: ["unix:/run/x.sock"]
  b:
    command: ["/bin/sh"]
    listen: ["unix:/run/x.sock"]
)"),
                  "address unix:/run/x.sock is already used by job \"a\""));
}

TEST_CASE("port 0 may appear more than once: the kernel picks distinct ports") {
  CHECK_NOTHROW(load(R"(jobs:
  a:
    command: ["/bin/sh"]
    listen: ["127.0.0.1:0"]
  b:
    command: ["/bin/sh"]
    listen: ["127.0.0.1:0"]
)"));
}

// ---- paths ------------------------------------------------------------

TEST_CASE(
    "relative command, cwd and scoreboard_dir are resolved against the YAML file's directory") {
  auto config = load(R"(scoreboard_dir: state/sb
jobs:
  web:
    command: ["./bin/server", "--port", "./not-a-path-arg"]
    cwd: srv/../www
    listen: [":8080"]
)");
  CHECK(config.scoreboard_dir == "/tmp/x/state/sb");
  CHECK(corral::scoreboard_dir_of(config) == "/tmp/x/state/sb");
  CHECK(config.jobs[0].command ==
        std::vector<std::string>{"/tmp/x/bin/server", "--port", "./not-a-path-arg"});
  CHECK(config.jobs[0].cwd == "/tmp/x/www");
}

TEST_CASE("a relative command that exists next to the YAML file resolves with checks on") {
  TempDir tmp;
  write_file(tmp.path() + "/bin/server", "#!/bin/sh\n", 0755);
  std::string yaml =
      "jobs:\n  web:\n    command: [\"bin/server\"]\n    cwd: .\n    listen: [\":8080\"]\n";
  auto config = corral::load_config_text(yaml, tmp.path() + "/corral.yaml", kAllChecks);
  CHECK(config.jobs[0].command[0] == tmp.path() + "/bin/server");
  CHECK(config.jobs[0].cwd == tmp.path());

  // load_config_file reads the same file from disk, anchored at its own directory.
  write_file(tmp.path() + "/corral.yaml", yaml, 0644);
  auto from_file = corral::load_config_file(tmp.path() + "/corral.yaml", kAllChecks);
  CHECK(from_file.file == tmp.path() + "/corral.yaml");
  CHECK(from_file.jobs[0].command[0] == tmp.path() + "/bin/server");
}

TEST_CASE("a command that is not executable is reported with checks on") {
  TempDir tmp;
  write_file(tmp.path() + "/bin/data", "not a program\n", 0644);
  auto issues = issues_of("jobs:\n  web:\n    command: [\"bin/data\"]\n    listen: [\":8080\"]\n",
                          kAllChecks, tmp.path() + "/c.yaml");
  CHECK(issues ==
        std::vector<std::string>{
            tmp.path() + "/c.yaml:3:14: job \"web\": command \"bin/data\" is not an executable "
                         "file; check the path and its permissions"});
}

TEST_CASE("commands: /bin/sh resolves, /nonexistent does not, bare names come from PATH") {
  CHECK(load(web_job(""), kAllChecks).jobs[0].command[0] == "/bin/sh");
  auto issues = issues_of(
      "jobs:\n  web:\n    command: [\"/nonexistent\"]\n    listen: [\":8080\"]\n", kAllChecks);
  CHECK(issues == std::vector<std::string>{
                      "/tmp/x/test.yaml:3:14: job \"web\": command \"/nonexistent\" is not an "
                      "executable file; check the path and its permissions"});
  CHECK(has_issue(
      issues_of("jobs:\n  web:\n    command: no-such-program-xyz\n    listen: [\":8080\"]\n",
                kAllChecks),
      "command \"no-such-program-xyz\" is not an executable file found in PATH"));
  // With command checks off, an unresolvable command is accepted as written.
  CHECK(load("jobs:\n  web:\n    command: [\"/nonexistent\"]\n    listen: [\":8080\"]\n")
            .jobs[0]
            .command[0] == "/nonexistent");

  auto sh = load("jobs:\n  web:\n    command: [sh, -c, \"exit 0\"]\n    listen: [\":8080\"]\n",
                 kAllChecks);
  CHECK(sh.jobs[0].command[0].front() == '/');
  CHECK(sh.jobs[0].command[0].ends_with("/sh"));
  CHECK(::access(sh.jobs[0].command[0].c_str(), X_OK) == 0);
}

TEST_CASE("resolve_command searches PATH in order and skips files that are not executable") {
  TempDir tmp;
  write_file(tmp.path() + "/first/prog", "data\n", 0644);  // not executable: skipped
  write_file(tmp.path() + "/second/prog", "#!/bin/sh\n", 0755);
  write_file(tmp.path() + "/third/prog", "#!/bin/sh\n", 0755);
  EnvGuard path("PATH");
  path.set(tmp.path() + "/first:" + tmp.path() + "/second:" + tmp.path() + "/third");
  CHECK(corral::resolve_command("prog", "/elsewhere") == tmp.path() + "/second/prog");
  CHECK(corral::resolve_command("missing-prog", "/elsewhere") == "");
  // A path with a slash is never looked up in PATH.
  CHECK(corral::resolve_command("second/prog", tmp.path()) == tmp.path() + "/second/prog");
  CHECK(corral::resolve_command("./second/../third/prog", tmp.path()) ==
        tmp.path() + "/third/prog");
  CHECK(corral::resolve_command("first/prog", tmp.path()) == "");
  CHECK(corral::resolve_command(tmp.path() + "/second", "/") == "");  // a directory
  CHECK(corral::resolve_command("", "/") == "");
}

TEST_CASE("cwd must be a directory when checks are on") {
  auto issues = issues_of(web_job("    cwd: /nonexistent-dir-xyz\n"), kAllChecks);
  CHECK(issues ==
        std::vector<std::string>{
            "/tmp/x/test.yaml:5:10: job \"web\": cwd /nonexistent-dir-xyz is not a directory"});
  CHECK(load(web_job("    cwd: /tmp\n"), kAllChecks).jobs[0].cwd == "/tmp");
}

// ---- users and groups ---------------------------------------------------------

TEST_CASE("users and groups must exist when checks are on") {
  auto issues =
      issues_of(web_job("    user: nosuchuser-xyz\n    group: nosuchgroup-xyz\n"), kAllChecks);
  CHECK(issues ==
        std::vector<std::string>{
            "/tmp/x/test.yaml:5:11: job \"web\": user \"nosuchuser-xyz\" does not exist",
            "/tmp/x/test.yaml:6:12: job \"web\": group \"nosuchgroup-xyz\" does not exist"});
  CHECK(load(web_job("    user: root\n    group: root\n"), kAllChecks).jobs[0].user == "root");
  // Checks off: names are taken as written.
  CHECK(load(web_job("    user: nosuchuser-xyz\n")).jobs[0].user == "nosuchuser-xyz");
}

TEST_CASE("a unix listener's owner and group must exist when checks are on") {
  auto issues = issues_of(R"(jobs:
  web:
    command: ["/bin/sh"]
    listen:
      - { address: "unix:/run/w.sock", owner: nosuchuser-xyz, group: nosuchgroup-xyz }
)",
                          kAllChecks);
  CHECK(has_issue(issues, "/tmp/x/test.yaml:5:47: user \"nosuchuser-xyz\" does not exist"));
  CHECK(has_issue(issues, "group \"nosuchgroup-xyz\" does not exist"));
}

// ---- syntax and reporting -----------------------------------------------------

TEST_CASE("a YAML syntax error carries its position") {
  auto issues = issues_of("jobs:\n  web:\n    command: [\"/bin/sh\"\n    listen: [\":80\"]\n");
  REQUIRE(issues.size() == 1);
  CHECK(issues[0].starts_with("/tmp/x/test.yaml:"));
  try {
    (void)load("jobs:\n  web:\n    command: [\"/bin/sh\"\n    listen: [\":80\"]\n");
  } catch (const corral::ConfigError& e) {
    REQUIRE(e.issues().size() == 1);
    CHECK(e.issues()[0].mark.line >= 3);
    CHECK(e.issues()[0].mark.column >= 1);
    CHECK_FALSE(e.issues()[0].message.empty());
  }
  auto tabs = issues_of("jobs:\n\tweb:\n");
  REQUIRE(tabs.size() == 1);
  CHECK(tabs[0].starts_with("/tmp/x/test.yaml:2:"));
}

TEST_CASE("every problem is reported at once") {
  std::string text = R"(jobs:
  web:
    command: ["/bin/sh"]
    mode: fork
    listen: ["127.0.0.1:80", "::1:80"]
    workers:
      min_spare: 9
      max_spare: 3
      star: 2
    graceful_timeout: soon
  "bad name":
    command: ["/bin/sh"]
    mode: plain
)";
  std::string what;
  std::vector<corral::ConfigIssue> issues;
  try {
    (void)load(text);
  } catch (const corral::ConfigError& e) {
    what = e.what();
    issues = e.issues();
  }
  std::vector<std::string> printed;
  for (const auto& i : issues) printed.push_back(i.to_string());
  INFO(joined(printed));
  CHECK(printed.size() == 6);
  CHECK(has_issue(printed,
                  "/tmp/x/test.yaml:4:11: mode must be prefork, inetd or plain, not \"fork\""));
  CHECK(has_issue(printed, "/tmp/x/test.yaml:5:30: invalid listen address \"::1:80\""));
  CHECK(has_issue(
      printed, "/tmp/x/test.yaml:9:7: unknown key \"star\" in workers; did you mean \"start\"?"));
  CHECK(has_issue(printed, "/tmp/x/test.yaml:10:23: graceful_timeout: invalid duration \"soon\""));
  CHECK(has_issue(printed, "/tmp/x/test.yaml:11:3: job name \"bad name\""));
  CHECK(has_issue(printed,
                  "/tmp/x/test.yaml:7:7: job \"web\": workers.min_spare (9) must not exceed"));
  // what() is the same lines, one per issue, as `corral check` prints them.
  std::string expected;
  for (const auto& p : printed) expected += (expected.empty() ? "" : "\n") + p;
  CHECK(what == expected);
}

TEST_CASE("a file that cannot be read is a ConfigError naming it") {
  try {
    (void)corral::load_config_file("/nonexistent-dir-xyz/corral.yaml");
    FAIL("no error");
  } catch (const corral::ConfigError& e) {
    CHECK(std::string(e.what()) ==
          "/nonexistent-dir-xyz/corral.yaml: cannot read the file: No such file or directory");
  }
}

// ---- validate_config (the command line) and the summary -------------------------

TEST_CASE("validate_config checks a configuration built from the command line") {
  corral::Config config;
  corral::JobConfig job;
  job.name = "sh";
  job.command = {"sh", "-c", "true"};
  job.mode = corral::Mode::plain;
  job.workers.start = 2;
  config.jobs.push_back(job);
  corral::validate_config(config, kAllChecks);
  CHECK(config.jobs[0].command[0].front() == '/');

  config.jobs[0].workers.start = 0;
  try {
    corral::validate_config(config, kNoChecks);
    FAIL("no error");
  } catch (const corral::ConfigError& e) {
    CHECK(std::string(e.what()) == "job \"sh\": plain mode needs workers.start >= 1");
  }
}

TEST_CASE("summarize names every job with its mode, pool and listeners") {
  auto config = load(R"(scoreboard_dir: /run/sb
jobs:
  web:
    command: ["/bin/sh"]
    listen: ["127.0.0.1:8080", "unix:/run/w.sock"]
  copies:
    command: ["/bin/true"]
    mode: plain
    workers: { start: 3 }
)");
  CHECK(corral::summarize(config) ==
        "/tmp/x/test.yaml: 2 jobs, scoreboards in /run/sb\n"
        "  web: prefork, start 4, spare 2..8, max 64, listen 127.0.0.1:8080 unix:/run/w.sock, "
        "command /bin/sh\n"
        "  copies: plain, 3 copies, listen (none), command /bin/true\n");
}

// ---- default_scoreboard_dir ---------------------------------------------------

TEST_CASE("default_scoreboard_dir: $RUNTIME_DIRECTORY first, its first entry only") {
  EnvGuard runtime("RUNTIME_DIRECTORY");
  EnvGuard xdg("XDG_RUNTIME_DIR");
  xdg.set("/run/user/1000");
  runtime.set("/run/corral-unit");
  CHECK(corral::default_scoreboard_dir() == "/run/corral-unit");
  runtime.set("/run/a:/run/b");
  CHECK(corral::default_scoreboard_dir() == "/run/a");
}

TEST_CASE("default_scoreboard_dir: /run/corral as root") {
  if (::geteuid() != 0) return;  // covered by the non-root case below
  EnvGuard runtime("RUNTIME_DIRECTORY");
  EnvGuard xdg("XDG_RUNTIME_DIR");
  runtime.unset();
  xdg.set("/run/user/0");
  CHECK(corral::default_scoreboard_dir() == "/run/corral");
  runtime.set("");  // empty counts as unset
  CHECK(corral::default_scoreboard_dir() == "/run/corral");
}

TEST_CASE("default_scoreboard_dir: $XDG_RUNTIME_DIR/corral, else /tmp/corral-$UID, as a user") {
  EnvGuard runtime("RUNTIME_DIRECTORY");
  EnvGuard xdg("XDG_RUNTIME_DIR");
  runtime.unset();
  uid_t uid = 0;
  xdg.set("/run/user/4321");
  CHECK(default_dir_as_non_root(uid) == "/run/user/4321/corral");
  xdg.unset();
  CHECK(default_dir_as_non_root(uid) == "/tmp/corral-" + std::to_string(uid));
  xdg.set("relative/dir");  // not absolute: ignored
  CHECK(default_dir_as_non_root(uid) == "/tmp/corral-" + std::to_string(uid));
  runtime.set("/run/svc");
  CHECK(default_dir_as_non_root(uid) == "/run/svc");
}

// ---- issue 13: unchecked input --------------------------------------------------

TEST_CASE("workers counts: one range check for YAML and the command line") {
  using corral::WorkersCount;
  CHECK(corral::parse_workers_count(WorkersCount::start, "16384", "--workers") == 16384);
  CHECK(corral::parse_workers_count(WorkersCount::start, "0", "--workers") == 0);
  CHECK(corral::parse_workers_count(WorkersCount::max, "1", "--max") == 1);
  auto message = [](WorkersCount w, const char* text, const char* what) {
    try {
      (void)corral::parse_workers_count(w, text, what);
    } catch (const corral::ConfigError& e) {
      return e.issues().front().message;
    }
    return std::string();
  };
  CHECK(message(WorkersCount::start, "100000", "--workers") ==
        "--workers must be between 0 and 16384, not 100000");
  CHECK(message(WorkersCount::max, "0", "--max") == "--max must be between 1 and 16384, not 0");
  CHECK(message(WorkersCount::max, "20000", "workers.max") ==
        "workers.max must be between 1 and 16384, not 20000");
  CHECK(message(WorkersCount::max_spare, "0", "--max-spare") ==
        "--max-spare must be between 1 and 16384, not 0");
  CHECK(message(WorkersCount::start, "99999999999999999999999", "--workers").find("between") !=
        std::string::npos);
  CHECK(message(WorkersCount::start, "-1", "--workers") ==
        "--workers must be a whole number, not \"-1\"");
  CHECK(message(WorkersCount::start, "", "--workers") ==
        "--workers must be a whole number, not \"\"");
  CHECK(message(WorkersCount::min_spare, "auto", "--min-spare").find("applies to workers.start") !=
        std::string::npos);
  // YAML gives the same words at the value's position.
  auto issues = issues_of(web_job("    workers: { max: 20000, start: auto }\n"));
  CHECK(has_issue(issues,
                  "/tmp/x/test.yaml:5:21: workers.max must be between 1 and 16384, not 20000"));
  CHECK_FALSE(has_issue(issues, "workers.start"));  // auto is a value now
}

TEST_CASE("validate_config checks the workers ranges of a model built elsewhere") {
  auto config = load(web_job(""));
  config.jobs[0].workers.max = 0;
  config.jobs[0].workers.start = 0;
  config.jobs[0].workers.min_spare = 0;
  try {
    corral::validate_config(config, kNoChecks);
    FAIL("accepted workers.max 0");
  } catch (const corral::ConfigError& e) {
    CHECK(e.issues().front().message.find("workers.max (0) must be between 1 and 16384") !=
          std::string::npos);
  }
}

TEST_CASE("merge_environment: a later key replaces in place, new keys are appended, linear") {
  auto env =
      corral::merge_environment({"A=1", "B=2", "A=shadow"}, {{"B", "x"}, {"C", "3"}, {"C", "4"}});
  CHECK(env == std::vector<std::string>{"A=1", "B=x", "A=shadow", "C=4"});
  std::vector<std::pair<std::string, std::string>> many;
  for (int i = 0; i < 200000; ++i) many.emplace_back("K" + std::to_string(i), "v");
  auto start = std::chrono::steady_clock::now();
  auto big = corral::merge_environment({}, many);
  CHECK(big.size() == 200000);
  // A search per entry took minutes at this size; an index takes well under a second.
  CHECK(std::chrono::steady_clock::now() - start < 5s);
}

TEST_CASE("a NUL byte in any value exec or a system call would see is an error") {
  auto issues = issues_of(web_job("    env: { A: \"x\\0y\" }\n    cwd: \"/tm\\0p\"\n"));
  CHECK(has_issue(issues, ":5:15: env.A contains a NUL byte"));
  CHECK(has_issue(issues, ":6:10: cwd contains a NUL byte"));
  issues =
      issues_of("jobs:\n  web:\n    command: [\"/bin/sh\", \"-c\\0x\"]\n    listen: [\":1\"]\n");
  CHECK(has_issue(issues, "each command argument contains a NUL byte"));
}

TEST_CASE("argv + environment beyond what exec accepts is an error at the job") {
  std::string text = web_job("    env:\n");
  for (int i = 0; i < 40; ++i)
    text += "      K" + std::to_string(i) + ": " + std::string(100000, 'v') + "\n";
  auto issues = issues_of(text);
  REQUIRE(issues.size() == 1);
  CHECK(
      issues[0].starts_with("/tmp/x/test.yaml:2:3: job \"web\": command and environment come to "));
  CHECK(has_issue(issues, "would fail with E2BIG"));
  issues = issues_of(web_job("    env: { LONG: " + std::string(140000, 'x') + " }\n"));
  CHECK(has_issue(issues, ":2:3: job \"web\": env.LONG is 140,005 bytes long"));
  CHECK(has_issue(issues, "MAX_ARG_STRLEN"));
  // 50,000 small variables fit, and are checked quickly.
  text = web_job("    env:\n");
  for (int i = 0; i < 50000; ++i) text += "      K" + std::to_string(i) + ": v\n";
  auto start = std::chrono::steady_clock::now();
  CHECK_NOTHROW(load(text));
  CHECK(std::chrono::steady_clock::now() - start < 10s);
}

TEST_CASE("listeners that can never be bound together are errors, across jobs too") {
  auto issues = issues_of(
      "jobs:\n"
      "  a:\n"
      "    command: /bin/sh\n"
      "    listen: [\"0.0.0.0:7001\", \":7002\", \"unix:/run/a.sock\", \"[::]:7003\"]\n"
      "  b:\n"
      "    command: /bin/sh\n"
      "    listen: [\"127.0.0.1:7001\", \"[::]:7002\", \"unix:/run/./a.sock\", \"[::1]:7003\",\n"
      "             \"0.0.0.0:7003\", \"127.0.0.1:7002\", \"unix:/run//x/../a.sock\"]\n");
  CHECK(has_issue(
      issues, "address 127.0.0.1:7001 can never be bound together with 0.0.0.0:7001 of job \"a\""));
  CHECK(has_issue(issues, "address [::]:7002 can never be bound together with :7002 of job \"a\""));
  CHECK(has_issue(issues, "address 127.0.0.1:7002 can never be bound together with :7002"));
  CHECK(has_issue(issues,
                  "address unix:/run/./a.sock can never be bound together with unix:/run/a.sock"));
  CHECK(has_issue(issues, "address unix:/run//x/../a.sock can never be bound together"));
  CHECK(has_issue(issues, "address [::1]:7003 can never be bound together with [::]:7003"));
  // [::] is IPv6 only (IPV6_V6ONLY): it and 0.0.0.0 share a port; so do two specific ones.
  CHECK_FALSE(has_issue(issues, "0.0.0.0:7003 can never"));
  CHECK(issues.size() == 6);
  CHECK_NOTHROW(
      load("jobs:\n  a:\n    command: /bin/sh\n"
           "    listen: [\"127.0.0.1:9\", \"127.0.0.2:9\", \"[::1]:9\", \"0.0.0.0:0\", \":0\"]\n"));
}

TEST_CASE("user: without root is a warning for check and an error for run") {
  if (::geteuid() == 0) return;  // tests/integration/test_input_limits.py runs it as a user
  auto config = load(web_job("    user: nobody\n"));
  REQUIRE(config.warnings.size() == 1);
  CHECK(config.warnings[0].to_string().find(
            ":5:11: warning: job \"web\": user: nobody needs root") != std::string::npos);
  corral::CheckOptions run = kNoChecks;
  run.for_run = true;
  CHECK(has_issue(issues_of(web_job("    user: nobody\n"), run), "user: nobody needs root"));
}

TEST_CASE("read_config_text: a directory says so; a file beyond 4 MiB is refused") {
  auto dir = std::filesystem::temp_directory_path() / ("corral-unit-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  auto message = [](const std::string& path) {
    try {
      (void)corral::read_config_text(path);
    } catch (const corral::ConfigError& e) {
      return e.issues().front().to_string();
    }
    return std::string();
  };
  CHECK(message(dir.string()) == dir.string() + ": is a directory, not a configuration file");
  auto big = (dir / "big.yaml").string();
  {
    std::ofstream out(big);
    out << std::string(corral::kMaxConfigBytes + 1, '#');
  }
  CHECK(message(big).find("larger than 4,194,304 bytes (4 MiB)") != std::string::npos);
  std::filesystem::resize_file(big, corral::kMaxConfigBytes);
  CHECK(corral::read_config_text(big).size() == corral::kMaxConfigBytes);
  std::filesystem::remove_all(dir);
}

TEST_CASE("status_scoreboard_dirs: /run/corral/NAME, /run/corral, then the caller's default") {
  EnvGuard runtime("RUNTIME_DIRECTORY");
  runtime.set("/run/elsewhere");
  corral::Config config;
  config.file = "/etc/corral/web.yaml";
  CHECK(corral::status_scoreboard_dirs(config) ==
        std::vector<std::string>{"/run/corral/web", "/run/corral", "/run/elsewhere"});
  runtime.set("/run/corral");
  CHECK(corral::status_scoreboard_dirs(config) ==
        std::vector<std::string>{"/run/corral/web", "/run/corral"});
  config.scoreboard_dir = "/srv/sb";
  CHECK(corral::status_scoreboard_dirs(config) == std::vector<std::string>{"/srv/sb"});
}

TEST_CASE("workers.start: auto and workers.max: auto come from the container's CPUs") {
  const unsigned c = corral::container_limits().cpus;
  auto config = corral::load_config_text(
      "jobs:\n  web:\n    command: [\"/bin/true\"]\n    listen: [\"127.0.0.1:0\"]\n"
      "    workers: { start: auto, max: auto }\n",
      "/tmp/auto.yaml", corral::CheckOptions{false, false});
  const auto& w = config.jobs.at(0).workers;
  CHECK(w.start_auto);
  CHECK(w.max_auto);
  CHECK(w.start == std::min(c, w.max));
  CHECK(w.max == 4 * c);
  CHECK(w.max_spare <= w.max);  // unset bounds follow max down
  auto summary = corral::summarize(config);
  CHECK(summary.find("start auto (= " + std::to_string(w.start) + ")") != std::string::npos);
  CHECK(summary.find("max auto (= " + std::to_string(4 * c) + ")") != std::string::npos);
}

TEST_CASE("auto applies to start and max only; an explicit conflict with auto stays an error") {
  CHECK_THROWS_AS(
      corral::load_config_text("jobs:\n  web:\n    command: [\"/bin/true\"]\n    listen: [\":1\"]\n"
                               "    workers: { min_spare: auto }\n",
                               "/tmp/a.yaml", corral::CheckOptions{false, false}),
      corral::ConfigError);
  CHECK_THROWS_AS(
      corral::load_config_text("jobs:\n  web:\n    command: [\"/bin/true\"]\n    listen: [\":1\"]\n"
                               "    workers: { max: auto, min_spare: 16000, max_spare: 16001 }\n",
                               "/tmp/a.yaml", corral::CheckOptions{false, false}),
      corral::ConfigError);
}

TEST_CASE("stop.drain and stop_signal are read; a bad signal name lists the choices") {
  auto config = corral::load_config_text(
      "stop: { drain: 5s }\njobs:\n  web:\n    command: [\"/bin/true\"]\n"
      "    listen: [\"127.0.0.1:0\"]\n    stop_signal: QUIT\n",
      "/tmp/s.yaml", corral::CheckOptions{false, false});
  CHECK(config.stop.drain == std::chrono::seconds(5));
  CHECK(config.jobs.at(0).stop_signal == SIGQUIT);
  try {
    corral::load_config_text(
        "jobs:\n  web:\n    command: [\"/bin/true\"]\n    listen: [\":1\"]\n"
        "    stop_signal: KILL\n",
        "/tmp/s.yaml", corral::CheckOptions{false, false});
    FAIL("KILL accepted");
  } catch (const corral::ConfigError& e) {
    CHECK(e.issues().front().to_string().find("/tmp/s.yaml:5:18: stop_signal must be TERM, QUIT") !=
          std::string::npos);
  }
  CHECK_THROWS_AS(corral::load_config_text("stop: { drain: 5s, linger: 1s }\njobs: {}\n",
                                           "/tmp/s.yaml", corral::CheckOptions{false, false}),
                  corral::ConfigError);
}

TEST_CASE("limits: one number or SOFT:HARD, sizes with units, cpu in seconds, infinity") {
  auto config = corral::load_config_text(
      "jobs:\n  web:\n    command: [\"/bin/true\"]\n    listen: [\"127.0.0.1:0\"]\n"
      "    limits: { nofile: \"1024:2048\", core: 0, as: 2GiB, cpu: 10m, stack: 8MiB }\n",
      "/tmp/l.yaml", corral::CheckOptions{false, false});
  std::map<std::string, std::pair<std::uint64_t, std::uint64_t>> got;
  for (const auto& l : config.jobs.at(0).limits) got[l.key] = {l.soft, l.hard};
  CHECK(got["nofile"].first == 1024);
  CHECK(got["nofile"].second == 2048);
  CHECK(got["core"].second == 0);
  CHECK(got["as"].first == 2ULL << 30);
  CHECK(got["cpu"].first == 600);
  CHECK(got["stack"].first == 8ULL << 20);
}

TEST_CASE("limits and memory: errors name the key and the fix") {
  auto job = [](const std::string& extra) {
    return "jobs:\n  web:\n    command: [\"/bin/true\"]\n    listen: [\"127.0.0.1:0\"]\n" + extra;
  };
  auto fails_with = [&](const std::string& extra, const std::string& needle) {
    try {
      corral::load_config_text(job(extra), "/tmp/l.yaml", corral::CheckOptions{false, false});
    } catch (const corral::ConfigError& e) {
      for (const auto& i : e.issues())
        if (i.to_string().find(needle) != std::string::npos) return true;
    }
    return false;
  };
  CHECK(fails_with("    limits: { as: 2G }\n", "did you mean 2GiB?"));
  CHECK(fails_with("    limits: { nofile: \"4096:1024\" }\n", "soft limit is above the hard"));
  CHECK(fails_with("    limits: { fsize: 1 }\n", "unknown key \"fsize\" in limits"));
  CHECK(fails_with("    memory: { budget: 0% }\n", "whole percentage from 1% to 100%"));
  CHECK(fails_with("    memory: { budget: 9.5% }\n", "whole percentage"));
  CHECK(fails_with("    memory: { budget: 2G }\n", "did you mean 2GiB?"));
  CHECK(fails_with("    memory: { budget: 512KiB }\n", "below 1MiB"));
  CHECK(fails_with("    mode: plain\n    memory: { budget: 1GiB }\n", "modes prefork and inetd"));
  CHECK(fails_with("    cgroup: { memory_max: 2MiB }\n", "below 4MiB"));
  CHECK(fails_with("    cgroup: { memory_high: 1GiB, memory_max: 512MiB }\n",
                   "memory_high is above cgroup.memory_max"));
  CHECK(fails_with("    cgroup: { pids_max: 0 }\n", "between 1 and 4194304"));
  CHECK(fails_with("    cgroup: { cpu_weight: 10001 }\n", "between 1 and 10000"));
  CHECK(fails_with("    cgroup: { memory: 1GiB }\n", "unknown key \"memory\" in cgroup"));
  CHECK(fails_with("    cgroup: {}\n", "cgroup is empty"));
  CHECK(fails_with("    cgroup: 64MiB\n", "cgroup must be a map"));
  CHECK(fails_with("    memory: { max_rss: 512MiB, hard_max_rss: 256MiB }\n",
                   "hard_max_rss is below"));
  CHECK(fails_with("    workers: { max_lifetime_jitter: 5m }\n", "needs workers.max_lifetime"));
  CHECK(fails_with("    workers: { max_requests_jitter: 10 }\n", "needs workers.max_requests"));
}

TEST_CASE("memory.budget: a size as it is, a percentage of the cgroup limit or off") {
  auto job = [](const std::string& budget) {
    return "jobs:\n  web:\n    command: [\"/bin/true\"]\n    listen: [\"127.0.0.1:0\"]\n"
           "    memory: { budget: " +
           budget + " }\n    cgroup: { memory_max: 64MiB, pids_max: 16, cpu_weight: 50 }\n";
  };
  auto sized =
      corral::load_config_text(job("2GiB"), "/tmp/b.yaml", corral::CheckOptions{false, false});
  CHECK(sized.jobs.at(0).memory.budget == 2ULL << 30);
  CHECK(sized.jobs.at(0).cgroup.memory_max == 64ULL << 20);
  CHECK(sized.jobs.at(0).cgroup.pids_max == 16);
  CHECK(sized.jobs.at(0).cgroup.cpu_weight == 50);
  auto pct =
      corral::load_config_text(job("90%"), "/tmp/b.yaml", corral::CheckOptions{false, false});
  const auto limit = corral::container_limits().memory_bytes;
  CHECK(pct.jobs.at(0).memory.budget_percent == 90);
  if (limit) {
    CHECK(pct.jobs.at(0).memory.budget == *limit / 100 * 90);
  } else {
    CHECK(pct.jobs.at(0).memory.budget == 0);
    bool warned = false;
    for (const auto& w : pct.warnings)
      warned = warned || w.to_string().find(
                             "/tmp/b.yaml:5:23: warning: job \"web\": memory.budget "
                             "90% is of the cgroup memory limit") == 0;
    CHECK(warned);
  }
}

TEST_CASE("metrics: listen (TCP or unix), textfile and interval") {
  auto config = load(
      "metrics: { listen: \"127.0.0.1:9101\", textfile: prom/corral.prom, "
      "interval: 5s }\n" +
      web_job(""));
  REQUIRE(config.metrics.listen.has_value());
  CHECK(corral::to_string(config.metrics.listen->address) == "127.0.0.1:9101");
  CHECK(config.metrics.listen_text == "127.0.0.1:9101");
  CHECK(config.metrics.textfile == "/tmp/x/prom/corral.prom");
  CHECK(config.metrics.interval == 5s);
  auto un = load("metrics:\n  listen: \"unix:run/m.sock\"\n" + web_job(""));
  REQUIRE(un.metrics.listen.has_value());
  CHECK(corral::to_string(un.metrics.listen->address) == "unix:/tmp/x/run/m.sock");
  auto none = load(web_job(""));
  CHECK_FALSE(none.metrics.listen.has_value());
  CHECK(none.metrics.textfile.empty());
  CHECK(none.metrics.interval == 15s);
  CHECK(corral::summarize(config).find("metrics: listen 127.0.0.1:9101 textfile "
                                       "/tmp/x/prom/corral.prom every 5s") != std::string::npos);
}

TEST_CASE("metrics errors, each at its position") {
  CHECK(issues_of("metrics: { listne: \":9101\" }\n" + web_job("")) ==
        std::vector<std::string>{
            "/tmp/x/test.yaml:1:12: unknown key \"listne\" in metrics; did you mean \"listen\"? "
            "(known keys: listen, textfile, interval)"});
  CHECK(has_issue(issues_of("metrics: \"127.0.0.1:9101\"\n" + web_job("")),
                  "/tmp/x/test.yaml:1:10: metrics must be a map"));
  CHECK(has_issue(issues_of("metrics: { listen: \"systemd:m\" }\n" + web_job("")),
                  "/tmp/x/test.yaml:1:20: metrics.listen must be a host:port or unix: address"));
  CHECK(has_issue(issues_of("metrics: { listen: \"nope\" }\n" + web_job("")),
                  "/tmp/x/test.yaml:1:20: metrics.listen: "));
  CHECK(has_issue(issues_of("metrics: { textfile: /a/b.prom, interval: 10ms }\n" + web_job("")),
                  "metrics.interval must be at least 100ms"));
  CHECK(has_issue(issues_of("metrics: { interval: 10s }\n" + web_job("")),
                  "/tmp/x/test.yaml:1:22: metrics.interval applies to metrics.textfile"));
  CHECK(has_issue(issues_of("metrics: { textfile: /a/, interval: 10s }\n" + web_job("")),
                  "metrics.textfile must name a file"));
  CHECK(has_issue(issues_of("metrics: { textfile: /a/b.prom, interval: soon }\n" + web_job("")),
                  "metrics.interval: "));
  CHECK(has_issue(issues_of("metricz: {}\n" + web_job("")),
                  "unknown key \"metricz\" in top level; did you mean \"metrics\"?"));
}
