#include "log/log.h"

#include <doctest/doctest.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <string>

namespace {

bool has(const std::vector<std::string>& fields, const std::string& field) {
  return std::find(fields.begin(), fields.end(), field) != fields.end();
}

bool has_prefix(const std::vector<std::string>& fields, const std::string& prefix) {
  return std::any_of(fields.begin(), fields.end(),
                     [&](const auto& f) { return f.starts_with(prefix); });
}

}  // namespace

TEST_CASE("a record outside any LogContext carries message, priority and identifier only") {
  auto fields =
      corral::journal_fields(spdlog::level::warn, "disk full", corral::LogContext::current());
  CHECK(fields ==
        std::vector<std::string>{"MESSAGE=disk full", "PRIORITY=4", "SYSLOG_IDENTIFIER=corral"});
}

TEST_CASE("priorities follow syslog: debug 7, info 6, warning 4, error 3, critical 2") {
  corral::LogFields none;
  CHECK(has(corral::journal_fields(spdlog::level::trace, "m", none), "PRIORITY=7"));
  CHECK(has(corral::journal_fields(spdlog::level::debug, "m", none), "PRIORITY=7"));
  CHECK(has(corral::journal_fields(spdlog::level::info, "m", none), "PRIORITY=6"));
  CHECK(has(corral::journal_fields(spdlog::level::err, "m", none), "PRIORITY=3"));
  CHECK(has(corral::journal_fields(spdlog::level::critical, "m", none), "PRIORITY=2"));
}

TEST_CASE("LogContext adds job, slot and worker pid, nests, and restores on exit") {
  std::string job = "web";
  {
    corral::LogContext job_ctx{job};
    auto f = corral::journal_fields(spdlog::level::info, "m", corral::LogContext::current());
    CHECK(has(f, "CORRAL_JOB=web"));
    CHECK_FALSE(has_prefix(f, "CORRAL_SLOT="));
    CHECK_FALSE(has_prefix(f, "CORRAL_WORKER_PID="));
    {
      corral::LogContext worker_ctx{job, 3U, 1234};
      f = corral::journal_fields(spdlog::level::info, "m", corral::LogContext::current());
      CHECK(has(f, "CORRAL_JOB=web"));
      CHECK(has(f, "CORRAL_SLOT=3"));
      CHECK(has(f, "CORRAL_WORKER_PID=1234"));
      {
        // A job-only context inside a worker's keeps the worker's slot and pid.
        corral::LogContext inner{job};
        CHECK(corral::LogContext::current().pid == 1234);
        CHECK(corral::LogContext::current().slot == 3);
      }
    }
    CHECK(corral::LogContext::current().slot == -1);
    CHECK(corral::LogContext::current().pid == 0);
  }
  CHECK(corral::LogContext::current().job.empty());
}

TEST_CASE("slot 0 is a slot; a spawn that has no pid yet gives none") {
  corral::LogContext ctx{"web", 0U};
  auto f = corral::journal_fields(spdlog::level::err, "m", corral::LogContext::current());
  CHECK(has(f, "CORRAL_SLOT=0"));
  CHECK_FALSE(has_prefix(f, "CORRAL_WORKER_PID="));
}

TEST_CASE("stderr is the journal only when JOURNAL_STREAM names its device and inode") {
  const char* saved = std::getenv("JOURNAL_STREAM");
  std::string restore = saved != nullptr ? saved : "";
  struct stat st {};
  REQUIRE(::fstat(STDERR_FILENO, &st) == 0);
  auto dev = std::to_string(st.st_dev);
  auto ino = std::to_string(st.st_ino);

  ::unsetenv("JOURNAL_STREAM");
  CHECK_FALSE(corral::stderr_is_journal());
  ::setenv("JOURNAL_STREAM", (dev + ":" + ino).c_str(), 1);
  CHECK(corral::stderr_is_journal());
  // A stream inherited by a child whose stderr was redirected elsewhere no longer matches.
  ::setenv("JOURNAL_STREAM", (dev + ":" + std::to_string(st.st_ino + 1)).c_str(), 1);
  CHECK_FALSE(corral::stderr_is_journal());
  ::setenv("JOURNAL_STREAM", (dev + ":" + ino + "x").c_str(), 1);
  CHECK_FALSE(corral::stderr_is_journal());
  ::setenv("JOURNAL_STREAM", "garbage", 1);
  CHECK_FALSE(corral::stderr_is_journal());

  if (saved != nullptr)
    ::setenv("JOURNAL_STREAM", restore.c_str(), 1);
  else
    ::unsetenv("JOURNAL_STREAM");
}
