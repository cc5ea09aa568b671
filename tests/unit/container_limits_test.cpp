// lib/container/limits: CPUs and memory from cgroup v1 and v2 trees (fixture files).
#include "container/limits.h"

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <string>

namespace fs = std::filesystem;

namespace {

struct Tree {
  fs::path root;
  Tree() {
    char tmpl[] = "/tmp/corral-cgroup-fixture-XXXXXX";
    root = ::mkdtemp(tmpl);
  }
  ~Tree() { fs::remove_all(root); }
  void file(const std::string& rel, const std::string& text) {
    fs::create_directories((root / rel).parent_path());
    std::ofstream(root / rel) << text;
  }
  void group(const std::string& rel) { file(rel + "/cgroup.procs", ""); }
};

}  // namespace

TEST_CASE("v1: the CFS quota rounded up gives the CPUs; the memory limit is read") {
  Tree t;
  t.group("cpu/pod/app");
  t.file("cpu/pod/app/cpu.cfs_quota_us", "150000\n");
  t.file("cpu/pod/app/cpu.cfs_period_us", "100000\n");
  t.group("memory/pod/app");
  t.file("memory/pod/app/memory.limit_in_bytes", "536870912\n");
  auto l = corral::read_container_limits("4:memory:/pod/app\n1:cpu,cpuacct:/pod/app\n0::/\n",
                                         t.root.string(), 8);
  CHECK(l.cpus == 2);
  CHECK(l.cpu_quota);
  REQUIRE(l.memory_bytes.has_value());
  CHECK(*l.memory_bytes == 536870912ULL);
}

TEST_CASE("v1: no quota (-1) and the unlimited memory value mean the affinity mask and null") {
  Tree t;
  t.file("cpu/cpu.cfs_quota_us", "-1\n");
  t.file("cpu/cpu.cfs_period_us", "100000\n");
  t.file("memory/memory.limit_in_bytes", "9223372036854771712\n");
  auto l = corral::read_container_limits("4:memory:/\n1:cpu:/\n", t.root.string(), 3);
  CHECK(l.cpus == 3);
  CHECK_FALSE(l.cpu_quota);
  CHECK_FALSE(l.memory_bytes.has_value());
}

TEST_CASE("the smallest limit along the path to the root applies") {
  Tree t;
  t.group("cpu/outer");
  t.group("cpu/outer/inner");
  t.file("cpu/outer/cpu.cfs_quota_us", "100000");
  t.file("cpu/outer/cpu.cfs_period_us", "100000");
  t.file("cpu/outer/inner/cpu.cfs_quota_us", "400000");
  t.file("cpu/outer/inner/cpu.cfs_period_us", "100000");
  auto l = corral::read_container_limits("1:cpu:/outer/inner\n", t.root.string(), 16);
  CHECK(l.cpus == 1);
}

TEST_CASE("a cgroup path missing under the mount (no cgroup namespace) falls back to its root") {
  Tree t;
  t.file("memory/memory.limit_in_bytes", "1073741824");
  auto l = corral::read_container_limits("4:memory:/docker/abc\n", t.root.string(), 2);
  REQUIRE(l.memory_bytes.has_value());
  CHECK(*l.memory_bytes == 1073741824ULL);
}

TEST_CASE("v2: cpu.max and memory.max, and \"max\" meaning none") {
  Tree t;
  t.file("cgroup.controllers", "cpu memory\n");
  t.group("app");
  t.file("app/cpu.max", "250000 100000\n");
  t.file("app/memory.max", "268435456\n");
  auto l = corral::read_container_limits("0::/app\n", t.root.string(), 8);
  CHECK(l.cpus == 3);
  CHECK(*l.memory_bytes == 268435456ULL);
  t.file("app/cpu.max", "max 100000\n");
  t.file("app/memory.max", "max\n");
  auto none = corral::read_container_limits("0::/app\n", t.root.string(), 8);
  CHECK(none.cpus == 8);
  CHECK_FALSE(none.memory_bytes.has_value());
}

TEST_CASE("v2 on a hybrid host lives under unified/; garbage is no limit, never a crash") {
  Tree t;
  t.file("unified/cgroup.controllers", "");
  t.group("unified/svc");
  t.file("unified/svc/cpu.max", "50000 100000");
  t.file("cpu/cpu.cfs_quota_us", "garbage");
  t.file("cpu/cpu.cfs_period_us", "0");
  auto l = corral::read_container_limits("1:cpu:/\n0::/svc\n", t.root.string(), 4);
  CHECK(l.cpus == 1);
  auto empty = corral::read_container_limits("", t.root.string(), 0);
  CHECK(empty.cpus == 1);  // never 0
}
