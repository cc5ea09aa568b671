#include "container/limits.h"

#include <sched.h>

#include <algorithm>
#include <charconv>
#include <fstream>
#include <sstream>
#include <string_view>
#include <vector>

namespace corral {
namespace {

// v1's "no limit": LONG_MAX rounded down to a page (mm/memcontrol.c, PAGE_COUNTER_MAX).
// Anything at or above 2^62 is treated as none.
constexpr std::uint64_t kNoLimitFloor = 1ULL << 62;

std::optional<std::string> read_file(const std::string& path) {
  std::ifstream f(path);
  if (!f) return std::nullopt;
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::optional<std::int64_t> to_int(std::string_view s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.remove_suffix(1);
  std::int64_t v = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || ptr != s.data() + s.size()) return std::nullopt;
  return v;
}

struct CgroupPaths {
  std::string v2;  // the unified hierarchy's path ("0::/x"), or "" if none
  bool has_v2 = false;
  std::string cpu, memory;  // v1 paths of those controllers
  bool has_cpu = false, has_memory = false;
};

CgroupPaths parse_proc_cgroup(const std::string& text) {
  CgroupPaths p;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    auto a = line.find(':');
    auto b = a == std::string::npos ? a : line.find(':', a + 1);
    if (b == std::string::npos) continue;
    std::string controllers = line.substr(a + 1, b - a - 1);
    std::string path = line.substr(b + 1);
    if (controllers.empty()) {
      p.v2 = path;
      p.has_v2 = true;
      continue;
    }
    std::istringstream cs(controllers);
    std::string c;
    while (std::getline(cs, c, ',')) {
      if (c == "cpu") {
        p.cpu = path;
        p.has_cpu = true;
      } else if (c == "memory") {
        p.memory = path;
        p.has_memory = true;
      }
    }
  }
  return p;
}

// The directories from the process's cgroup up to the mount's root. Inside a container
// without a cgroup namespace the path may not exist under the mount (the mount's root
// is the container's own cgroup): then the root alone.
std::vector<std::string> up_the_tree(const std::string& mount, const std::string& path) {
  std::vector<std::string> out;
  std::string p = path;
  while (!p.empty() && p != "/") {
    std::ifstream probe(mount + p + "/cgroup.procs");
    if (probe) out.push_back(mount + p);
    auto slash = p.rfind('/');
    p = slash == std::string::npos || slash == 0 ? "" : p.substr(0, slash);
  }
  out.push_back(mount);
  return out;
}

void take_cpu(ContainerLimits& l, std::int64_t quota, std::int64_t period) {
  if (quota <= 0 || period <= 0) return;
  const auto c = static_cast<unsigned>(std::max<std::int64_t>(1, (quota + period - 1) / period));
  if (!l.cpu_quota || c < l.cpus) {
    l.cpus = c;
    l.cpu_quota = true;
  }
}

void take_memory(ContainerLimits& l, std::int64_t bytes) {
  if (bytes <= 0 || static_cast<std::uint64_t>(bytes) >= kNoLimitFloor) return;
  const auto b = static_cast<std::uint64_t>(bytes);
  if (!l.memory_bytes || b < *l.memory_bytes) l.memory_bytes = b;
}

}  // namespace

ContainerLimits read_container_limits(const std::string& proc_self_cgroup,
                                      const std::string& cgroup_root, unsigned affinity_cpus) {
  ContainerLimits l;
  const auto paths = parse_proc_cgroup(proc_self_cgroup);
  if (paths.has_cpu) {
    for (const auto& dir : up_the_tree(cgroup_root + "/cpu", paths.cpu)) {
      auto q = read_file(dir + "/cpu.cfs_quota_us");
      auto p = read_file(dir + "/cpu.cfs_period_us");
      if (!q || !p) continue;
      auto qv = to_int(*q);
      auto pv = to_int(*p);
      if (qv && pv) take_cpu(l, *qv, *pv);
    }
  }
  if (paths.has_memory) {
    for (const auto& dir : up_the_tree(cgroup_root + "/memory", paths.memory)) {
      if (auto m = read_file(dir + "/memory.limit_in_bytes"))
        if (auto v = to_int(*m)) take_memory(l, *v);
    }
  }
  if (paths.has_v2) {
    // Unified: at the root on a pure v2 host, under unified/ on a hybrid one.
    for (const std::string& mount : {cgroup_root, cgroup_root + "/unified"}) {
      std::ifstream probe(mount + "/cgroup.controllers");
      if (!probe) continue;
      for (const auto& dir : up_the_tree(mount, paths.v2)) {
        if (auto c = read_file(dir + "/cpu.max")) {
          std::istringstream in(*c);
          std::string quota, period;
          in >> quota >> period;
          auto qv = to_int(quota);
          auto pv = to_int(period);
          if (quota != "max" && qv && pv) take_cpu(l, *qv, *pv);
        }
        if (auto m = read_file(dir + "/memory.max")) {
          if (m->rfind("max", 0) != 0)
            if (auto v = to_int(*m)) take_memory(l, *v);
        }
      }
      break;
    }
  }
  if (!l.cpu_quota) l.cpus = std::max(1U, affinity_cpus);
  return l;
}

const ContainerLimits& container_limits() {
  static const ContainerLimits limits = [] {
    cpu_set_t set;
    CPU_ZERO(&set);
    unsigned affinity = 1;
    if (::sched_getaffinity(0, sizeof set, &set) == 0)
      affinity = static_cast<unsigned>(CPU_COUNT(&set));
    return read_container_limits(read_file("/proc/self/cgroup").value_or(""), "/sys/fs/cgroup",
                                 affinity);
  }();
  return limits;
}

}  // namespace corral
