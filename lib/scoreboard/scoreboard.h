// The scoreboard file of one job: created and owned by the supervisor, mapped by
// workers (layout: lib/worker/include/corral/protocol.h, docs/PROTOCOL.md).
#pragma once

#include <corral/protocol.h>
#include <sys/types.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/unique_fd.h"

namespace corral {

/// What one slot says, after validation. Every field comes from untrusted memory.
struct SlotView {
  corral_slot_state state = CORRAL_SLOT_EMPTY;
  bool state_valid = true;  // false: the byte was garbage (state is then EMPTY)
  pid_t pid = 0;
  bool pid_valid = true;  // false: the pid was negative (pid is then 0)
  std::uint32_t generation = 0;
  corral_lock_state lock = CORRAL_LOCK_NONE;
  bool lock_valid = true;  // false: the lock word was garbage (lock is then NONE)
  std::uint64_t requests = 0;
  std::uint64_t state_since_ns = 0;
  std::uint64_t lock_since_ns = 0;
  // The grown slot (slot_size >= CORRAL_SB_EXT_SLOT_SIZE); all zero in a first-layout file.
  bool extended = false;
  bool reports_listeners = false;  // the worker set CORRAL_SB_REPORTS_LISTENERS
  std::uint64_t refused = 0;
  std::uint64_t oom_kills = 0;
  std::array<std::uint64_t, CORRAL_SB_LISTENER_COUNTERS> accepted{};
};

/// What the supervisor publishes in the grown header (header_size >= 2048) for status.
struct SbTotals {
  std::array<std::uint64_t, CORRAL_SB_EXIT_REASONS> exits{};
  std::uint64_t refused = 0;
  std::uint64_t accepted = 0;
  std::uint32_t listeners_reported = 0;  // bit i: listener_accepted[i] means something
  std::array<std::uint64_t, CORRAL_SB_LISTENER_COUNTERS> listener_accepted{};
};

/// A mapped scoreboard file. Move-only.
class Scoreboard {
 public:
  Scoreboard() = default;
  Scoreboard(Scoreboard&&) noexcept;
  Scoreboard& operator=(Scoreboard&&) noexcept;
  Scoreboard(const Scoreboard&) = delete;
  Scoreboard& operator=(const Scoreboard&) = delete;
  ~Scoreboard();

  /// Creates `dir` if needed (open_private_directory: it must be a directory only root
  /// or this user can write, never a link) and a new file `dir/<job>.scoreboard` with
  /// `slot_count` slots, mode 0644 (workers write through the inherited fd, status
  /// readers read), never following a link. A stale file is replaced, never reused, and
  /// only when it is a regular file of this user. Takes an exclusive flock on it: a
  /// second supervisor whose header pid is alive gets SetupError ("... is in use by
  /// another corral (pid N)"); a lock held by anyone else is ignored (the file is replaced).
  static Scoreboard create(const std::string& dir, const std::string& job, unsigned slot_count);

  /// Maps a scoreboard this process already owns through `fd` (its flock held by that
  /// open file description), after a binary upgrade. Nothing is truncated.
  static Result<Scoreboard> adopt(int fd, const std::string& path);

  /// Maps an existing file read-only after validating its header. For `corral status`.
  static Result<Scoreboard> open_read_only(const std::string& path);

  /// Grows the file to at least `slot_count` slots (never shrinks). Returns false on error.
  bool grow(unsigned slot_count);

  [[nodiscard]] int fd() const { return fd_.get(); }
  [[nodiscard]] unsigned slot_count() const { return slot_count_; }
  [[nodiscard]] const std::string& path() const { return path_; }
  [[nodiscard]] bool valid() const { return base_ != nullptr; }
  /// The file's layout: whether its slots and header have the grown fields.
  [[nodiscard]] bool extended_slots() const { return slot_size_ >= CORRAL_SB_EXT_SLOT_SIZE; }
  [[nodiscard]] bool extended_header() const { return header_size_ >= CORRAL_SB_EXT_HEADER_SIZE; }

  /// Header fields the supervisor writes.
  void write_header(pid_t supervisor_pid, std::uint32_t generation,
                    std::uint64_t started_realtime_ns, corral_job_mode mode, corral_job_state state,
                    std::uint64_t retry_at_mono_ns, unsigned min_spare, unsigned max_spare,
                    unsigned max, std::uint64_t max_requests, const std::string& job,
                    const std::string& listeners);
  /// A copy of the header (read-only users validate it at open).
  [[nodiscard]] corral_sb_header header() const;

  /// The grown header's totals (nullopt in a first-layout file). Untrusted values:
  /// whatever a worker wrote there since the last publication.
  [[nodiscard]] std::optional<SbTotals> totals() const;
  /// Supervisor: publishes the totals (no-op in a first-layout file).
  void publish_totals(const SbTotals& totals);

  /// Supervisor side of a slot: claim it for a new worker, mark it stopping, free it.
  /// Claiming zeroes the worker's fields of the grown slot and writes `oom_kills`.
  void claim_slot(unsigned slot, pid_t pid, std::uint32_t generation, std::uint64_t now_ns,
                  std::uint64_t oom_kills = 0);
  /// The grown slot's supervisor-written OOM-kill count (no-op in a first-layout file).
  void set_slot_oom_kills(unsigned slot, std::uint64_t oom_kills);
  void set_slot_state(unsigned slot, corral_slot_state state, std::uint64_t now_ns);
  /// Records the pid once fork returned (the worker may already have written its state).
  void set_slot_pid(unsigned slot, pid_t pid);
  void free_slot(unsigned slot, std::uint64_t now_ns);

  /// Header offset 920: whether the job is at workers.max (workers then skip notifying).
  void set_at_max(bool at_max);

  /// Header offsets 924 and 928: the container's CPUs and memory limit (0: none), for status.
  void set_limits(unsigned cpus, std::uint64_t memory_bytes);
  /// Supervisor: the header's flags (CORRAL_SB_FLAG_*).
  void set_flags(std::uint32_t flags);

  /// The workers' idle hint (header offset 960), and the supervisor's correction.
  [[nodiscard]] int idle_hint() const;
  void add_idle_hint(int delta);

  /// Validated snapshot of one slot.
  [[nodiscard]] SlotView read_slot(unsigned slot) const;

 private:
  /// The new file under a temporary name in `dirfd`, locked, sized, header stamped.
  static Scoreboard create_file(int dirfd, const std::string& dir, const std::string& name,
                                unsigned slot_count);
  [[nodiscard]] corral_sb_slot* slot_ptr(unsigned slot) const;
  [[nodiscard]] corral_sb_slot_ext* slot_ext_ptr(unsigned slot) const;  // nullptr: first layout
  [[nodiscard]] corral_sb_header_ext* header_ext_ptr() const;           // nullptr: first layout
  void unmap();

  UniqueFd fd_;
  std::string path_;
  void* base_ = nullptr;
  size_t size_ = 0;
  unsigned slot_count_ = 0;
  std::uint32_t header_size_ = CORRAL_SB_EXT_HEADER_SIZE;  // as the file says (validated)
  std::uint32_t slot_size_ = CORRAL_SB_EXT_SLOT_SIZE;
  bool writable_ = false;
};

/// How many times a scoreboard shrunk by a worker (ftruncate through its inherited fd)
/// was restored to its size by the supervisor's SIGBUS guard. Never decreases.
int scoreboard_truncations_repaired();

/// CLOCK_MONOTONIC in nanoseconds.
std::uint64_t monotonic_ns();
/// CLOCK_REALTIME in nanoseconds.
std::uint64_t realtime_ns();

/// The file name of a job's scoreboard inside the scoreboard directory.
std::string scoreboard_file_name(const std::string& job);

/// Validates a header read from a file of `file_size` bytes. Returns "" when it is
/// usable, else why not. Both layouts pass (header_size 1024 or more, slot_size 64 or
/// more, multiples of 64, at most kMaxHeaderSize / kMaxSlotSize). Pure; unit-tested
/// against garbage.
std::string validate_header(const corral_sb_header& header, std::uint64_t file_size);
inline constexpr std::uint32_t kMaxHeaderSize = 1U << 20;
inline constexpr std::uint32_t kMaxSlotSize = 4096;

/// Validates raw slot bytes into a SlotView (unknown states and lock values flagged).
/// `ext` is the grown part of the slot, or nullptr in a first-layout file.
SlotView decode_slot(const corral_sb_slot& raw, const corral_sb_slot_ext* ext = nullptr);

}  // namespace corral
