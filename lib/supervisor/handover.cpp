#include "supervisor/handover.h"

#include <exception>
#include <nlohmann/json.hpp>

namespace corral {
namespace {

using nlohmann::json;

template <typename T>
void get_opt(const json& j, const char* key, T& out) {
  if (auto it = j.find(key); it != j.end() && !it->is_null()) out = it->get<T>();
}

template <typename T>
void get_req(const json& j, const char* key, T& out) {
  if (!j.contains(key)) throw std::runtime_error(std::string("missing \"") + key + "\"");
  out = j.at(key).get<T>();
}

// Version 1 said a worker's phase with three bools.
std::string v1_worker_phase(const json& w) {
  bool ready = false, term = false, kill = false;
  get_opt(w, "ready", ready);
  get_opt(w, "term_sent", term);
  get_opt(w, "kill_sent", kill);
  if (kill) return "killing";
  if (term) return "stopping";
  return ready ? "up" : "starting";
}

// Version 1 said a job's phase with `removed` and an int (0 running, 1 backing off, 2 failed).
std::string v1_job_phase(const json& j) {
  bool removed = false;
  int state = 0;
  get_opt(j, "removed", removed);
  get_opt(j, "state", state);
  if (removed) return "removed";
  if (state == 1) return "backing-off";
  if (state == 2) return "failed";
  return "running";
}

}  // namespace

std::vector<int> Handover::fds() const {
  std::vector<int> out;
  for (const auto& l : listeners) out.push_back(l.fd);
  out.push_back(metrics_fd);
  for (const auto& j : jobs) {
    for (int fd : {j.sb_fd, j.lock_fd, j.lock_private_fd, j.notify_read, j.notify_write})
      out.push_back(fd);
    for (const auto& w : j.workers) out.push_back(w.report_fd);
  }
  std::erase_if(out, [](int fd) { return fd < 0; });
  return out;
}

std::string encode_handover(const Handover& s) {
  json state;
  state["version"] = s.version;
  state["generation"] = s.generation;
  state["started"] = s.started;
  state["config_text"] = s.config_text;
  state["notify_socket"] = s.notify_socket;
  state["watchdog_ns"] = s.watchdog_ns;
  state["ready_sent"] = s.ready_sent;
  state["reload_pending"] = s.reload_pending;
  if (s.nofile) state["nofile"] = {s.nofile->first, s.nofile->second};
  json listeners = json::array();
  for (const auto& l : s.listeners) {
    listeners.push_back({{"fd", l.fd},
                         {"key", l.key},
                         {"name", l.name},
                         {"display", l.display},
                         {"inherited", l.inherited},
                         {"stored", l.stored},
                         {"store_name", l.store_name}});
  }
  state["listeners"] = listeners;
  json jobs = json::array();
  for (const auto& job : s.jobs) {
    json j;
    j["name"] = job.name;
    j["mode"] = job.mode;
    j["phase"] = job.phase;
    j["removed"] = job.phase == "removed";  // what a version-1 image reads
    j["generation"] = job.generation;
    j["graceful_ns"] = job.graceful_ns;
    j["sb_fd"] = job.sb_fd;
    j["sb_path"] = job.sb_path;
    j["lock_kind"] = job.lock_kind;
    j["lock_fd"] = job.lock_fd;
    j["lock_private_fd"] = job.lock_private_fd;
    j["notify_read"] = job.notify_read;
    j["notify_write"] = job.notify_write;
    j["failures"] = job.failures;
    j["backoff_ns"] = job.backoff_ns;
    j["retry_at"] = job.retry_at;
    json workers = json::array();
    for (const auto& w : job.workers) {
      workers.push_back({{"pid", w.pid},
                         {"slot", w.slot},
                         {"generation", w.generation},
                         {"started_ns", w.started_ns},
                         {"phase", w.phase},
                         {"kill_at", w.kill_at},
                         {"last_state", w.last_state},
                         {"report_fd", w.report_fd},
                         {"requests_limit", w.requests_limit},
                         {"retire_at", w.retire_at},
                         // version 4
                         {"seen",
                          {{"listeners", w.listeners},
                           {"reports_listeners", w.reports_listeners},
                           {"requests", w.requests_seen},
                           {"refused", w.refused_seen},
                           {"accepted", w.accepted_seen}}}});
      // Version 5 (the limits issue).
      if (w.cgroup) workers.back()["cgroup"] = {{"oom_base", w.cgroup_oom_base}};
    }
    j["workers"] = workers;
    json oom = json::array();
    for (const auto& [slot, n] : job.slot_oom_kills) oom.push_back({slot, n});
    j["counters"] = {{"spawns", job.spawns},
                     {"exits", job.exits},
                     {"max_reached", job.max_reached},
                     {"accepted", job.accepted},
                     // version 4
                     {"refused", job.refused},
                     {"listener_accepted", job.listener_accepted},
                     {"slot_oom_kills", oom}};
    // Version 5 (the limits issue).
    j["limits"] = {{"cgroup_off", job.cgroup_off},
                   {"budget_limited", job.budget_limited},
                   {"budget_median", job.budget_median}};
    jobs.push_back(j);
  }
  state["jobs"] = jobs;
  state["reloads"] = s.reloads;
  state["upgrades"] = s.upgrades;
  if (s.metrics_fd >= 0) {
    state["metrics_fd"] = s.metrics_fd;
    state["metrics_listen"] = s.metrics_listen;
  }
  return state.dump();
}

int handover_version(const std::string& text) noexcept {
  try {
    auto state = json::parse(text);
    if (!state.is_object()) return 0;
    int version = 1;
    get_opt(state, "version", version);
    return version;
  } catch (const std::exception&) {
    return 0;
  }
}

Result<Handover> decode_handover(const std::string& text) {
  try {
    auto state = json::parse(text);
    if (!state.is_object()) return Error{0, "the hand-over state is not a JSON object"};
    Handover s;
    s.version = 1;
    get_opt(state, "version", s.version);
    if (s.version < 1 || s.version > kHandoverVersion)
      return Error{0, "hand-over version " + std::to_string(s.version) +
                          " is not one I know (1 to " + std::to_string(kHandoverVersion) + ")"};
    get_req(state, "generation", s.generation);
    get_req(state, "started", s.started);
    get_opt(state, "config_text", s.config_text);
    get_opt(state, "notify_socket", s.notify_socket);
    get_opt(state, "watchdog_ns", s.watchdog_ns);
    get_opt(state, "ready_sent", s.ready_sent);
    get_opt(state, "reload_pending", s.reload_pending);
    if (auto it = state.find("nofile"); it != state.end() && it->is_array() && it->size() == 2)
      s.nofile = std::make_pair((*it)[0].get<std::uint64_t>(), (*it)[1].get<std::uint64_t>());
    for (const auto& l : state.value("listeners", json::array())) {
      HandoverListener h;
      get_req(l, "fd", h.fd);
      get_req(l, "key", h.key);
      get_opt(l, "name", h.name);
      get_opt(l, "display", h.display);
      get_opt(l, "inherited", h.inherited);
      get_opt(l, "stored", h.stored);
      get_opt(l, "store_name", h.store_name);
      s.listeners.push_back(std::move(h));
    }
    for (const auto& j : state.value("jobs", json::array())) {
      HandoverJob job;
      get_req(j, "name", job.name);
      get_req(j, "mode", job.mode);
      job.phase = s.version >= 2 ? j.value("phase", std::string("running")) : v1_job_phase(j);
      get_req(j, "generation", job.generation);
      get_opt(j, "graceful_ns", job.graceful_ns);
      get_req(j, "sb_fd", job.sb_fd);
      get_opt(j, "sb_path", job.sb_path);
      get_opt(j, "lock_kind", job.lock_kind);
      get_opt(j, "lock_fd", job.lock_fd);
      get_opt(j, "lock_private_fd", job.lock_private_fd);
      get_opt(j, "notify_read", job.notify_read);
      get_opt(j, "notify_write", job.notify_write);
      get_opt(j, "failures", job.failures);
      get_opt(j, "backoff_ns", job.backoff_ns);
      get_opt(j, "retry_at", job.retry_at);
      for (const auto& w : j.value("workers", json::array())) {
        HandoverWorker hw;
        get_req(w, "pid", hw.pid);
        get_req(w, "slot", hw.slot);
        get_opt(w, "generation", hw.generation);
        get_opt(w, "started_ns", hw.started_ns);
        hw.phase = s.version >= 2 ? w.value("phase", std::string("up")) : v1_worker_phase(w);
        get_opt(w, "kill_at", hw.kill_at);
        get_opt(w, "last_state", hw.last_state);
        get_opt(w, "report_fd", hw.report_fd);
        get_opt(w, "requests_limit", hw.requests_limit);
        get_opt(w, "retire_at", hw.retire_at);
        if (auto seen = w.find("seen"); seen != w.end() && seen->is_object()) {  // version 4
          get_opt(*seen, "listeners", hw.listeners);
          get_opt(*seen, "reports_listeners", hw.reports_listeners);
          get_opt(*seen, "requests", hw.requests_seen);
          get_opt(*seen, "refused", hw.refused_seen);
          get_opt(*seen, "accepted", hw.accepted_seen);
        }
        // Version 5 (the limits issue).
        if (auto cg = w.find("cgroup"); cg != w.end() && cg->is_object()) {
          hw.cgroup = true;
          get_opt(*cg, "oom_base", hw.cgroup_oom_base);
        }
        job.workers.push_back(hw);
      }
      if (auto c = j.find("counters"); c != j.end() && c->is_object()) {
        get_opt(*c, "spawns", job.spawns);
        get_opt(*c, "exits", job.exits);
        get_opt(*c, "max_reached", job.max_reached);
        get_opt(*c, "accepted", job.accepted);
        get_opt(*c, "refused", job.refused);  // version 4
        get_opt(*c, "listener_accepted", job.listener_accepted);
        for (const auto& pair : c->value("slot_oom_kills", json::array())) {
          if (pair.is_array() && pair.size() == 2)
            job.slot_oom_kills[pair[0].get<unsigned>()] = pair[1].get<std::uint64_t>();
        }
      }
      // Version 5 (the limits issue).
      if (auto l = j.find("limits"); l != j.end() && l->is_object()) {
        get_opt(*l, "cgroup_off", job.cgroup_off);
        get_opt(*l, "budget_limited", job.budget_limited);
        get_opt(*l, "budget_median", job.budget_median);
      }
      s.jobs.push_back(std::move(job));
    }
    get_opt(state, "reloads", s.reloads);
    get_opt(state, "upgrades", s.upgrades);
    get_opt(state, "metrics_fd", s.metrics_fd);
    get_opt(state, "metrics_listen", s.metrics_listen);
    return s;
  } catch (const std::exception& e) {
    return Error{0, std::string("the hand-over state is unreadable: ") + e.what()};
  }
}

}  // namespace corral
