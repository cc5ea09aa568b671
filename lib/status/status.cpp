#include "status/status.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/proc_memory.h"
#include "common/unique_fd.h"
#include "metrics/health.h"
#include "metrics/render.h"
#include "scoreboard/scoreboard.h"

namespace corral {
namespace {

const char* state_name(corral_slot_state s) {
  switch (s) {
    case CORRAL_SLOT_EMPTY: return "empty";
    case CORRAL_SLOT_STARTING: return "starting";
    case CORRAL_SLOT_IDLE: return "idle";
    case CORRAL_SLOT_BUSY: return "busy";
    case CORRAL_SLOT_STOPPING: return "stopping";
    case CORRAL_SLOT_RUNNING: return "running";
  }
  return "unknown";
}

const char* mode_name(std::uint32_t m) {
  switch (m) {
    case CORRAL_MODE_PREFORK: return "prefork";
    case CORRAL_MODE_INETD: return "inetd";
    case CORRAL_MODE_PLAIN: return "plain";
    default: return "unknown";
  }
}

const char* job_state_name(std::uint32_t s) {
  switch (s) {
    case CORRAL_JOB_RUNNING: return "running";
    case CORRAL_JOB_BACKING_OFF: return "backing-off";
    case CORRAL_JOB_FAILED: return "failed";
    case CORRAL_JOB_STOPPING: return "stopping";
    case CORRAL_JOB_DRAINING: return "draining";
    default: return "unknown";
  }
}

// The supervisor holds an exclusive flock on its scoreboards for as long as it (or a
// worker it started) runs; a file nobody locks is left over from a stopped one.
bool held_by_supervisor(const std::string& path, int* open_errno = nullptr) {
  // O_NONBLOCK: a FIFO named *.scoreboard must not block status in open().
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOFOLLOW));
  if (!fd) {
    if (open_errno != nullptr) *open_errno = errno;
    return false;
  }
  if (::flock(fd.get(), LOCK_SH | LOCK_NB) == 0) return false;
  return errno == EWOULDBLOCK;
}

std::string iso8601(std::uint64_t realtime_ns) {
  std::time_t t = static_cast<std::time_t>(realtime_ns / 1000000000ULL);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

double round1(double v) {
  return std::round(v * 10.0) / 10.0;
}

nlohmann::json job_json(const Scoreboard& sb, std::uint64_t now) {
  auto h = sb.header();
  nlohmann::json job;
  job["name"] = std::string(h.job_name);
  job["mode"] = mode_name(h.mode);
  job["state"] = job_state_name(h.job_state);
  if (h.job_state == CORRAL_JOB_BACKING_OFF) {
    double retry =
        h.retry_at_mono_ns > now ? static_cast<double>(h.retry_at_mono_ns - now) / 1e9 : 0.0;
    job["retry_in"] = round1(retry);
  }
  job["generation"] = h.generation;
  nlohmann::json listeners = nlohmann::json::array();
  std::istringstream lines(std::string(h.listeners));
  for (std::string line; std::getline(lines, line);) {
    if (!line.empty()) listeners.push_back(line);
  }
  job["listeners"] = listeners;
  // The grown header's counters (absent in a first-layout file, e.g. one an older corral
  // made and handed over at SIGUSR2): values a worker could have scribbled over since
  // the supervisor's last publication, shown as they are.
  if (auto totals = sb.totals()) {
    nlohmann::json exits = nlohmann::json::object();
    for (std::size_t i = 0; i < kExitReasons; ++i)
      exits[to_string(static_cast<ExitReason>(i))] = totals->exits[i];
    job["exits"] = exits;
    job["refused"] = totals->refused;
    nlohmann::json accepted = nlohmann::json::object();
    for (std::size_t i = 0; i < listeners.size() && i < totals->listener_accepted.size(); ++i) {
      if ((totals->listeners_reported & (1U << i)) != 0)
        accepted[listeners[i].get<std::string>()] = totals->listener_accepted[i];
    }
    job["accepted"] = accepted;
  }
  unsigned idle = 0;
  unsigned busy = 0;
  nlohmann::json workers = nlohmann::json::array();
  for (unsigned i = 0; i < sb.slot_count(); ++i) {
    SlotView s = sb.read_slot(i);
    if (s.state == CORRAL_SLOT_EMPTY) continue;
    if (s.state == CORRAL_SLOT_IDLE) ++idle;
    if (s.state == CORRAL_SLOT_BUSY) ++busy;
    double seconds = s.state_since_ns != 0 && s.state_since_ns <= now
                         ? static_cast<double>(now - s.state_since_ns) / 1e9
                         : 0.0;
    nlohmann::json worker{{"slot", i},
                          {"pid", s.pid},
                          {"state", state_name(s.state)},
                          {"requests", s.requests},
                          {"seconds_in_state", round1(seconds)},
                          {"generation", s.generation}};
    // /proc/PID/statm, one bounded read (a warm acceptor's children's too, found in
    // /proc); null when the pid is gone or unreadable. Display only: the pid is the slot's.
    const WorkerMemory rss =
        worker_memory(s.pid, MemoryMeasure::rss, (h.flags & CORRAL_SB_FLAG_WARM) != 0);
    worker["rss_bytes"] = rss.valid ? nlohmann::json(rss.bytes) : nlohmann::json(nullptr);
    if (s.extended) worker["oom_kills"] = s.oom_kills;
    workers.push_back(std::move(worker));
  }
  job["idle"] = idle;
  job["busy"] = busy;
  job["workers"] = workers;
  return job;
}

void print_table(const nlohmann::json& sup, const nlohmann::json& job, std::ostream& out) {
  out << "job " << job["name"].get<std::string>() << ": " << job["mode"].get<std::string>() << ", "
      << job["state"].get<std::string>();
  if (job.contains("retry_in")) {
    std::ostringstream retry;
    retry.precision(1);
    retry << std::fixed << job["retry_in"].get<double>();
    out << " (backing off, next try in " << retry.str() << "s)";
  }
  out << ", generation " << job["generation"].get<unsigned>() << ", supervisor pid "
      << sup["pid"].get<int>() << "\n";
  out << "  listening on:";
  if (job["listeners"].empty()) out << " (nothing)";
  for (const auto& l : job["listeners"]) out << " " << l.get<std::string>();
  out << "\n  idle " << job["idle"].get<unsigned>() << ", busy " << job["busy"].get<unsigned>()
      << "\n";
  char line[128];
  std::snprintf(line, sizeof line, "  %5s %8s %-9s %10s %9s %4s\n", "SLOT", "PID", "STATE",
                "REQUESTS", "SECONDS", "GEN");
  out << line;
  for (const auto& w : job["workers"]) {
    std::snprintf(line, sizeof line, "  %5u %8d %-9s %10llu %9.1f %4u\n", w["slot"].get<unsigned>(),
                  w["pid"].get<int>(), w["state"].get<std::string>().c_str(),
                  static_cast<unsigned long long>(w["requests"].get<std::uint64_t>()),
                  w["seconds_in_state"].get<double>(), w["generation"].get<unsigned>());
    out << line;
  }
}

// The scoreboard files of `jobs` (every *.scoreboard when empty) that a supervisor holds
// in `dir`; what could not be opened goes to `unreadable`.
std::vector<std::string> held_files(const std::string& dir, const std::vector<std::string>& jobs,
                                    std::vector<std::string>& unreadable) {
  std::vector<std::string> paths;
  if (jobs.empty()) {
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
      if (entry.path().extension() == ".scoreboard") paths.push_back(entry.path().string());
    }
    if (ec && ec != std::errc::no_such_file_or_directory)
      unreadable.push_back(dir + ": " + ec.message());
    std::sort(paths.begin(), paths.end());
  } else {
    for (const auto& j : jobs) paths.push_back(dir + "/" + scoreboard_file_name(j));
  }
  std::vector<std::string> held;
  for (const auto& path : paths) {
    int open_errno = 0;
    if (held_by_supervisor(path, &open_errno))
      held.push_back(path);
    else if (open_errno != 0 && open_errno != ENOENT)
      unreadable.push_back(path + ": " + std::strerror(open_errno));
  }
  return held;
}

}  // namespace

int print_status(const std::vector<std::string>& dirs, const std::vector<std::string>& jobs,
                 bool json, std::ostream& out, std::ostream& err) {
  std::vector<std::string> unreadable;
  for (const auto& dir : dirs) {
    if (!held_files(dir, jobs, unreadable).empty()) return print_status(dir, jobs, json, out, err);
  }
  err << "corral status: no supervisor is running";
  if (!jobs.empty()) {
    err << " for job" << (jobs.size() == 1 ? " " : "s ");
    for (size_t i = 0; i < jobs.size(); ++i) err << (i ? ", " : "") << jobs[i];
  }
  err << "; looked in:\n";
  for (const auto& dir : dirs) err << "  " << dir << "\n";
  for (const auto& u : unreadable) err << "could not read " << u << "\n";
  err << "If the supervisor keeps its scoreboards elsewhere, give that directory with "
         "--scoreboard-dir DIR (or set scoreboard_dir: in the configuration).\n";
  return kExitNotRunning;
}

int check_status(const std::vector<std::string>& dirs, const std::vector<std::string>& jobs,
                 const std::map<std::string, unsigned>& starts, std::ostream& out,
                 std::ostream& err) {
  std::vector<std::string> unreadable;
  std::string dir;
  std::vector<std::string> held;
  for (const auto& d : dirs) {
    held = held_files(d, jobs, unreadable);
    if (!held.empty()) {
      dir = d;
      break;
    }
  }
  if (held.empty()) return print_status(dirs, jobs, false, out, err);  // says where it looked
  const auto now = monotonic_ns();
  bool healthy = true;
  std::vector<std::string> seen;
  for (const auto& path : held) {
    auto sb = Scoreboard::open_read_only(path);
    if (!sb) {
      err << "corral status: " << sb.error().to_string() << "\n";
      healthy = false;
      continue;
    }
    auto h = sb->header();
    JobHealthInput in;
    in.name = std::string(h.job_name);
    seen.push_back(in.name);
    in.plain = h.mode == CORRAL_MODE_PLAIN;
    in.max = h.max_workers;
    auto start = starts.find(in.name);
    in.start = start != starts.end() ? start->second : 1;
    switch (h.job_state) {
      case CORRAL_JOB_RUNNING: break;
      case CORRAL_JOB_BACKING_OFF:
        in.state = JobHealthState::backing_off;
        in.retry_in =
            h.retry_at_mono_ns > now ? static_cast<double>(h.retry_at_mono_ns - now) / 1e9 : 0.0;
        break;
      case CORRAL_JOB_FAILED: in.state = JobHealthState::failed; break;
      case CORRAL_JOB_STOPPING: in.state = JobHealthState::stopping; break;
      case CORRAL_JOB_DRAINING: in.state = JobHealthState::draining; break;
      default: in.state = JobHealthState::failed; break;
    }
    for (unsigned i = 0; i < sb->slot_count(); ++i) {
      SlotView slot = sb->read_slot(i);
      if (slot.generation != h.generation) continue;  // an old generation still finishing
      switch (slot.state) {
        case CORRAL_SLOT_IDLE: ++in.idle; break;
        case CORRAL_SLOT_BUSY: ++in.busy; break;
        case CORRAL_SLOT_RUNNING: ++in.running; break;
        case CORRAL_SLOT_STARTING: ++in.starting; break;
        default: break;
      }
    }
    auto verdict = judge_job_health(in);
    if (!verdict.ready) healthy = false;
    if (!verdict.line.empty()) out << verdict.line << "\n";
  }
  for (const auto& j : jobs) {
    if (std::find(seen.begin(), seen.end(), j) != seen.end()) continue;
    out << "job " << j << ": not running (no supervisor holds its scoreboard in " << dir << ")\n";
    healthy = false;
  }
  return healthy ? 0 : 1;
}

int print_status(const std::string& dir, const std::vector<std::string>& jobs, bool json,
                 std::ostream& out, std::ostream& err) {
  std::vector<std::string> paths;
  if (jobs.empty()) {
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
      if (entry.path().extension() == ".scoreboard") paths.push_back(entry.path().string());
    }
    std::sort(paths.begin(), paths.end());
  } else {
    for (const auto& j : jobs) paths.push_back(dir + "/" + scoreboard_file_name(j));
  }
  auto now = monotonic_ns();
  nlohmann::json supervisor;
  nlohmann::json limits;  // top level: {"cpus": C, "memory_bytes": N or null}
  nlohmann::json job_list = nlohmann::json::array();
  for (const auto& path : paths) {
    if (::access(path.c_str(), F_OK) != 0) continue;
    if (!held_by_supervisor(path)) continue;
    auto sb = Scoreboard::open_read_only(path);
    if (!sb) {
      err << "corral status: " << sb.error().to_string() << "\n";
      continue;
    }
    auto h = sb->header();
    if (supervisor.is_null() ||
        static_cast<std::uint32_t>(h.generation) > supervisor["generation"].get<std::uint32_t>()) {
      supervisor = {{"pid", h.supervisor_pid},
                    {"generation", h.generation},
                    {"started", iso8601(h.started_realtime_ns)}};
      if (h.limit_cpus != 0) {
        limits = {{"cpus", h.limit_cpus},
                  {"memory_bytes", h.limit_memory_bytes != 0 ? nlohmann::json(h.limit_memory_bytes)
                                                             : nlohmann::json(nullptr)}};
      }
    }
    job_list.push_back(job_json(*sb, now));
  }
  if (job_list.empty()) {
    err << "corral status: no supervisor is running for " << dir
        << (jobs.empty() ? "" : " (jobs: ");
    for (size_t i = 0; i < jobs.size(); ++i) err << (i ? ", " : "") << jobs[i];
    err << (jobs.empty() ? "" : ")") << "\n";
    return kExitNotRunning;
  }
  if (json) {
    // The header's text comes from a file workers can write: bytes that are not UTF-8
    // are replaced (U+FFFD) rather than making dump() throw.
    nlohmann::json doc{{"supervisor", supervisor}, {"jobs", job_list}};
    if (!limits.is_null()) doc["limits"] = limits;
    out << doc.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    for (const auto& job : job_list) print_table(supervisor, job, out);
  }
  return 0;
}

}  // namespace corral
