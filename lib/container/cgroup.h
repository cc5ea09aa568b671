// Per-worker cgroups (`cgroup:`, docs/LIMITS.md): one cgroup per worker slot, under the
// supervisor's own cgroup of each controller, at DIR/corral-JOB/slot-N. Per controller:
// cgroup v2 when the unified hierarchy lists it in `cgroup.controllers`, else its v1
// hierarchy. Every directory is created and opened relative to an fd opened without
// following links; the child moves itself in by writing its pid to a `cgroup.procs` fd
// the supervisor opened (spawn.h SpawnPlan::cgroup_procs), so it looks up no path.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/unique_fd.h"

namespace corral {

enum class CgroupController : std::uint8_t { memory, pids, cpu };

/// Where the supervisor's own cgroup of one controller is.
struct CgroupPlace {
  std::string dir;  // absolute; "" when no hierarchy has the controller
  bool v2 = false;
  [[nodiscard]] bool found() const { return !dir.empty(); }
};

struct CgroupPlaces {
  CgroupPlace memory, pids, cpu;
  [[nodiscard]] const CgroupPlace& of(CgroupController c) const {
    return c == CgroupController::memory ? memory : c == CgroupController::pids ? pids : cpu;
  }
};

/// Reads `proc_self_cgroup` (the text of /proc/self/cgroup) and the hierarchies under
/// `cgroup_root` (normally /sys/fs/cgroup; the unified one there or at unified/). Pure
/// apart from reading files; unit-tested on fixture trees.
CgroupPlaces find_cgroup_places(const std::string& proc_self_cgroup,
                                const std::string& cgroup_root);

/// This process's places, read once and cached.
const CgroupPlaces& cgroup_places();

/// A worker's values (0: not set).
struct CgroupValues {
  std::uint64_t memory_high = 0;
  std::uint64_t memory_max = 0;
  std::uint64_t pids_max = 0;
  unsigned cpu_weight = 0;
};

/// One control file a slot cgroup gets.
struct CgroupWrite {
  CgroupController controller;
  std::string file;
  std::string value;
};

/// The controllers a slot cgroup needs: memory always (its OOM count names an OOM kill
/// of that worker), pids and cpu when set.
std::vector<CgroupController> cgroup_controllers(const CgroupValues& values);

/// The files and values for `values` with these places. Pure; unit-tested. v2:
/// memory.high, memory.max, pids.max, cpu.weight. v1: memory.limit_in_bytes, pids.max,
/// cpu.shares = weight * 1024 / 100 (at least 2); memory_high has no v1 file (skipped).
std::vector<CgroupWrite> cgroup_writes(const CgroupValues& values, const CgroupPlaces& places);

/// One worker slot's cgroups, one directory per distinct hierarchy (one on v2).
class SlotCgroup {
 public:
  SlotCgroup() = default;
  SlotCgroup(SlotCgroup&&) noexcept = default;
  SlotCgroup& operator=(SlotCgroup&&) noexcept = default;

  /// Creates DIR/corral-JOB/slot-N for every controller `values` needs (an existing
  /// one, left by a previous worker or image, is adopted), writes the values unless
  /// `adopt`, and opens each `cgroup.procs` for the child. On v2 the supervisor's cgroup
  /// first gets the controllers in `cgroup.subtree_control`, after corral moved itself
  /// into the leaf DIR/supervisor if it was not empty (the no-internal-process rule).
  /// The error names the path. Links are never followed below DIR.
  static Result<SlotCgroup> open(const CgroupPlaces& places, const CgroupValues& values,
                                 const std::string& job, unsigned slot, bool adopt);

  /// The cgroup.procs fds a child writes its pid to (close-on-exec).
  [[nodiscard]] std::vector<int> procs_fds() const;

  /// OOM kills counted by this slot's memory cgroup (v1 memory.oom_control, v2
  /// memory.events `oom_kill`); 0 when unknown.
  [[nodiscard]] std::uint64_t oom_kills() const;

  /// Removes the slot directories (and closes their fds); true when every one is gone.
  /// A cgroup still holding processes (EBUSY) stays, for a later try.
  bool remove();

  /// The slot directories, for messages ("/sys/fs/cgroup/memory/x/corral-app/slot-0").
  [[nodiscard]] std::string describe() const;
  [[nodiscard]] bool empty() const { return dirs_.empty(); }

  std::uint64_t oom_base = 0;  // oom_kills() when the current worker started

 private:
  struct Dir {
    UniqueFd job;    // DIR/corral-JOB
    UniqueFd slot;   // .../slot-N
    UniqueFd procs;  // .../slot-N/cgroup.procs
    std::string name;
    std::string path;
    bool v2 = false;
    bool memory = false;
  };
  std::vector<Dir> dirs_;
};

/// Removes DIR/corral-JOB/slot-* directories of `job` whose slot is not in `keep`, and
/// DIR/corral-JOB itself when `keep` is empty, for every hierarchy in `places`. What
/// still holds processes stays. Returns how many directories are left.
unsigned remove_stale_slot_cgroups(const CgroupPlaces& places, const std::string& job,
                                   const std::vector<unsigned>& keep);

}  // namespace corral
