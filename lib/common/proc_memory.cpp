#include "common/proc_memory.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>

namespace corral {
namespace {

// Up to `size - 1` bytes of a /proc file, NUL-terminated; -1 when it cannot be opened or
// read (errno kept from open()).
ssize_t read_proc(const char* path, char* buf, std::size_t size) noexcept {
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return -1;
  ssize_t n = 0;
  do {
    n = ::read(fd, buf, size - 1);
  } while (n < 0 && errno == EINTR);
  ::close(fd);
  if (n < 0) return -1;
  buf[n] = '\0';
  return n;
}

// A decimal number at `p` (no sign), advancing `p`; false when there is no digit or it
// exceeds `max`.
bool parse_number(const char*& p, const char* end, unsigned long long max,
                  unsigned long long& out) noexcept {
  if (p >= end || *p < '0' || *p > '9') return false;
  unsigned long long v = 0;
  while (p < end && *p >= '0' && *p <= '9') {
    v = v * 10 + static_cast<unsigned long long>(*p - '0');
    if (v > max) return false;
    ++p;
  }
  out = v;
  return true;
}

}  // namespace

bool process_memory(pid_t pid, MemoryMeasure measure, std::uint64_t& bytes) noexcept {
  if (pid <= 0) return false;
  char path[64];
  std::snprintf(path, sizeof path,
                measure == MemoryMeasure::pss ? "/proc/%d/smaps_rollup" : "/proc/%d/statm",
                static_cast<int>(pid));
  // smaps_rollup's Pss line is within its first few hundred bytes; statm is one line.
  char buf[1024];
  const ssize_t n = read_proc(path, buf, sizeof buf);
  if (n <= 0) return false;
  if (measure == MemoryMeasure::rss) {
    unsigned long long size = 0;
    unsigned long long resident = 0;
    if (std::sscanf(buf, "%llu %llu", &size, &resident) != 2) return false;
    static const auto page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
    bytes = resident * page;
    return true;
  }
  const char* at = std::strstr(buf, "\nPss:");
  if (at == nullptr) return false;
  unsigned long long kib = 0;
  if (std::sscanf(at + 5, "%llu", &kib) != 1) return false;
  bytes = kib * 1024;
  return true;
}

std::size_t parse_child_pids(const char* text, std::size_t len, pid_t* out,
                             std::size_t max) noexcept {
  std::size_t count = 0;
  const char* p = text;
  const char* end = text + len;
  while (count < max && p < end) {
    unsigned long long v = 0;
    if (!parse_number(p, end, INT_MAX, v) || v == 0) break;
    if (p >= end || (*p != ' ' && *p != '\n')) break;  // cut short, or not a pid
    out[count++] = static_cast<pid_t>(v);
    while (p < end && (*p == ' ' || *p == '\n')) ++p;
  }
  return count;
}

pid_t parse_stat_ppid(const char* text, std::size_t len) noexcept {
  // "PID (COMM) S PPID ...": COMM may hold anything, ')' too; nothing after it does.
  const char* close = nullptr;
  for (std::size_t i = 0; i < len; ++i) {
    if (text[i] == ')') close = text + i;
  }
  if (close == nullptr) return 0;
  const char* p = close + 1;
  const char* end = text + len;
  // " S " then the parent pid.
  if (end - p < 4 || p[0] != ' ' || p[2] != ' ') return 0;
  p += 3;
  unsigned long long v = 0;
  if (!parse_number(p, end, INT_MAX, v)) return 0;
  return static_cast<pid_t>(v);
}

WorkerMemory worker_memory(pid_t pid, MemoryMeasure measure, bool with_children) noexcept {
  WorkerMemory m;
  if (!process_memory(pid, measure, m.bytes)) return m;
  m.valid = true;
  if (!with_children) return m;
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/task/%d/children", static_cast<int>(pid),
                static_cast<int>(pid));
  char buf[256];  // 16 pids of up to 10 digits and a space each, and more
  const ssize_t n = read_proc(path, buf, sizeof buf);
  if (n < 0) {
    // Missing while the task is there: the kernel has no CONFIG_PROC_CHILDREN.
    if (errno == ENOENT) {
      std::snprintf(path, sizeof path, "/proc/%d/task/%d", static_cast<int>(pid),
                    static_cast<int>(pid));
      m.children_unknown = ::access(path, F_OK) == 0;
    }
    return m;
  }
  pid_t children[kMaxCountedChildren];
  const std::size_t count =
      parse_child_pids(buf, static_cast<std::size_t>(n), children, kMaxCountedChildren);
  std::uint64_t largest = 0;
  for (std::size_t i = 0; i < count; ++i) {
    std::uint64_t size = 0;
    if (!process_memory(children[i], measure, size)) continue;
    // Still `pid`'s child after its size was read: the size was that child's.
    std::snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(children[i]));
    char stat[256];
    const ssize_t sn = read_proc(path, stat, sizeof stat);
    if (sn <= 0 || parse_stat_ppid(stat, static_cast<std::size_t>(sn)) != pid) continue;
    m.bytes += size;
    m.child_bytes += size;
    if (m.largest_child == 0 || size > largest) {
      m.largest_child = children[i];
      largest = size;
    }
  }
  return m;
}

}  // namespace corral
