#include "container/cgroup.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string_view>

namespace corral {
namespace {

bool exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

std::string slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

const char* name_of(CgroupController c) {
  switch (c) {
    case CgroupController::memory: return "memory";
    case CgroupController::pids: return "pids";
    case CgroupController::cpu: return "cpu";
  }
  return "?";
}

Error sys_error(const std::string& what) {
  return Error{errno, what};
}

// mkdir (an existing directory is adopted), then opened without following a link, and
// checked: a directory owned by this process's user.
Result<UniqueFd> make_dir(int parent, const std::string& name, const std::string& path) {
  if (::mkdirat(parent, name.c_str(), 0755) != 0 && errno != EEXIST)
    return sys_error("create cgroup " + path);
  UniqueFd fd(::openat(parent, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd) return sys_error("open cgroup " + path + " (a link or not a directory?)");
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return sys_error("stat cgroup " + path);
  if (st.st_uid != ::geteuid()) {
    errno = EPERM;
    return Error{EPERM, "cgroup " + path + " is owned by uid " + std::to_string(st.st_uid) +
                            ", not by this corral (uid " + std::to_string(::geteuid()) + ")"};
  }
  return fd;
}

// As a shell's `echo VALUE > FILE` (O_CREAT lets a fixture tree stand in for cgroupfs,
// where every control file exists already); never through a link.
Result<bool> write_at(int dir, const std::string& file, const std::string& value,
                      const std::string& path) {
  UniqueFd fd(
      ::openat(dir, file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644));
  if (!fd) return sys_error("open " + path + "/" + file);
  const std::string line = value + "\n";
  if (::write(fd.get(), line.data(), line.size()) != static_cast<ssize_t>(line.size()))
    return sys_error("write \"" + value + "\" to " + path + "/" + file);
  return true;
}

std::string read_at(int dir, const char* file) {
  UniqueFd fd(::openat(dir, file, O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd) return "";
  char buf[1024];
  const ssize_t n = ::read(fd.get(), buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
}

std::uint64_t field(const std::string& text, std::string_view key) {
  // "key N" at the start of a line.
  size_t at = 0;
  while ((at = text.find(key, at)) != std::string::npos) {
    if ((at == 0 || text[at - 1] == '\n') && at + key.size() < text.size() &&
        text[at + key.size()] == ' ')
      break;
    ++at;
  }
  if (at == std::string::npos) return 0;
  std::uint64_t v = 0;
  const char* begin = text.data() + at + key.size() + 1;
  std::from_chars(begin, text.data() + text.size(), v);
  return v;
}

std::string controllers_line(const std::vector<CgroupController>& cs) {
  std::string out;
  for (auto c : cs) out += std::string(out.empty() ? "" : " ") + "+" + name_of(c);
  return out;
}

// The no-internal-process rule of v2: a cgroup with controllers for its children holds no
// process itself. corral moves what is in its own cgroup (itself, in a delegated unit)
// into the leaf DIR/supervisor, then enables the controllers for the children.
// The root cgroup is exempt from the rule, and holds every process of the machine that is
// in no other cgroup (a hybrid host, a corral started outside systemd): nothing is moved
// from it. Only the root has no cgroup.events (the kernel's CFTYPE_NOT_ON_ROOT); the root
// of a cgroup namespace (a container) has one, and its processes are the container's.
Result<bool> prepare_v2(int base, const std::string& dir, const std::vector<CgroupController>& cs) {
  struct stat st {};
  const bool real_root = ::fstatat(base, "cgroup.events", &st, AT_SYMLINK_NOFOLLOW) != 0;
  std::string procs = real_root ? "" : read_at(base, "cgroup.procs");
  if (procs.find_first_not_of(" \n") != std::string::npos) {
    auto leaf = make_dir(base, "supervisor", dir + "/supervisor");
    if (!leaf) return leaf.error();
    std::istringstream in(procs);
    for (std::string pid; in >> pid;) {
      // One pid per write (cgroup.procs takes one at a time). A process gone meanwhile
      // (ESRCH) is fine.
      auto w = write_at(leaf->get(), "cgroup.procs", pid, dir + "/supervisor");
      if (!w && w.error().code != ESRCH) return w.error();
    }
  }
  return write_at(base, "cgroup.subtree_control", controllers_line(cs), dir);
}

}  // namespace

CgroupPlaces find_cgroup_places(const std::string& proc_self_cgroup,
                                const std::string& cgroup_root) {
  std::map<std::string, std::pair<std::string, std::string>> v1;  // controller -> (mount, path)
  std::string v2_path;
  bool has_v2 = false;
  std::istringstream in(proc_self_cgroup);
  for (std::string line; std::getline(in, line);) {
    const auto a = line.find(':');
    const auto b = a == std::string::npos ? a : line.find(':', a + 1);
    if (b == std::string::npos) continue;
    const std::string controllers = line.substr(a + 1, b - a - 1);
    const std::string path = line.substr(b + 1);
    if (controllers.empty()) {
      v2_path = path;
      has_v2 = true;
      continue;
    }
    std::istringstream cs(controllers);
    for (std::string c; std::getline(cs, c, ',');) v1[c] = {controllers, path};
  }
  CgroupPlaces places;
  std::vector<std::string> v2_controllers;
  std::string v2_dir;
  if (has_v2) {
    for (const std::string& mount : {cgroup_root, cgroup_root + "/unified"}) {
      if (!exists(mount + "/cgroup.controllers")) continue;
      v2_dir = v2_path != "/" && exists(mount + v2_path + "/cgroup.controllers") ? mount + v2_path
                                                                                 : mount;
      std::istringstream words(slurp(v2_dir + "/cgroup.controllers"));
      for (std::string w; words >> w;) v2_controllers.push_back(w);
      break;
    }
  }
  for (auto c : {CgroupController::memory, CgroupController::pids, CgroupController::cpu}) {
    const std::string name = name_of(c);
    CgroupPlace place;
    if (std::find(v2_controllers.begin(), v2_controllers.end(), name) != v2_controllers.end()) {
      place = CgroupPlace{v2_dir, true};
    } else if (auto it = v1.find(name); it != v1.end()) {
      const auto& [mount_name, path] = it->second;
      for (const std::string& mount : {cgroup_root + "/" + mount_name, cgroup_root + "/" + name}) {
        // Inside a container without a cgroup namespace the path may not exist under the
        // mount (the mount's root is the container's own cgroup): then the root.
        if (path != "/" && exists(mount + path + "/cgroup.procs")) {
          place.dir = mount + path;
        } else if (exists(mount + "/cgroup.procs")) {
          place.dir = mount;
        } else {
          continue;
        }
        break;
      }
    }
    (c == CgroupController::memory ? places.memory
     : c == CgroupController::pids ? places.pids
                                   : places.cpu) = place;
  }
  return places;
}

const CgroupPlaces& cgroup_places() {
  static const CgroupPlaces places =
      find_cgroup_places(slurp("/proc/self/cgroup"), "/sys/fs/cgroup");
  return places;
}

std::vector<CgroupController> cgroup_controllers(const CgroupValues& v) {
  std::vector<CgroupController> out{CgroupController::memory};
  if (v.pids_max != 0) out.push_back(CgroupController::pids);
  if (v.cpu_weight != 0) out.push_back(CgroupController::cpu);
  return out;
}

std::vector<CgroupWrite> cgroup_writes(const CgroupValues& v, const CgroupPlaces& places) {
  std::vector<CgroupWrite> out;
  const bool mem2 = places.memory.v2;
  if (v.memory_high != 0 && mem2)
    out.push_back({CgroupController::memory, "memory.high", std::to_string(v.memory_high)});
  if (v.memory_max != 0)
    out.push_back({CgroupController::memory, mem2 ? "memory.max" : "memory.limit_in_bytes",
                   std::to_string(v.memory_max)});
  if (v.pids_max != 0)
    out.push_back({CgroupController::pids, "pids.max", std::to_string(v.pids_max)});
  if (v.cpu_weight != 0) {
    if (places.cpu.v2) {
      out.push_back({CgroupController::cpu, "cpu.weight", std::to_string(v.cpu_weight)});
    } else {
      const std::uint64_t shares = std::max<std::uint64_t>(2, v.cpu_weight * 1024ULL / 100);
      out.push_back({CgroupController::cpu, "cpu.shares", std::to_string(shares)});
    }
  }
  return out;
}

Result<SlotCgroup> SlotCgroup::open(const CgroupPlaces& places, const CgroupValues& values,
                                    const std::string& job, unsigned slot, bool adopt) {
  SlotCgroup out;
  const auto controllers = cgroup_controllers(values);
  const auto writes = cgroup_writes(values, places);
  // One directory per distinct hierarchy: v2 holds every controller in one.
  std::vector<std::pair<std::string, std::vector<CgroupController>>> dirs;
  for (auto c : controllers) {
    const auto& place = places.of(c);
    if (!place.found())
      return Error{ENOENT,
                   std::string("no cgroup hierarchy has the ") + name_of(c) + " controller"};
    auto it =
        std::find_if(dirs.begin(), dirs.end(), [&](const auto& d) { return d.first == place.dir; });
    if (it == dirs.end()) {
      dirs.emplace_back(place.dir, std::vector<CgroupController>{c});
    } else {
      it->second.push_back(c);
    }
  }
  const std::string job_name = "corral-" + job;
  const std::string slot_name = "slot-" + std::to_string(slot);
  for (const auto& [dir, cs] : dirs) {
    const bool v2 = places.of(cs.front()).v2;
    UniqueFd base(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!base) return sys_error("open cgroup " + dir);
    if (v2 && !adopt)
      if (auto p = prepare_v2(base.get(), dir, cs); !p) return p.error();
    Dir d;
    d.v2 = v2;
    d.memory = std::find(cs.begin(), cs.end(), CgroupController::memory) != cs.end();
    d.name = slot_name;
    const std::string job_path = dir + "/" + job_name;
    auto job_fd = make_dir(base.get(), job_name, job_path);
    if (!job_fd) return job_fd.error();
    d.job = std::move(*job_fd);
    if (v2 && !adopt)
      if (auto w = write_at(d.job.get(), "cgroup.subtree_control", controllers_line(cs), job_path);
          !w)
        return w.error();
    d.path = job_path + "/" + slot_name;
    auto slot_fd = make_dir(d.job.get(), slot_name, d.path);
    if (!slot_fd) return slot_fd.error();
    d.slot = std::move(*slot_fd);
    if (!adopt) {
      for (const auto& w : writes) {
        if (std::find(cs.begin(), cs.end(), w.controller) == cs.end()) continue;
        if (auto r = write_at(d.slot.get(), w.file, w.value, d.path); !r) return r.error();
      }
    }
    d.procs.reset(
        ::openat(d.slot.get(), "cgroup.procs", O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644));
    if (!d.procs) return sys_error("open " + d.path + "/cgroup.procs");
    out.dirs_.push_back(std::move(d));
  }
  out.oom_base = out.oom_kills();
  return out;
}

std::vector<int> SlotCgroup::procs_fds() const {
  std::vector<int> out;
  for (const auto& d : dirs_)
    if (d.procs) out.push_back(d.procs.get());
  return out;
}

std::uint64_t SlotCgroup::oom_kills() const {
  for (const auto& d : dirs_) {
    if (!d.memory || !d.slot) continue;
    return field(read_at(d.slot.get(), d.v2 ? "memory.events" : "memory.oom_control"), "oom_kill");
  }
  return 0;
}

bool SlotCgroup::remove() {
  std::erase_if(dirs_, [](Dir& d) {
    d.procs.reset();
    d.slot.reset();
    if (!d.job) return true;
    return ::unlinkat(d.job.get(), d.name.c_str(), AT_REMOVEDIR) == 0 || errno == ENOENT;
  });
  return dirs_.empty();
}

std::string SlotCgroup::describe() const {
  std::string out;
  for (const auto& d : dirs_) out += (out.empty() ? "" : ", ") + d.path;
  return out;
}

unsigned remove_stale_slot_cgroups(const CgroupPlaces& places, const std::string& job,
                                   const std::vector<unsigned>& keep) {
  unsigned left = 0;
  std::vector<std::string> done;
  const std::string job_name = "corral-" + job;
  for (auto c : {CgroupController::memory, CgroupController::pids, CgroupController::cpu}) {
    const auto& place = places.of(c);
    if (!place.found() || std::find(done.begin(), done.end(), place.dir) != done.end()) continue;
    done.push_back(place.dir);
    UniqueFd base(::open(place.dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!base) continue;
    UniqueFd job_fd(
        ::openat(base.get(), job_name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!job_fd) continue;
    struct stat st {};
    if (::fstat(job_fd.get(), &st) != 0 || st.st_uid != ::geteuid()) continue;
    DIR* d = ::fdopendir(::dup(job_fd.get()));
    if (d == nullptr) continue;
    std::vector<std::string> names;
    while (dirent* e = ::readdir(d)) {
      std::string_view n(e->d_name);
      if (e->d_type != DT_DIR || !n.starts_with("slot-")) continue;
      unsigned slot = 0;
      auto [p, ec] = std::from_chars(n.data() + 5, n.data() + n.size(), slot);
      if (ec != std::errc() || p != n.data() + n.size()) continue;
      if (std::find(keep.begin(), keep.end(), slot) != keep.end()) continue;
      names.emplace_back(n);
    }
    ::closedir(d);
    for (const auto& n : names)
      if (::unlinkat(job_fd.get(), n.c_str(), AT_REMOVEDIR) != 0 && errno != ENOENT) ++left;
    if (keep.empty() && left == 0 && ::unlinkat(base.get(), job_name.c_str(), AT_REMOVEDIR) != 0 &&
        errno != ENOENT)
      ++left;
  }
  return left;
}

}  // namespace corral
