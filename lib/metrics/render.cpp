#include "metrics/render.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>

#include "common/proc_memory.h"
#include "metrics/exposition.h"

namespace corral {
namespace {

constexpr const char* kStateNames[kWorkerStates] = {"starting", "idle", "busy", "stopping",
                                                    "running"};
constexpr const char* kResultNames[3] = {"ok", "rejected", "failed"};

void pool_gauge(Exposition& e, const char* name, const char* help,
                const std::vector<PoolSample>& pools, auto value_of) {
  e.family(name, "gauge", help);
  for (const auto& p : pools) e.sample(name, {{"pool", p.pool}}, std::uint64_t(value_of(p)));
}

void pool_counter(Exposition& e, const char* name, const char* help,
                  const std::vector<PoolSample>& pools, auto value_of) {
  e.family(name, "counter", help);
  for (const auto& p : pools) e.sample(name, {{"pool", p.pool}}, std::uint64_t(value_of(p)));
}

void listener_gauge(Exposition& e, const char* name, const char* help,
                    const std::vector<PoolSample>& pools, auto value_of) {
  e.family(name, "gauge", help);
  for (const auto& p : pools) {
    for (const auto& l : p.listeners) {
      if (l.known) e.sample(name, {{"pool", p.pool}, {"listener", l.listener}}, value_of(l));
    }
  }
}

// A whole file of procfs (small), or "" on error.
std::string read_small_file(const char* path) {
  int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "";
  char buf[4096];
  ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
}

}  // namespace

const char* to_string(ExitReason reason) noexcept {
  switch (reason) {
    case ExitReason::normal: return "normal";
    case ExitReason::max_requests: return "max_requests";
    case ExitReason::max_lifetime: return "max_lifetime";
    case ExitReason::busy_timeout: return "busy_timeout";
    case ExitReason::start_timeout: return "start_timeout";
    case ExitReason::memory: return "memory";
    case ExitReason::oom: return "oom";
    case ExitReason::signal: return "signal";
    case ExitReason::crash: return "crash";
    case ExitReason::failed_start: return "failed_start";
    case ExitReason::stuck_lock: return "stuck_lock";
  }
  return "normal";
}

const char* to_string(ChangeResult result) noexcept {
  return kResultNames[static_cast<int>(result)];
}

std::string render_metrics(const SupervisorSample& s) {
  Exposition e;
  e.family("corral_build_info", "gauge", "corral's version and the commit it was built from.");
  e.sample("corral_build_info", {{"version", s.version}, {"commit", s.commit}}, std::uint64_t(1));
  e.family("corral_generation", "gauge",
           "The configuration generation: 1 at start, one more for every reload that applied.");
  e.sample("corral_generation", {}, std::uint64_t(s.generation));
  if (s.limit_cpus != 0) {
    e.family("corral_container_cpus", "gauge",
             "CPUs corral reads from its cgroup: the CFS quota rounded up, else the affinity "
             "mask (what workers: auto uses).");
    e.sample("corral_container_cpus", {}, std::uint64_t(s.limit_cpus));
  }
  if (s.limit_memory) {
    e.family("corral_container_memory_limit_bytes", "gauge",
             "The memory limit of corral's cgroup (absent when there is none).");
    e.sample("corral_container_memory_limit_bytes", {}, *s.limit_memory);
  }
  e.family("corral_reloads_total", "counter", "Reloads (SIGHUP) by result.");
  for (int i = 0; i < 3; ++i)
    e.sample("corral_reloads_total", {{"result", kResultNames[i]}}, s.reloads[i]);
  e.family("corral_upgrades_total", "counter", "Binary upgrades (SIGUSR2) by result.");
  for (int i = 0; i < 3; ++i)
    e.sample("corral_upgrades_total", {{"result", kResultNames[i]}}, s.upgrades[i]);

  e.family("corral_workers", "gauge", "Workers of the pool by state.");
  for (const auto& p : s.pools) {
    for (std::size_t i = 0; i < kWorkerStates; ++i)
      e.sample("corral_workers", {{"pool", p.pool}, {"state", kStateNames[i]}},
               std::uint64_t(p.workers[i]));
  }
  pool_gauge(e, "corral_pool_min_spare", "workers.min_spare: idle workers kept at least.", s.pools,
             [](const PoolSample& p) { return p.min_spare; });
  pool_gauge(e, "corral_pool_max_spare", "workers.max_spare: idle workers kept at most.", s.pools,
             [](const PoolSample& p) { return p.max_spare; });
  pool_gauge(e, "corral_pool_max_workers", "workers.max: workers of the pool at most.", s.pools,
             [](const PoolSample& p) { return p.max_workers; });
  pool_counter(e, "corral_pool_max_reached_total",
               "Times the pool reached workers.max (new connections then wait in the backlog).",
               s.pools, [](const PoolSample& p) { return p.counters.max_reached; });
  pool_gauge(e, "corral_pool_backoff_active",
             "1 while the pool backs off after failures (crash loop), else 0.", s.pools,
             [](const PoolSample& p) { return p.backoff_active ? 1U : 0U; });
  // memory.budget (the limits issue): series only for pools that have one.
  bool budgets = false;
  for (const auto& p : s.pools) budgets = budgets || p.memory_budget.has_value();
  if (budgets) {
    e.family("corral_pool_memory_budget_bytes", "gauge", "memory.budget of the pool, in bytes.");
    for (const auto& p : s.pools)
      if (p.memory_budget)
        e.sample("corral_pool_memory_budget_bytes", {{"pool", p.pool}}, *p.memory_budget);
    e.family("corral_pool_memory_bytes", "gauge",
             "Memory of the pool's live workers at the last look (RSS or PSS, as measured).");
    for (const auto& p : s.pools)
      if (p.memory_budget) e.sample("corral_pool_memory_bytes", {{"pool", p.pool}}, p.memory_bytes);
    e.family("corral_pool_budget_limited", "gauge",
             "1 while memory.budget holds back workers the pool wants, else 0.");
    for (const auto& p : s.pools)
      if (p.memory_budget)
        e.sample("corral_pool_budget_limited", {{"pool", p.pool}},
                 std::uint64_t(p.budget_limited ? 1 : 0));
  }
  pool_counter(e, "corral_pool_connections_accepted_total",
               "Connections accepted by the pool's workers (their scoreboard request counts; "
               "reaped workers folded in).",
               s.pools, [](const PoolSample& p) {
                 return saturating_add(p.counters.accepted_folded, p.accepted_live);
               });
  pool_counter(e, "corral_pool_connections_refused_total",
               "Connections the pool's workers took and closed unserved (inetd: max_per_source "
               "and peer rules); reaped workers folded in.",
               s.pools, [](const PoolSample& p) {
                 return saturating_add(p.counters.refused_folded, p.refused_live);
               });
  e.family("corral_listener_connections_accepted_total", "counter",
           "Connections accepted per listener, counted by the workers that report it (the "
           "worker library, the inetd acceptor); reaped workers folded in.");
  for (const auto& p : s.pools) {
    for (const auto& l : p.listener_accepted)
      e.sample("corral_listener_connections_accepted_total",
               {{"pool", p.pool}, {"listener", l.listener}}, l.accepted);
  }
  pool_counter(e, "corral_worker_spawns_total", "Workers started.", s.pools,
               [](const PoolSample& p) { return p.counters.spawns; });
  e.family("corral_worker_exits_total", "counter", "Workers that exited, by reason.");
  for (const auto& p : s.pools) {
    for (std::size_t i = 0; i < kExitReasons; ++i)
      e.sample("corral_worker_exits_total",
               {{"pool", p.pool}, {"reason", to_string(static_cast<ExitReason>(i))}},
               p.counters.exits[i]);
  }

  listener_gauge(e, "corral_listener_queue_length",
                 "Connections waiting in the listen queue now (TCP: TCP_INFO; unix: sock_diag).",
                 s.pools, [](const ListenerSample& l) { return std::uint64_t(l.length); });
  listener_gauge(e, "corral_listener_queue_capacity",
                 "The listen queue's capacity (the backlog, capped by net.core.somaxconn).",
                 s.pools, [](const ListenerSample& l) { return std::uint64_t(l.capacity); });
  listener_gauge(e, "corral_listener_queue_peak",
                 "The longest listen queue corral saw since the previous scrape.", s.pools,
                 [](const ListenerSample& l) { return std::uint64_t(l.peak); });

  e.family("corral_slot_requests_total", "counter",
           "Connections served by the worker now in the slot (restarts at 0 with a new worker).");
  for (const auto& p : s.pools) {
    for (const auto& sl : p.slots)
      e.sample("corral_slot_requests_total", {{"pool", p.pool}, {"slot", std::to_string(sl.slot)}},
               sl.requests);
  }
  e.family("corral_slot_state_seconds", "gauge",
           "Seconds the slot's worker has been in its state.");
  for (const auto& p : s.pools) {
    for (const auto& sl : p.slots)
      e.sample("corral_slot_state_seconds", {{"pool", p.pool}, {"slot", std::to_string(sl.slot)}},
               sl.state_seconds);
  }
  e.family("corral_slot_resident_memory_bytes", "gauge",
           "Resident memory of the slot's worker in bytes.");
  for (const auto& p : s.pools) {
    for (const auto& sl : p.slots) {
      if (sl.rss_bytes)
        e.sample("corral_slot_resident_memory_bytes",
                 {{"pool", p.pool}, {"slot", std::to_string(sl.slot)}}, *sl.rss_bytes);
    }
  }

  e.family("corral_slot_oom_kills_total", "counter",
           "Workers of the slot that the kernel's OOM killer ended (the memory cgroup's "
           "oom_kill count rose at their SIGKILL).");
  for (const auto& p : s.pools) {
    for (const auto& [slot, n] : p.slot_oom_kills)
      e.sample("corral_slot_oom_kills_total", {{"pool", p.pool}, {"slot", std::to_string(slot)}},
               n);
  }

  if (s.process.valid) {
    const auto& pr = s.process;
    e.family("process_cpu_seconds_total", "counter",
             "Total user and system CPU time spent in seconds.");
    e.sample("process_cpu_seconds_total", {}, pr.cpu_seconds);
    e.family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
    e.sample("process_resident_memory_bytes", {}, pr.resident_bytes);
    e.family("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.");
    e.sample("process_virtual_memory_bytes", {}, pr.virtual_bytes);
    e.family("process_open_fds", "gauge", "Number of open file descriptors.");
    e.sample("process_open_fds", {}, pr.open_fds);
    e.family("process_max_fds", "gauge", "Maximum number of open file descriptors.");
    e.sample("process_max_fds", {}, pr.max_fds);
    e.family("process_start_time_seconds", "gauge",
             "Start time of the process since unix epoch in seconds.");
    e.sample("process_start_time_seconds", {}, pr.start_time_seconds);
  }
  return e.take();
}

ProcessSample read_process_sample() noexcept {
  ProcessSample out;
  try {
    const std::string stat = read_small_file("/proc/self/stat");
    auto close_paren = stat.rfind(')');
    if (close_paren == std::string::npos) return out;
    // Fields after "pid (comm)": state is field 3; utime 14, stime 15, starttime 22,
    // vsize 23, rss 24 (proc(5)).
    std::vector<std::string> fields;
    std::size_t pos = close_paren + 2;
    while (pos < stat.size()) {
      auto next = stat.find(' ', pos);
      if (next == std::string::npos) next = stat.size();
      fields.push_back(stat.substr(pos, next - pos));
      pos = next + 1;
    }
    if (fields.size() < 22) return out;
    auto field = [&](int n) {
      return std::strtoull(fields[static_cast<size_t>(n - 3)].c_str(), nullptr, 10);
    };
    const double ticks = static_cast<double>(::sysconf(_SC_CLK_TCK));
    const double page = static_cast<double>(::sysconf(_SC_PAGESIZE));
    out.cpu_seconds = static_cast<double>(field(14) + field(15)) / ticks;
    out.virtual_bytes = field(23);
    out.resident_bytes = static_cast<std::uint64_t>(static_cast<double>(field(24)) * page);
    // starttime is in ticks since boot: add the boot time (btime in /proc/stat).
    const std::string pstat = read_small_file("/proc/stat");
    if (auto b = pstat.find("btime "); b != std::string::npos) {
      const double btime = static_cast<double>(std::strtoull(pstat.c_str() + b + 6, nullptr, 10));
      out.start_time_seconds = btime + static_cast<double>(field(22)) / ticks;
    }
    if (DIR* d = ::opendir("/proc/self/fd")) {
      std::uint64_t n = 0;
      while (dirent* ent = ::readdir(d)) {
        if (ent->d_name[0] != '.') ++n;
      }
      ::closedir(d);
      out.open_fds = n > 0 ? n - 1 : 0;  // not the directory's own fd
    }
    rlimit nofile{};
    if (::getrlimit(RLIMIT_NOFILE, &nofile) == 0) out.max_fds = nofile.rlim_cur;
    out.valid = true;
  } catch (...) {
    out.valid = false;
  }
  return out;
}

std::optional<std::uint64_t> resident_bytes_of(int pid) noexcept {
  std::uint64_t bytes = 0;
  if (!process_memory(pid, MemoryMeasure::rss, bytes)) return std::nullopt;
  return bytes;
}

}  // namespace corral
