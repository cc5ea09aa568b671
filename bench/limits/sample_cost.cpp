// What a memory sample costs the supervisor (docs/BENCHMARKS.md section 13): a worker
// alone (prefork, cold inetd) against a warm acceptor with its program (the children
// file, the child's size, its stat), RSS and PSS, alternating in the same run.
//
//   g++ -std=c++20 -O2 -Ilib -o /tmp/sample_cost      (one line, with the next)
//       bench/limits/sample_cost.cpp build/libcorral_common.a
//   /tmp/sample_cost 2000 3 64   (samples per round, rounds, MiB the child holds)
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "common/proc_memory.h"

namespace {

double ns_per_call(pid_t pid, corral::MemoryMeasure m, bool children, int n) {
  std::uint64_t sink = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < n; ++i) sink += corral::worker_memory(pid, m, children).bytes;
  const auto t1 = std::chrono::steady_clock::now();
  if (sink == 0) std::fprintf(stderr, "nothing measured\n");
  return std::chrono::duration<double, std::nano>(t1 - t0).count() / n;
}

}  // namespace

int main(int argc, char** argv) {
  const int n = argc > 1 ? std::atoi(argv[1]) : 20000;
  const int rounds = argc > 2 ? std::atoi(argv[2]) : 3;
  const std::size_t mib = argc > 3 ? std::strtoul(argv[3], nullptr, 10) : 64;
  // The "acceptor": a process with one child holding `mib` MiB, as a warm program would;
  // a process group of their own, killed as one at the end.
  int ready[2];
  if (::pipe(ready) != 0) return 1;
  const pid_t acceptor = ::fork();
  if (acceptor == 0) {
    ::setpgid(0, 0);
    if (::fork() == 0) {
      const std::size_t size = mib << 20;
      auto* volatile p = static_cast<char*>(std::malloc(size));
      for (std::size_t i = 0; p != nullptr && i < size; i += 4096) p[i] = 1;
      (void)!::write(ready[1], "r", 1);
      ::pause();
      ::_exit(0);
    }
    ::pause();
    ::_exit(0);
  }
  char c = 0;
  if (::read(ready[0], &c, 1) != 1) return 1;
  struct Case {
    const char* name;
    corral::MemoryMeasure m;
    bool children;
    std::vector<double> ns;
  };
  std::vector<Case> cases = {{"rss, alone", corral::MemoryMeasure::rss, false, {}},
                             {"rss, with children", corral::MemoryMeasure::rss, true, {}},
                             {"pss, alone", corral::MemoryMeasure::pss, false, {}},
                             {"pss, with children", corral::MemoryMeasure::pss, true, {}}};
  for (int r = 0; r < rounds; ++r) {
    for (auto& k : cases) k.ns.push_back(ns_per_call(acceptor, k.m, k.children, n));
  }
  for (auto& k : cases) {
    std::sort(k.ns.begin(), k.ns.end());
    std::printf("%-20s median %8.0f ns per sample (", k.name, k.ns[k.ns.size() / 2]);
    for (double v : k.ns) std::printf(" %.0f", v);
    std::printf(" )\n");
  }
  std::printf("ratio rss with/alone %.2f, pss with/alone %.2f\n",
              cases[1].ns[cases[1].ns.size() / 2] / cases[0].ns[cases[0].ns.size() / 2],
              cases[3].ns[cases[3].ns.size() / 2] / cases[2].ns[cases[2].ns.size() / 2]);
  ::kill(-acceptor, SIGKILL);
  ::waitpid(acceptor, nullptr, 0);
  return 0;
}
