// corral's metrics: the names and labels of PRODUCT.md, rendered from a plain snapshot
// the supervisor fills in. Pure (render_metrics); read_process_sample() reads /proc.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace corral {

/// Why a worker left, as `corral_worker_exits_total{reason}` says (PRODUCT.md).
enum class ExitReason : std::uint8_t {
  normal,        // asked to leave (retire, reload, stop), or exited 0 on its own
  max_requests,  // served workers.max_requests
  max_lifetime,  // workers.max_lifetime (the limits issue)
  busy_timeout,
  start_timeout,
  memory,        // memory.max_rss (the limits issue)
  oom,           // the kernel's OOM killer (the limits issue)
  signal,        // killed by a signal corral did not send
  crash,         // exited non-zero, or before it was ever ready
  failed_start,  // exec or a set-up step before it failed (the spawn report)
  stuck_lock,    // held the accept mutex while connections waited; replaced
};
inline constexpr std::size_t kExitReasons = 11;
const char* to_string(ExitReason reason) noexcept;

/// Counters of one job. They survive reloads and SIGUSR2 (the hand-over), and start
/// at zero only with a new supervisor.
struct PoolCounters {
  std::uint64_t spawns = 0;
  std::array<std::uint64_t, kExitReasons> exits{};
  std::uint64_t max_reached = 0;
  std::uint64_t accepted_folded = 0;  // `requests` of reaped workers, folded at reap
  // Counted by the grown scoreboard slot (docs/PROTOCOL.md 5.2), folded at reap:
  std::uint64_t refused_folded = 0;                               // `refused` of reaped workers
  std::map<std::string, std::uint64_t> listener_accepted_folded;  // by listener address;
                                                                  // only listeners reported
  std::map<unsigned, std::uint64_t> slot_oom_kills;  // slot -> OOM kills of its workers
};

/// a + b, saturating (counters from untrusted slots must never wrap).
inline std::uint64_t saturating_add(std::uint64_t a, std::uint64_t b) {
  return a > ~std::uint64_t{0} - b ? ~std::uint64_t{0} : a + b;
}

/// Worker states as `corral_workers{state}` names them.
enum class WorkerStateLabel : std::uint8_t { starting, idle, busy, stopping, running };
inline constexpr std::size_t kWorkerStates = 5;

struct ListenerSample {
  std::string listener;  // as `corral status` shows it
  bool known = false;    // the kernel answered (a TCP or unix stream listener)
  std::uint32_t length = 0;
  std::uint32_t capacity = 0;
  std::uint32_t peak = 0;  // since the previous exposition (at least `length`)
};

struct SlotSample {
  unsigned slot = 0;
  std::uint64_t requests = 0;
  double state_seconds = 0;
  std::optional<std::uint64_t> rss_bytes;
};

/// Connections accepted on one listener, all workers that reported them (folded + live).
struct ListenerAccepted {
  std::string listener;
  std::uint64_t accepted = 0;
};

struct PoolSample {
  std::string pool;
  std::array<unsigned, kWorkerStates> workers{};
  unsigned min_spare = 0;
  unsigned max_spare = 0;
  unsigned max_workers = 0;
  bool backoff_active = false;
  // memory.budget (the limits issue): the budget (none: no series), the pool's total at
  // the last look, and whether the budget holds starts back.
  std::optional<std::uint64_t> memory_budget;
  std::uint64_t memory_bytes = 0;
  bool budget_limited = false;
  PoolCounters counters;
  std::uint64_t accepted_live = 0;                   // requests of the live workers
  std::uint64_t refused_live = 0;                    // refusals of the live workers
  std::vector<ListenerAccepted> listener_accepted;   // only listeners some worker reported
  std::map<unsigned, std::uint64_t> slot_oom_kills;  // live slots (0 included) and counted ones
  std::vector<ListenerSample> listeners;
  std::vector<SlotSample> slots;
};

struct ProcessSample {
  double cpu_seconds = 0;
  std::uint64_t resident_bytes = 0;
  std::uint64_t virtual_bytes = 0;
  std::uint64_t open_fds = 0;
  std::uint64_t max_fds = 0;
  double start_time_seconds = 0;  // since the epoch
  bool valid = false;
};

struct SupervisorSample {
  std::vector<PoolSample> pools;
  std::array<std::uint64_t, 3> reloads{};   // ok, rejected, failed
  std::array<std::uint64_t, 3> upgrades{};  // ok, rejected, failed
  std::uint32_t generation = 0;
  unsigned limit_cpus = 0;  // the container's CPUs (docs/CONTAINERS.md); 0: unknown
  std::optional<std::uint64_t> limit_memory;  // its memory limit; none: no limit
  std::string version;
  std::string commit;
  ProcessSample process;
};

/// The results `corral_reloads_total` and `corral_upgrades_total` count.
enum class ChangeResult : std::uint8_t { ok, rejected, failed };
const char* to_string(ChangeResult result) noexcept;

/// The exposition of `sample` (Prometheus text format 0.0.4).
std::string render_metrics(const SupervisorSample& sample);

/// The supervisor's own process_* values (/proc/self/stat, /proc/self/fd, RLIMIT_NOFILE).
/// `valid` false when /proc is not readable. Non-blocking (procfs).
ProcessSample read_process_sample() noexcept;

/// A process's resident set in bytes (/proc/PID/statm), or nullopt: process_memory()
/// of common/proc_memory.h, which counts a warm acceptor's children too (worker_memory).
std::optional<std::uint64_t> resident_bytes_of(int pid) noexcept;

}  // namespace corral
