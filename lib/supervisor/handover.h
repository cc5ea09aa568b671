// The state one image of corral hands the next across exec (SIGUSR2): one typed
// structure, written and read here only. The wire form is JSON in a memfd whose number
// is in CORRAL_UPGRADE_STATE. Every version since the first is read; a field added in
// a later version is optional (absent: its default). docs/ARCHITECTURE.md, "Upgrade".
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/error.h"

namespace corral {

/// Version 1: the first release (no "version" key; worker flags as bools).
/// Version 2: "version", worker and job phases as names, the job's pacing and audit.
/// Version 3: metrics: per-job counters, reload and upgrade results, the metrics socket.
/// Version 4: the grown scoreboard's counters: per listener, refusals, OOM kills per slot,
///            and what each worker's slot has shown (its "seen" values).
/// Version 5 (the limits issue): per-worker cgroups (a
/// worker's slot cgroup and its OOM baseline, a job's cgroups off) and memory.budget
/// (the job's last median and whether it held starts back).
inline constexpr int kHandoverVersion = 5;

struct HandoverListener {
  int fd = -1;
  std::string key, name, display;
  bool inherited = false;
  bool stored = false;
  std::string store_name;
};

struct HandoverWorker {
  pid_t pid = 0;
  unsigned slot = 0;
  std::uint32_t generation = 0;
  std::uint64_t started_ns = 0;
  std::string phase = "starting";  // starting | up | stopping | killing
  std::uint64_t kill_at = 0;
  int last_state = 1;  // corral_slot_state
  int report_fd = -1;
  // Optional (added with the limits issue; absent in older hand-overs: 0).
  std::uint64_t requests_limit = 0;  // its own max_requests draw
  std::uint64_t retire_at = 0;       // its own end of life (CLOCK_MONOTONIC)
  // ---- Version 4, per-listener counters (absent before: empty, zero) ----
  std::vector<std::string> listeners;  // its generation's listener addresses, LISTEN_FDS order
  bool reports_listeners = false;
  std::uint64_t requests_seen = 0;
  std::uint64_t refused_seen = 0;
  std::vector<std::uint64_t> accepted_seen;  // per listener index
  // ---- Version 5, the limits issue (absent before: no cgroup) ----
  bool cgroup = false;                // it runs in its slot's cgroups (cgroup:)
  std::uint64_t cgroup_oom_base = 0;  // the slot cgroup's oom_kill count when it started
};

struct HandoverJob {
  std::string name;
  int mode = 0;                   // Mode
  std::string phase = "running";  // running | backing-off | failed | draining | removed
  std::uint32_t generation = 0;
  std::uint64_t graceful_ns = 0;
  int sb_fd = -1;
  std::string sb_path;
  int lock_kind = 0;  // AcceptMutex
  int lock_fd = -1;
  int lock_private_fd = -1;
  int notify_read = -1;
  int notify_write = -1;
  unsigned failures = 0;
  std::uint64_t backoff_ns = 0;
  std::uint64_t retry_at = 0;
  std::vector<HandoverWorker> workers;
  // Version 3 (absent before: zero).
  std::uint64_t spawns = 0;
  std::map<std::string, std::uint64_t> exits;  // reason -> count
  std::uint64_t max_reached = 0;
  std::uint64_t accepted = 0;  // requests of reaped workers
  // ---- Version 4, the grown scoreboard's counters (absent before: zero, empty) ----
  std::uint64_t refused = 0;                               // refusals of reaped workers
  std::map<std::string, std::uint64_t> listener_accepted;  // listener address -> reaped count
  std::map<unsigned, std::uint64_t> slot_oom_kills;        // slot -> OOM kills
  // ---- Version 5, the limits issue (absent before: false, 0) ----
  bool cgroup_off = false;          // cgroup: could not be made (said once already)
  bool budget_limited = false;      // memory.budget held starts back (said once already)
  std::uint64_t budget_median = 0;  // memory.budget: the last median RSS of its workers
};

struct Handover {
  int version = kHandoverVersion;
  std::uint32_t generation = 1;
  std::uint64_t started = 0;
  std::string config_text;  // the YAML of the running configuration ("" = command line)
  std::string notify_socket;
  std::uint64_t watchdog_ns = 0;
  bool ready_sent = false;
  bool reload_pending = false;  // optional: a SIGHUP came during the check; the new image reloads
  std::optional<std::pair<std::uint64_t, std::uint64_t>> nofile;  // the original RLIMIT_NOFILE
  std::vector<HandoverListener> listeners;
  std::vector<HandoverJob> jobs;
  // Version 3 (absent before: zero, and no metrics socket).
  std::map<std::string, std::uint64_t> reloads;   // result -> count
  std::map<std::string, std::uint64_t> upgrades;  // result -> count
  int metrics_fd = -1;
  std::string metrics_listen;  // the configured text it was bound for

  /// Every fd the structure names (for clearing and restoring FD_CLOEXEC around exec).
  [[nodiscard]] std::vector<int> fds() const;
};

/// The wire form (JSON text).
std::string encode_handover(const Handover& state);

/// Reads any version from 1 to kHandoverVersion. An error names what is wrong; it
/// never throws.
Result<Handover> decode_handover(const std::string& text);

/// The version a wire form says it is (1 when it says nothing), or 0 if it is not one.
int handover_version(const std::string& text) noexcept;

}  // namespace corral
