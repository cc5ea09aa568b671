// A worker's memory as /proc shows it, for memory: limits (the supervisor), `corral
// status` and the metrics: one bounded read per file into a stack buffer, no allocation.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>

namespace corral {

/// What a size counts: resident pages (/proc/PID/statm), or the proportional set size
/// (the Pss line of /proc/PID/smaps_rollup: pages shared with others counted by share).
enum class MemoryMeasure : std::uint8_t { rss, pss };

/// At most this many children of one process are counted (a warm acceptor has one).
constexpr std::size_t kMaxCountedChildren = 16;

/// What worker_memory found.
struct WorkerMemory {
  bool valid = false;             // the process itself could be read (it exists)
  std::uint64_t bytes = 0;        // its own size, plus its children's when they were asked for
  std::uint64_t child_bytes = 0;  // the children's part of `bytes`
  pid_t largest_child = 0;        // the child with the largest size; 0: none counted
  bool children_unknown = false;  // asked for, but /proc/PID/task/PID/children is missing
};

/// One process's size, or false when it is gone or its file unreadable.
bool process_memory(pid_t pid, MemoryMeasure measure, std::uint64_t& bytes) noexcept;

/// A worker's size: the process `pid`'s own and, with `with_children` (a warm inetd
/// acceptor, whose program is its child), that of each direct child the kernel lists in
/// /proc/PID/task/PID/children (the main thread's children: an acceptor has one thread),
/// at most kMaxCountedChildren. Nothing is taken from the worker's scoreboard slot. A
/// child is counted only when its /proc/CHILD/stat, read after its size, still names
/// `pid` as its parent, so that a pid reused in between is not. Without the children
/// file (a kernel without CONFIG_PROC_CHILDREN), the process alone, with
/// `children_unknown` set.
WorkerMemory worker_memory(pid_t pid, MemoryMeasure measure, bool with_children) noexcept;

/// The pids of a children file's text ("PID PID ... ", each followed by a space) into
/// `out`, at most `max`; a last token without its space (a read cut short) and anything
/// that is not a pid in 1..INT_MAX end the list. Returns how many.
std::size_t parse_child_pids(const char* text, std::size_t len, pid_t* out,
                             std::size_t max) noexcept;

/// The parent pid (field 4) in the text of a /proc/PID/stat, or 0 if there is none.
pid_t parse_stat_ppid(const char* text, std::size_t len) noexcept;

}  // namespace corral
