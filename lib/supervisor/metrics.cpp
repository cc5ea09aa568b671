// Metrics and health, from the supervisor's own tables: the endpoint on its loop
// (lib/metrics/server.h), the snapshot render_metrics() writes, the textfile, and the
// readiness rule shared with `corral status --check` (lib/metrics/health.h).
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>

#include "common/proc_memory.h"
#include "container/limits.h"
#include "listen/listener.h"
#include "listen/sock_diag.h"
#include "metrics/exposition.h"
#include "metrics/health.h"
#include "metrics/textfile.h"
#include "supervisor/impl.h"

#ifndef CORRAL_COMMIT
#define CORRAL_COMMIT "unknown"
#endif

namespace corral {
namespace {

WorkerStateLabel state_label(const WorkerRec& w, corral_slot_state state, bool current) {
  if (!current || w.phase == WorkerPhase::stopping || w.phase == WorkerPhase::killing)
    return WorkerStateLabel::stopping;
  switch (state) {
    case CORRAL_SLOT_IDLE: return WorkerStateLabel::idle;
    case CORRAL_SLOT_BUSY: return WorkerStateLabel::busy;
    case CORRAL_SLOT_STOPPING: return WorkerStateLabel::stopping;
    case CORRAL_SLOT_RUNNING: return WorkerStateLabel::running;
    default: return WorkerStateLabel::starting;
  }
}

std::size_t result_index(const std::string& result) {
  if (result == "ok") return 0;
  if (result == "rejected") return 1;
  return 2;
}

}  // namespace

UniqueFd Supervisor::Impl::bind_metrics(const MetricsSpec& spec) const {
  if (!spec.listen) return UniqueFd();
  return bind_listener(*spec.listen);  // throws SetupError naming the address
}

void Supervisor::Impl::start_metrics(UniqueFd fd, const MetricsSpec& spec) noexcept {
  stop_metrics();
  if (!fd) return;
  try {
    metrics_display_ = local_address_of(fd.get());
    metrics_unlink_ = spec.listen && std::holds_alternative<UnixAddress>(spec.listen->address);
    metrics_ = std::make_unique<MetricsServer>(
        std::move(fd), epoll_.get(),
        [this](std::string_view path) noexcept { return serve_http(path); });
    spdlog::info("metrics: serving /metrics, /healthz and /readyz on {}", metrics_display_);
  } catch (const std::exception& e) {
    spdlog::error("metrics: cannot serve on {}: {}", spec.listen_text, e.what());
    metrics_.reset();
  }
}

void Supervisor::Impl::stop_metrics() noexcept {
  if (!metrics_) return;
  metrics_.reset();
  if (metrics_unlink_ && metrics_display_.starts_with("unix:"))
    ::unlink(metrics_display_.c_str() + 5);
  metrics_unlink_ = false;
  metrics_display_.clear();
}

void Supervisor::Impl::count_exit(Job& job, ExitReason reason) noexcept {
  ++job.counters.exits[static_cast<std::size_t>(reason)];
}

void observe_counters(WorkerRec& w, const SlotView& slot) noexcept {
  w.requests_seen = std::max(w.requests_seen, std::min(slot.requests, kMaxSaneCount));
  if (!slot.extended) return;
  if (slot.reports_listeners) w.reports_listeners = true;
  w.refused_seen = std::max(w.refused_seen, std::min(slot.refused, kMaxSaneCount));
  for (std::size_t i = 0; i < w.accepted_seen.size(); ++i)
    w.accepted_seen[i] = std::max(w.accepted_seen[i], std::min(slot.accepted[i], kMaxSaneCount));
}

void Supervisor::Impl::fold_counters(Job& job, WorkerRec& rec, const SlotView& slot) noexcept {
  observe_counters(rec, slot);
  auto& c = job.counters;
  c.accepted_folded = saturating_add(c.accepted_folded, rec.requests_seen);
  c.refused_folded = saturating_add(c.refused_folded, rec.refused_seen);
  if (!rec.reports_listeners || !rec.listeners) return;
  try {
    const auto& names = *rec.listeners;
    for (std::size_t i = 0; i < names.size() && i < rec.accepted_seen.size(); ++i) {
      auto& total = c.listener_accepted_folded[names[i]];
      total = saturating_add(total, rec.accepted_seen[i]);
    }
  } catch (...) {
    // Out of memory: this worker's per-listener counts are lost, nothing else.
  }
}

void Supervisor::Impl::count_oom_kill(Job& job, unsigned slot) noexcept {
  try {
    auto& n = job.counters.slot_oom_kills[slot];
    ++n;
    job.res.sb.set_slot_oom_kills(slot, n);
  } catch (...) {
  }
}

JobTotals Supervisor::Impl::job_totals(Job& job) noexcept {
  JobTotals t;
  const auto& c = job.counters;
  try {
    for (auto& [pid, w] : job.workers) {
      observe_counters(w, job.res.sb.read_slot(w.slot));
      t.accepted_live = saturating_add(t.accepted_live, w.requests_seen);
      t.refused_live = saturating_add(t.refused_live, w.refused_seen);
      if (!w.reports_listeners || !w.listeners) continue;
      const auto& names = *w.listeners;
      for (std::size_t i = 0; i < names.size() && i < w.accepted_seen.size(); ++i) {
        auto& total = t.listener_accepted[names[i]];
        total = saturating_add(total, w.accepted_seen[i]);
      }
    }
    for (const auto& [name, n] : c.listener_accepted_folded) {
      auto& total = t.listener_accepted[name];
      total = saturating_add(total, n);
    }
  } catch (...) {
    // Out of memory: what was summed is shown.
  }
  t.accepted = saturating_add(c.accepted_folded, t.accepted_live);
  t.refused = saturating_add(c.refused_folded, t.refused_live);
  return t;
}

// The job's counters into the grown scoreboard header, for `corral status` (which reads
// nothing else), at most every 100 ms; and the supervisor's own slot fields rewritten.
void Supervisor::Impl::publish_totals(Job& job, std::uint64_t now) noexcept {
  if (!job.res.sb.extended_header() && !job.res.sb.extended_slots()) return;
  if (job.audit.totals_published != 0 && now - job.audit.totals_published < 100 * kMs) return;
  job.audit.totals_published = now;
  JobTotals t = job_totals(job);
  SbTotals out;
  static_assert(kExitReasons <= CORRAL_SB_EXIT_REASONS);
  static_assert(static_cast<int>(ExitReason::stuck_lock) == CORRAL_EXIT_REASON_STUCK_LOCK);
  static_assert(static_cast<int>(ExitReason::oom) == CORRAL_EXIT_REASON_OOM);
  for (std::size_t i = 0; i < kExitReasons; ++i) out.exits[i] = job.counters.exits[i];
  out.refused = t.refused;
  out.accepted = t.accepted;
  for (std::size_t i = 0; i < job.res.listeners.size() && i < out.listener_accepted.size(); ++i) {
    auto it = t.listener_accepted.find(job.res.listeners[i]->display);
    if (it == t.listener_accepted.end()) continue;
    out.listener_accepted[i] = it->second;
    out.listeners_reported |= 1U << i;
  }
  job.res.sb.publish_totals(out);
  // A worker may have scribbled over its slot's oom_kills: the supervisor's count stands.
  for (const auto& [pid, w] : job.workers) {
    auto it = job.counters.slot_oom_kills.find(w.slot);
    job.res.sb.set_slot_oom_kills(w.slot, it != job.counters.slot_oom_kills.end() ? it->second : 0);
  }
}

void Supervisor::Impl::sample_queues(std::uint64_t now) noexcept {
  (void)now;
  for (const auto& job : jobs_) {
    if (job->removed()) continue;
    (void)queued_connections(job->res.listeners, &queue_peaks_);
  }
  // Forget the peaks of listeners a reload closed.
  std::erase_if(queue_peaks_, [&](const auto& entry) {
    return std::none_of(jobs_.begin(), jobs_.end(), [&](const std::unique_ptr<Job>& job) {
      return std::any_of(
          job->res.listeners.begin(), job->res.listeners.end(),
          [&](const std::shared_ptr<Listener>& l) { return l->display == entry.first; });
    });
  });
}

SupervisorSample Supervisor::Impl::sample_metrics(bool for_textfile, std::uint64_t now) noexcept {
  SupervisorSample s;
  try {
    s.generation = generation_;
    s.limit_cpus = container_limits().cpus;
    s.limit_memory = container_limits().memory_bytes;
    s.version = CORRAL_VERSION;
    s.commit = CORRAL_COMMIT;
    for (const auto& [result, n] : reload_results_) s.reloads[result_index(result)] = n;
    for (const auto& [result, n] : upgrade_results_) s.upgrades[result_index(result)] = n;
    for (auto& job : jobs_) {
      if (job->removed()) continue;
      PoolSample p;
      p.pool = job->cfg.name;
      p.min_spare = job->cfg.workers.min_spare;
      p.max_spare = job->cfg.workers.max_spare;
      p.max_workers = job->cfg.workers.max;
      p.backoff_active = job->health.phase == JobPhase::backing_off && job->health.retry_at > now;
      p.counters = job->counters;
      JobTotals totals = job_totals(*job);
      p.accepted_live = totals.accepted_live;
      p.refused_live = totals.refused_live;
      for (const auto& [name, n] : totals.listener_accepted)
        p.listener_accepted.push_back(ListenerAccepted{name, n});
      p.slot_oom_kills = job->counters.slot_oom_kills;
      if (job->cfg.memory.budget != 0 && job->cfg.mode != Mode::plain) {
        p.memory_budget = job->cfg.memory.budget;
        p.memory_bytes = job->health.pool_bytes;
        p.budget_limited = job->health.budget_limited;
      }
      for (auto& [pid, w] : job->workers) {
        const bool current = w.generation == job->generation;
        SlotView slot = job->res.sb.read_slot(w.slot);
        ++p.workers[static_cast<std::size_t>(state_label(w, slot.state, current))];
        p.slot_oom_kills.emplace(w.slot, 0);  // a live slot's series, 0 until a kill
        SlotSample sl;
        sl.slot = w.slot;
        sl.requests = std::min(slot.requests, kMaxSaneCount);
        sl.state_seconds = slot.state_since_ns != 0 && slot.state_since_ns <= now
                               ? static_cast<double>(now - slot.state_since_ns) / 1e9
                               : 0.0;
        if (const WorkerMemory m = worker_memory(pid, MemoryMeasure::rss, warm_inetd(job->cfg));
            m.valid)
          sl.rss_bytes = m.bytes;
        p.slots.push_back(sl);
      }
      std::sort(p.slots.begin(), p.slots.end(),
                [](const SlotSample& a, const SlotSample& b) { return a.slot < b.slot; });
      for (const auto& l : job->res.listeners) {
        ListenerSample ls;
        ls.listener = l->display;
        if (auto q = listen_queue_of(l->fd.get())) {
          ls.known = true;
          ls.length = q->length;
          ls.capacity = q->capacity;
          auto& peak = queue_peaks_[l->display];
          std::uint32_t& mine = for_textfile ? peak.file : peak.scrape;
          ls.peak = std::max(mine, ls.length);
          mine = 0;  // the peak is "since the previous exposition" of this kind
        }
        p.listeners.push_back(std::move(ls));
      }
      s.pools.push_back(std::move(p));
    }
    // node_exporter exports its own process_*: a textfile must not repeat them.
    if (!for_textfile) s.process = read_process_sample();
  } catch (...) {
    // Out of memory: what was gathered is served.
  }
  return s;
}

HttpResponse Supervisor::Impl::readiness(std::uint64_t now) noexcept {
  HttpResponse r;
  try {
    bool ready = true;
    std::string lines;
    for (const auto& job : jobs_) {
      if (job->removed()) continue;
      JobHealthInput in;
      in.name = job->cfg.name;
      in.plain = job->cfg.mode == Mode::plain;
      in.start = job->cfg.workers.start;
      in.max = job->cfg.workers.max;
      const auto& h = job->health;
      if (stopping())
        in.state = JobHealthState::stopping;
      else if (draining() || h.phase == JobPhase::draining)  // stop.drain: serving, not ready
        in.state = JobHealthState::draining;
      else if (h.phase == JobPhase::failed)
        in.state = JobHealthState::failed;
      else if (h.phase == JobPhase::backing_off && h.retry_at > now) {
        in.state = JobHealthState::backing_off;
        in.retry_in = static_cast<double>(h.retry_at - now) / 1e9;
      }
      for (const auto& [pid, w] : job->workers) {
        if (w.generation != job->generation || w.phase == WorkerPhase::stopping ||
            w.phase == WorkerPhase::killing)
          continue;
        switch (job->res.sb.read_slot(w.slot).state) {
          case CORRAL_SLOT_IDLE: ++in.idle; break;
          case CORRAL_SLOT_BUSY: ++in.busy; break;
          case CORRAL_SLOT_RUNNING: ++in.running; break;
          case CORRAL_SLOT_STARTING: ++in.starting; break;
          default: break;
        }
      }
      auto v = judge_job_health(in);
      if (!v.ready) ready = false;
      if (!v.line.empty()) lines += v.line + "\n";
    }
    r.status = ready ? 200 : 503;
    r.body = (ready ? "ready\n" : "not ready\n") + lines;
  } catch (...) {
    r.status = 503;
    r.body.clear();
  }
  return r;
}

HttpResponse Supervisor::Impl::serve_http(std::string_view path) noexcept {
  const auto now = monotonic_ns();
  try {
    if (path == "/metrics") {
      HttpResponse r;
      r.content_type = std::string(kExpositionContentType);
      r.body = render_metrics(sample_metrics(false, now));
      return r;
    }
    // Liveness: the loop answered. Never load, a backoff or a drain.
    if (path == "/healthz") return HttpResponse{200, "text/plain; charset=utf-8", "ok\n"};
    if (path == "/readyz") return readiness(now);
    if (path == "/")
      return HttpResponse{200, "text/plain; charset=utf-8",
                          "corral " CORRAL_VERSION ": /metrics /healthz /readyz\n"};
    return HttpResponse{404, "text/plain; charset=utf-8", "not found\n"};
  } catch (...) {
    return HttpResponse{503, "text/plain; charset=utf-8", ""};
  }
}

void Supervisor::Impl::write_textfile_if_due(std::uint64_t now) noexcept {
  const auto& m = options_.config.metrics;
  if (m.textfile.empty() || now < textfile_due_) return;
  textfile_due_ = now + std::max<std::uint64_t>(to_ns(m.interval), 100 * kMs);
  try {
    auto status = write_textfile(m.textfile, render_metrics(sample_metrics(true, now)));
    if (!status) {
      auto text = status.error().to_string();
      if (text != textfile_error_) spdlog::error("metrics: textfile {}: {}", m.textfile, text);
      textfile_error_ = text;
    } else if (!textfile_error_.empty()) {
      spdlog::info("metrics: textfile {} written again", m.textfile);
      textfile_error_.clear();
    }
  } catch (...) {
  }
}

}  // namespace corral
