// The scoreboard file of one job: created and owned by the supervisor, mapped by
// workers (layout: lib/worker/include/corral/protocol.h, docs/PROTOCOL.md).
#pragma once

#include <corral/protocol.h>
#include <sys/types.h>

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

  /// Header fields the supervisor writes.
  void write_header(pid_t supervisor_pid, std::uint32_t generation,
                    std::uint64_t started_realtime_ns, corral_job_mode mode, corral_job_state state,
                    std::uint64_t retry_at_mono_ns, unsigned min_spare, unsigned max_spare,
                    unsigned max, std::uint64_t max_requests, const std::string& job,
                    const std::string& listeners);
  /// A copy of the header (read-only users validate it at open).
  [[nodiscard]] corral_sb_header header() const;

  /// Supervisor side of a slot: claim it for a new worker, mark it stopping, free it.
  void claim_slot(unsigned slot, pid_t pid, std::uint32_t generation, std::uint64_t now_ns);
  void set_slot_state(unsigned slot, corral_slot_state state, std::uint64_t now_ns);
  /// Records the pid once fork returned (the worker may already have written its state).
  void set_slot_pid(unsigned slot, pid_t pid);
  void free_slot(unsigned slot, std::uint64_t now_ns);

  /// Header offset 920: whether the job is at workers.max (workers then skip notifying).
  void set_at_max(bool at_max);

  /// Header offsets 924 and 928: the container's CPUs and memory limit (0: none), for status.
  void set_limits(unsigned cpus, std::uint64_t memory_bytes);

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
  void unmap();

  UniqueFd fd_;
  std::string path_;
  void* base_ = nullptr;
  size_t size_ = 0;
  unsigned slot_count_ = 0;
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
/// usable, else why not. Pure; unit-tested against garbage.
std::string validate_header(const corral_sb_header& header, std::uint64_t file_size);

/// Validates raw slot bytes into a SlotView (unknown states and lock values flagged).
SlotView decode_slot(const corral_sb_slot& raw);

}  // namespace corral
