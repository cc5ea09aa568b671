// lib/container/cgroup: where each controller's cgroup is (v1, v2, hybrid), what a slot
// cgroup gets, and the v2 file logic on a directory laid out like cgroupfs (fixture
// files). A real cgroup v2 run is still owed: this machine's cgroup2 is empty (hybrid).
#include "container/cgroup.h"

#include <doctest/doctest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace fs = std::filesystem;
using corral::CgroupController;
using corral::CgroupValues;

namespace {

struct Tree {
  fs::path root;
  Tree() {
    char tmpl[] = "/tmp/corral-cgroup2-fixture-XXXXXX";
    root = ::mkdtemp(tmpl);
  }
  ~Tree() { fs::remove_all(root); }
  void file(const std::string& rel, const std::string& text) {
    fs::create_directories((root / rel).parent_path());
    std::ofstream(root / rel) << text;
  }
  [[nodiscard]] std::string read(const std::string& rel) const {
    std::ifstream f(root / rel);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }
};

std::string value_of(const std::vector<corral::CgroupWrite>& writes, const std::string& file) {
  for (const auto& w : writes)
    if (w.file == file) return w.value;
  return "(none)";
}

}  // namespace

TEST_CASE("hybrid: memory, pids and cpu on v1 (cpu co-mounted with cpuacct), v2 empty") {
  Tree t;
  t.file("unified/cgroup.controllers", "\n");
  t.file("memory/box/cgroup.procs", "");
  t.file("pids/box/cgroup.procs", "");
  t.file("cpu,cpuacct/box/cgroup.procs", "");
  auto p = corral::find_cgroup_places("8:pids:/box\n4:memory:/box\n1:cpu,cpuacct:/box\n0::/\n",
                                      t.root.string());
  CHECK(p.memory.dir == (t.root / "memory/box").string());
  CHECK_FALSE(p.memory.v2);
  CHECK(p.pids.dir == (t.root / "pids/box").string());
  CHECK(p.cpu.dir == (t.root / "cpu,cpuacct/box").string());
  const CgroupValues v{32 << 20, 64 << 20, 16, 50};
  auto w = corral::cgroup_writes(v, p);
  CHECK(value_of(w, "memory.limit_in_bytes") == std::to_string(64 << 20));
  CHECK(value_of(w, "memory.high") == "(none)");  // no v1 equivalent
  CHECK(value_of(w, "pids.max") == "16");
  CHECK(value_of(w, "cpu.shares") == "512");  // 50 * 1024 / 100
  CHECK(value_of(corral::cgroup_writes(CgroupValues{0, 0, 0, 1}, p), "cpu.shares") == "10");
}

TEST_CASE("v2: a controller listed in cgroup.controllers is v2, the others v1 or none") {
  Tree t;
  t.file("cgroup.controllers", "cpuset cpu io memory pids\n");
  t.file("svc/cgroup.controllers", "cpu memory\n");
  auto p = corral::find_cgroup_places("0::/svc\n", t.root.string());
  CHECK(p.memory.v2);
  CHECK(p.memory.dir == (t.root / "svc").string());
  CHECK(p.cpu.v2);
  CHECK_FALSE(p.pids.found());  // not delegated, and no v1 pids hierarchy
  const CgroupValues v{32 << 20, 64 << 20, 0, 300};
  auto w = corral::cgroup_writes(v, p);
  CHECK(value_of(w, "memory.high") == std::to_string(32 << 20));
  CHECK(value_of(w, "memory.max") == std::to_string(64 << 20));
  CHECK(value_of(w, "cpu.weight") == "300");
  // pids_max with no pids controller anywhere: the slot cannot be made, and says why.
  auto cg = corral::SlotCgroup::open(p, CgroupValues{0, 0, 8, 0}, "app", 0, false);
  REQUIRE_FALSE(cg);
  CHECK(cg.error().to_string().find("pids controller") != std::string::npos);
}

TEST_CASE("v2 file logic: corral leaves for a leaf, enables the controllers, writes the slot") {
  Tree t;
  t.file("unified/cgroup.controllers", "cpu memory pids\n");
  t.file("unified/svc/cgroup.controllers", "cpu memory pids\n");
  t.file("unified/svc/cgroup.procs", "4242\n4243\n");
  t.file("unified/svc/cgroup.events", "populated 1\nfrozen 0\n");  // not the root
  auto p = corral::find_cgroup_places("0::/svc\n", t.root.string());
  REQUIRE(p.memory.v2);
  auto cg = corral::SlotCgroup::open(p, CgroupValues{32 << 20, 64 << 20, 32, 200}, "app", 3, false);
  REQUIRE(cg);
  // The no-internal-process rule: what was in corral's cgroup moved to svc/supervisor.
  CHECK(t.read("unified/svc/supervisor/cgroup.procs") == "4243\n");  // one pid per write
  CHECK(t.read("unified/svc/cgroup.subtree_control") == "+memory +pids +cpu\n");
  CHECK(t.read("unified/svc/corral-app/cgroup.subtree_control") == "+memory +pids +cpu\n");
  const std::string slot = "unified/svc/corral-app/slot-3/";
  CHECK(t.read(slot + "memory.high") == std::to_string(32 << 20) + "\n");
  CHECK(t.read(slot + "memory.max") == std::to_string(64 << 20) + "\n");
  CHECK(t.read(slot + "pids.max") == "32\n");
  CHECK(t.read(slot + "cpu.weight") == "200\n");
  REQUIRE(cg->procs_fds().size() == 1);  // one directory holds every v2 controller
  CHECK(cg->oom_base == 0);
  // memory.events names this worker's OOM kill.
  t.file(slot + "memory.events", "low 0\nhigh 3\nmax 9\noom 2\noom_kill 2\noom_group_kill 0\n");
  CHECK(cg->oom_kills() == 2);
  CHECK(cg->describe() == (t.root / "unified/svc/corral-app/slot-3").string());
}

TEST_CASE("v2 at the root cgroup: no process of the machine is moved, controllers enabled") {
  Tree t;
  // The root (no cgroup.events) holds every process that is in no other cgroup.
  t.file("unified/cgroup.controllers", "cpu memory pids\n");
  t.file("unified/cgroup.procs", "1\n4242\n");
  auto p = corral::find_cgroup_places("0::/\n", t.root.string());
  REQUIRE(p.pids.v2);
  CHECK(p.pids.dir == (t.root / "unified").string());
  auto cg = corral::SlotCgroup::open(p, CgroupValues{0, 0, 32, 0}, "app", 0, false);
  REQUIRE(cg);
  CHECK_FALSE(fs::exists(t.root / "unified/supervisor"));
  CHECK(t.read("unified/cgroup.subtree_control") == "+memory +pids\n");
  CHECK(t.read("unified/corral-app/slot-0/pids.max") == "32\n");
}

TEST_CASE("adopting a slot (an upgrade) rewrites nothing and keeps the directory") {
  Tree t;
  t.file("memory/box/cgroup.procs", "");
  t.file("memory/box/corral-app/slot-1/memory.limit_in_bytes", "1234\n");
  t.file("memory/box/corral-app/slot-1/memory.oom_control",
         "oom_kill_disable 0\nunder_oom 0\noom_kill 4\n");
  auto p = corral::find_cgroup_places("4:memory:/box\n", t.root.string());
  const auto ino = fs::status(t.root / "memory/box/corral-app/slot-1").type();
  auto cg = corral::SlotCgroup::open(p, CgroupValues{0, 64 << 20, 0, 0}, "app", 1, true);
  REQUIRE(cg);
  CHECK(t.read("memory/box/corral-app/slot-1/memory.limit_in_bytes") == "1234\n");
  CHECK(cg->oom_kills() == 4);
  CHECK(cg->oom_base == 4);
  CHECK(fs::status(t.root / "memory/box/corral-app/slot-1").type() == ino);
}

TEST_CASE("a link where a slot or job cgroup should be is refused, not followed") {
  Tree t;
  t.file("memory/box/cgroup.procs", "");
  t.file("elsewhere/memory.limit_in_bytes", "untouched\n");
  fs::create_directories(t.root / "memory/box/corral-app");
  fs::create_directory_symlink(t.root / "elsewhere", t.root / "memory/box/corral-app/slot-0");
  auto p = corral::find_cgroup_places("4:memory:/box\n", t.root.string());
  auto cg = corral::SlotCgroup::open(p, CgroupValues{0, 64 << 20, 0, 0}, "app", 0, false);
  REQUIRE_FALSE(cg);
  CHECK(cg.error().to_string().find("slot-0") != std::string::npos);
  CHECK(t.read("elsewhere/memory.limit_in_bytes") == "untouched\n");
}

TEST_CASE("stale slot cgroups of a job are removed, the ones in use kept") {
  Tree t;
  t.file("memory/box/cgroup.procs", "");
  fs::create_directories(t.root / "memory/box/corral-app/slot-2");
  fs::create_directories(t.root / "memory/box/corral-app/slot-7");
  fs::create_directories(t.root / "memory/box/corral-app/not-a-slot");
  auto p = corral::find_cgroup_places("4:memory:/box\n", t.root.string());
  CHECK(corral::remove_stale_slot_cgroups(p, "app", {2}) == 0);
  CHECK(fs::exists(t.root / "memory/box/corral-app/slot-2"));
  CHECK_FALSE(fs::exists(t.root / "memory/box/corral-app/slot-7"));
  CHECK(fs::exists(t.root / "memory/box/corral-app/not-a-slot"));
  fs::remove(t.root / "memory/box/corral-app/not-a-slot");
  CHECK(corral::remove_stale_slot_cgroups(p, "app", {}) == 0);
  CHECK_FALSE(fs::exists(t.root / "memory/box/corral-app"));
}

TEST_CASE("the controllers a slot needs: memory always, pids and cpu when set") {
  CHECK(corral::cgroup_controllers(CgroupValues{}) ==
        std::vector<CgroupController>{CgroupController::memory});
  CHECK(corral::cgroup_controllers(CgroupValues{0, 0, 4, 10}) ==
        std::vector<CgroupController>{CgroupController::memory, CgroupController::pids,
                                      CgroupController::cpu});
}
