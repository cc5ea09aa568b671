// What the container (the supervisor's own cgroup) allows: CPUs from the CFS quota, and
// the memory limit. Read at start, for `workers.start: auto` / `workers.max: auto`, for
// `corral status` and the metrics, and for per-worker memory bounds.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace corral {

struct ContainerLimits {
  /// C = ceil(quota / period) when a CPU quota applies (cgroup v2 `cpu.max`, v1
  /// `cpu.cfs_quota_us` / `cpu.cfs_period_us`, the smallest along the path to the root),
  /// else the number of CPUs in the affinity mask. Never 0.
  unsigned cpus = 1;
  bool cpu_quota = false;  // whether `cpus` came from a quota
  /// The memory limit (v2 `memory.max`, v1 `memory.limit_in_bytes`, the smallest along
  /// the path); nullopt when there is none ("max", or v1's "unlimited" page-rounded
  /// LONG_MAX, 9223372036854771712 on x86-64).
  std::optional<std::uint64_t> memory_bytes;
};

/// Reads the limits from `proc_self_cgroup` (the text of /proc/self/cgroup) and the
/// cgroup file systems under `cgroup_root` (normally "/sys/fs/cgroup": v1 controllers
/// at cgroup_root/cpu, .../memory, or v2 at cgroup_root itself or cgroup_root/unified).
/// `affinity_cpus` is what sched_getaffinity counts. Pure apart from reading files;
/// unit-tested on fixture trees.
ContainerLimits read_container_limits(const std::string& proc_self_cgroup,
                                      const std::string& cgroup_root, unsigned affinity_cpus);

/// The limits of this process, read once and cached.
const ContainerLimits& container_limits();

}  // namespace corral
