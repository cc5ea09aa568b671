// lib/common/proc_memory: a worker's memory, a warm acceptor's children included.
#include "common/proc_memory.h"

#include <doctest/doctest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

std::size_t parse(const char* text, std::vector<pid_t>& out, std::size_t max = 16) {
  out.assign(max, 0);
  const std::size_t n = corral::parse_child_pids(text, std::strlen(text), out.data(), max);
  out.resize(n);
  return n;
}

}  // namespace

TEST_CASE("a children file's pids, each followed by a space") {
  std::vector<pid_t> pids;
  CHECK(parse("", pids) == 0);
  CHECK(parse("1234 ", pids) == 1);
  CHECK(pids[0] == 1234);
  CHECK(parse("1234 56 7890 ", pids) == 3);
  CHECK(pids == std::vector<pid_t>{1234, 56, 7890});
  // A read cut short: the last pid has no space after it and may be missing digits.
  CHECK(parse("1234 567", pids) == 1);
  // Garbage, zero, a sign, a value beyond a pid: the list ends there.
  CHECK(parse("12 x 34 ", pids) == 1);
  CHECK(parse("0 12 ", pids) == 0);
  CHECK(parse("-5 ", pids) == 0);
  CHECK(parse("99999999999999999999 ", pids) == 0);
  CHECK(parse("4294967296 ", pids) == 0);
  // At most `max`.
  CHECK(parse("1 2 3 4 5 ", pids, 3) == 3);
  CHECK(pids == std::vector<pid_t>{1, 2, 3});
}

TEST_CASE("the parent pid of a stat line, whatever the command name holds") {
  const char* plain = "4321 (python3) S 1200 4321 4321 0 -1 4194560";
  CHECK(corral::parse_stat_ppid(plain, std::strlen(plain)) == 1200);
  const char* odd = "4321 (a) S 99 (b) R 7 8 9";
  CHECK(corral::parse_stat_ppid(odd, std::strlen(odd)) == 7);
  CHECK(corral::parse_stat_ppid("4321 (x", 7) == 0);
  CHECK(corral::parse_stat_ppid("4321 (x) S", 10) == 0);
  CHECK(corral::parse_stat_ppid("", 0) == 0);
}

TEST_CASE("a process's memory, and its children's when asked") {
  std::uint64_t own = 0;
  REQUIRE(corral::process_memory(::getpid(), corral::MemoryMeasure::rss, own));
  CHECK(own > 0);
  std::uint64_t pss = 0;
  REQUIRE(corral::process_memory(::getpid(), corral::MemoryMeasure::pss, pss));
  CHECK(pss > 0);
  std::uint64_t none = 0;
  CHECK_FALSE(corral::process_memory(0x7ffffff0, corral::MemoryMeasure::rss, none));
  CHECK_FALSE(corral::worker_memory(0x7ffffff0, corral::MemoryMeasure::rss, true).valid);

  // A child that touches 32 MiB, then waits.
  int ready[2];
  REQUIRE(::pipe(ready) == 0);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::close(ready[0]);
    const std::size_t size = 32U << 20;
    // Written through a volatile pointer, page by page: not optimised away.
    auto* volatile p = static_cast<char*>(std::malloc(size));
    for (std::size_t i = 0; p != nullptr && i < size; i += 4096) p[i] = 1;
    (void)!::write(ready[1], "r", 1);
    ::pause();
    ::_exit(0);
  }
  ::close(ready[1]);
  char c = 0;
  REQUIRE(::read(ready[0], &c, 1) == 1);
  ::close(ready[0]);
  const auto alone = corral::worker_memory(::getpid(), corral::MemoryMeasure::rss, false);
  const auto with = corral::worker_memory(::getpid(), corral::MemoryMeasure::rss, true);
  CHECK(alone.valid);
  CHECK(alone.child_bytes == 0);
  CHECK(alone.largest_child == 0);
  CHECK(with.valid);
  CHECK_FALSE(with.children_unknown);
  CHECK(with.largest_child == child);
  CHECK(with.child_bytes >= (32U << 20));
  CHECK(with.bytes >= with.child_bytes);
  const auto with_pss = corral::worker_memory(::getpid(), corral::MemoryMeasure::pss, true);
  CHECK(with_pss.largest_child == child);
  CHECK(with_pss.child_bytes >= (16U << 20));
  ::kill(child, SIGKILL);
  int status = 0;
  ::waitpid(child, &status, 0);
}
