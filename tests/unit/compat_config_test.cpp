// lib/config, the compatibility keys: env_conventions, fastcgi and $(corral.sockets.NAME)
// in `command`, with every error `corral check` reports for them (FILE:LINE:COLUMN).
#include <doctest/doctest.h>
#include <unistd.h>

#include <cstdlib>

#include <string>
#include <vector>

#include "config/config.h"

namespace {

const std::string kFile = "/tmp/x/compat.yaml";
const corral::CheckOptions kNoChecks{false, false};

corral::Config load(const std::string& text) {
  return corral::load_config_text(text, kFile, kNoChecks);
}

std::vector<std::string> issues_of(const std::string& text) {
  try {
    (void)corral::load_config_text(text, kFile, kNoChecks);
  } catch (const corral::ConfigError& e) {
    std::vector<std::string> out;
    for (const auto& issue : e.issues()) out.push_back(issue.to_string());
    return out;
  }
  return {};
}

std::string only_issue(const std::string& text) {
  auto issues = issues_of(text);
  REQUIRE(issues.size() == 1);
  return issues.front();
}

}  // namespace

TEST_CASE("env_conventions defaults to systemd alone; the list only adds") {
  auto plain = load("jobs:\n  a:\n    command: [/bin/true]\n    listen: [\"127.0.0.1:0\"]\n");
  const auto& c = plain.jobs[0].compat;
  CHECK(c.speaks(corral::EnvConvention::systemd));
  CHECK_FALSE(c.speaks(corral::EnvConvention::einhorn));
  CHECK_FALSE(c.speaks(corral::EnvConvention::server_starter));
  CHECK_FALSE(c.fastcgi);

  auto all = load(
      "jobs:\n  a:\n    command: [/bin/true]\n    mode: plain\n    listen: [\"127.0.0.1:0\"]\n"
      "    env_conventions: [einhorn, server_starter]\n");
  const auto& d = all.jobs[0].compat;
  CHECK(d.speaks(corral::EnvConvention::systemd));  // LISTEN_* stay, whatever the list says
  CHECK(d.speaks(corral::EnvConvention::einhorn));
  CHECK(d.speaks(corral::EnvConvention::server_starter));
}

TEST_CASE("an unknown convention, or a scalar, is an error at its position") {
  CHECK(only_issue("jobs:\n  a:\n    command: [/bin/true]\n    mode: plain\n    listen: "
                   "[\"127.0.0.1:0\"]\n    env_conventions: [systemd, circus]\n") ==
        "/tmp/x/compat.yaml:6:32: each of env_conventions must be systemd, einhorn or "
        "server_starter, not \"circus\"");
  CHECK(only_issue("jobs:\n  a:\n    command: [/bin/true]\n    mode: plain\n    listen: "
                   "[\"127.0.0.1:0\"]\n    env_conventions: einhorn\n") ==
        "/tmp/x/compat.yaml:6:22: env_conventions must be a list, e.g. [systemd, einhorn, "
        "server_starter]");
}

TEST_CASE("unknown keys near the new ones still fail, with a suggestion") {
  CHECK(only_issue("jobs:\n  a:\n    command: [/bin/true]\n    fastcgl: true\n    mode: plain\n")
            .find("4:5: unknown key \"fastcgl\" in job \"a\"; did you mean \"fastcgi\"?") !=
        std::string::npos);
}

TEST_CASE("fastcgi: true needs plain mode and exactly one listener") {
  auto ok = load(
      "jobs:\n  f:\n    command: [/bin/true]\n    mode: plain\n    listen: "
      "[\"unix:/tmp/x/f.sock\"]\n"
      "    fastcgi: true\n");
  CHECK(ok.jobs[0].compat.fastcgi);

  CHECK(only_issue("jobs:\n  f:\n    command: [/bin/true]\n    listen: [\"127.0.0.1:0\"]\n"
                   "    fastcgi: true\n") ==
        "/tmp/x/compat.yaml:5:14: job \"f\": fastcgi: true needs mode: plain, not prefork (a "
        "FastCGI application writes no scoreboard slot)");
  CHECK(only_issue("jobs:\n  f:\n    command: [/bin/true]\n    mode: plain\n    listen: "
                   "[\"127.0.0.1:0\", \"127.0.0.1:1\"]\n    fastcgi: true\n") ==
        "/tmp/x/compat.yaml:6:14: job \"f\": fastcgi: true needs exactly one listener (it goes on "
        "fd 0), not 2");
  CHECK(only_issue("jobs:\n  f:\n    command: [/bin/true]\n    mode: plain\n    fastcgi: true\n") ==
        "/tmp/x/compat.yaml:5:14: job \"f\": fastcgi: true needs exactly one listener (it goes on "
        "fd 0), not 0");
  CHECK(only_issue("jobs:\n  f:\n    command: [/bin/true]\n    mode: plain\n    listen: "
                   "[\"127.0.0.1:0\"]\n    fastcgi: yes please\n") ==
        "/tmp/x/compat.yaml:6:14: fastcgi must be true or false, not \"yes please\"");
  CHECK(only_issue("jobs:\n  f:\n    command: [/bin/true]\n    mode: plain\n    listen: "
                   "[\"127.0.0.1:0\"]\n    fastcgi: true\n    env_conventions: [einhorn]\n")
            .find("6:14: job \"f\": fastcgi: true passes the listener on fd 0 with no variables") !=
        std::string::npos);
}

TEST_CASE("$(corral.sockets.NAME) is found anywhere in an argument; other $ stay literal") {
  auto refs = corral::find_socket_refs("--fd=$(corral.sockets.web),$(corral.sockets.admin)", 2);
  REQUIRE(refs.size() == 2);
  CHECK(refs[0].arg == 2);
  CHECK(refs[0].name == "web");
  CHECK(refs[0].offset == 5);
  CHECK(refs[0].length == std::string("$(corral.sockets.web)").size());
  CHECK(refs[1].name == "admin");
  CHECK(corral::find_socket_refs("echo $HOME $(date) ${x} $$ $(corral", 1).empty());

  auto expanded = corral::expand_socket_refs(
      {"/bin/app", "--fd", "$(corral.sockets.web)",
       "a=$(corral.sockets.admin);b=$(corral.sockets.web)"},
      {corral::find_socket_refs("$(corral.sockets.web)", 2)[0],
       corral::find_socket_refs("a=$(corral.sockets.admin);b=$(corral.sockets.web)", 3)[0],
       corral::find_socket_refs("a=$(corral.sockets.admin);b=$(corral.sockets.web)", 3)[1]},
      [](const corral::SocketRef& r) { return r.name == "web" ? 3 : 4; });
  CHECK(expanded == std::vector<std::string>{"/bin/app", "--fd", "3", "a=4;b=3"});
}

TEST_CASE("a malformed $(corral. is an error") {
  CHECK_THROWS_WITH_AS(corral::find_socket_refs("$(corral.socket.web)", 1),
                       doctest::Contains("not a substitution corral knows"), corral::ConfigError);
  CHECK_THROWS_WITH_AS(corral::find_socket_refs("$(corral.sockets.web", 1),
                       doctest::Contains("is not closed"), corral::ConfigError);
  CHECK_THROWS_WITH_AS(corral::find_socket_refs("$(corral.sockets.)", 1),
                       doctest::Contains("NAME must be a listener's name"), corral::ConfigError);
}

TEST_CASE("substitutions are checked against the job's listeners, at the argument") {
  const std::string head =
      "jobs:\n  web:\n    mode: plain\n    listen:\n      - \"127.0.0.1:0\"\n"
      "      - { address: \"unix:/tmp/x/a.sock\", name: admin }\n";
  auto ok = load(head +
                 "    command: [/bin/app, --fd, \"$(corral.sockets.web)\", "
                 "\"--admin=$(corral.sockets.admin)\"]\n");
  REQUIRE(ok.jobs[0].compat.socket_refs.size() == 2);
  CHECK(ok.jobs[0].compat.socket_refs[1].name == "admin");

  CHECK(only_issue(head + "    command: [/bin/app, --fd, \"$(corral.sockets.www)\"]\n") ==
        "/tmp/x/compat.yaml:7:31: job \"web\": $(corral.sockets.www): the job has no listener "
        "named \"www\" (its listeners: web, admin)");
  // The shell keeps its own $: only $(corral. is corral's.
  CHECK(issues_of(head + "    command: [/bin/sh, -c, 'echo $HOME $(date)']\n").empty());

  CHECK(only_issue("jobs:\n  web:\n    mode: plain\n    listen: [\"127.0.0.1:0\", \"[::1]:0\"]\n"
                   "    command: [/bin/app, \"$(corral.sockets.web)\"]\n") ==
        "/tmp/x/compat.yaml:5:25: job \"web\": $(corral.sockets.web) stands for 2 listeners named "
        "\"web\", and one number can name one fd; give each listener its own \"name:\"");
  CHECK(only_issue("jobs:\n  web:\n    mode: inetd\n    listen: [\"127.0.0.1:0\"]\n"
                   "    command: [/bin/app, \"$(corral.sockets.web)\"]\n")
            .find("5:25: job \"web\": $(corral.sockets.web): an inetd program gets no listener") !=
        std::string::npos);
  CHECK(only_issue("jobs:\n  web:\n    mode: plain\n    listen: [\"127.0.0.1:0\"]\n"
                   "    command: [\"/bin/$(corral.sockets.web)\"]\n") ==
        "/tmp/x/compat.yaml:5:15: $(corral.sockets.NAME) may stand in the arguments, not in the "
        "program name");
  CHECK(only_issue("jobs:\n  web:\n    mode: plain\n    listen: [\"127.0.0.1:0\"]\n"
                   "    command: [/bin/app, \"$(corral.port)\"]\n") ==
        "/tmp/x/compat.yaml:5:25: \"$(corral.port)\" is not a substitution corral knows; the one "
        "it has is $(corral.sockets.NAME), the fd number of listener NAME");
  // A command given as one string: each word shares its position.
  CHECK(only_issue("jobs:\n  web:\n    mode: plain\n    listen: [\"127.0.0.1:0\"]\n"
                   "    command: /bin/app --fd $(corral.sockets.nope)\n")
            .find("5:14: job \"web\": $(corral.sockets.nope): the job has no listener") !=
        std::string::npos);
}

TEST_CASE("a systemd:NAME that stands for several sockets is an error when systemd passed them") {
  const std::string text =
      "jobs:\n  web:\n    mode: plain\n    listen: [\"systemd:web\"]\n"
      "    command: [/bin/app, \"$(corral.sockets.web)\"]\n";
  CHECK(issues_of(text).empty());  // corral check, outside the unit: cannot know
  const std::string pid = std::to_string(::getpid());
  ::setenv("LISTEN_PID", pid.c_str(), 1);
  ::setenv("LISTEN_FDS", "3", 1);
  ::setenv("LISTEN_FDNAMES", "web:other:web", 1);
  auto issues = issues_of(text);
  ::setenv("LISTEN_FDNAMES", "web:other", 1);
  auto single = issues_of(text);
  ::unsetenv("LISTEN_PID");
  ::unsetenv("LISTEN_FDS");
  ::unsetenv("LISTEN_FDNAMES");
  REQUIRE(issues.size() == 1);
  CHECK(issues[0] ==
        "/tmp/x/compat.yaml:5:25: job \"web\": $(corral.sockets.web) stands for 2 sockets systemd "
        "passed as \"web\" (LISTEN_FDNAMES), and one number can name one fd");
  CHECK(single.empty());
}

TEST_CASE("the command line gets substitutions too, at the job's position") {
  corral::Config config;
  corral::JobConfig job;
  job.name = "app";
  job.mode = corral::Mode::plain;
  job.workers.start = 1;
  job.command = {"/bin/true", "--fd", "$(corral.sockets.app)"};
  corral::ListenerSpec l;
  l.address = corral::parse_listen_address("127.0.0.1:0");
  job.listeners.push_back(l);
  config.jobs.push_back(job);
  corral::validate_config(config, kNoChecks);
  REQUIRE(config.jobs[0].compat.socket_refs.size() == 1);
  CHECK(config.jobs[0].compat.socket_refs[0].arg == 2);
}
