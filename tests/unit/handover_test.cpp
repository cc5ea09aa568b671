// lib/supervisor/handover: the state one image hands the next across exec.
#include "supervisor/handover.h"

#include <doctest/doctest.h>

#include <string>

TEST_CASE("a hand-over survives its own wire form") {
  corral::Handover s;
  s.generation = 7;
  s.started = 123;
  s.config_text = "jobs: {}\n";
  s.nofile = std::make_pair(1024ULL, 4096ULL);
  s.listeners.push_back({5, "127.0.0.1:0", "web", "127.0.0.1:4000", false, true, "corral-bound.x"});
  corral::HandoverJob j;
  j.name = "web";
  j.phase = "backing-off";
  j.sb_fd = 6;
  j.lock_fd = 7;
  j.failures = 3;
  corral::HandoverWorker w;
  w.pid = 4242;
  w.slot = 3;
  w.phase = "stopping";
  w.kill_at = 99;
  w.report_fd = 9;
  j.workers.push_back(w);
  s.jobs.push_back(j);
  auto back = corral::decode_handover(corral::encode_handover(s));
  REQUIRE(back.ok());
  CHECK(back->version == corral::kHandoverVersion);
  CHECK(back->generation == 7);
  CHECK(back->nofile == s.nofile);
  REQUIRE(back->jobs.size() == 1);
  CHECK(back->jobs[0].phase == "backing-off");
  CHECK(back->jobs[0].failures == 3);
  REQUIRE(back->jobs[0].workers.size() == 1);
  CHECK(back->jobs[0].workers[0].phase == "stopping");
  CHECK(back->jobs[0].workers[0].kill_at == 99);
  CHECK(back->fds() == std::vector<int>{5, 6, 7, 9});
}

TEST_CASE("version 1, as the first release wrote it, is read with its bools as phases") {
  // The shape of lib/supervisor/upgrade.cpp at ec872f0 (no "version" key).
  const std::string v1 = R"({"generation":2,"started":5,"config_text":"","notify_socket":"",
    "watchdog_ns":0,"ready_sent":true,"listeners":[{"fd":3,"key":"k","name":"web",
    "display":"127.0.0.1:1","inherited":false,"stored":false,"store_name":""}],
    "jobs":[{"name":"web","mode":0,"removed":false,"generation":2,"graceful_ns":30,
      "sb_fd":4,"sb_path":"/run/corral/web.scoreboard","lock_kind":2,"lock_fd":5,
      "lock_private_fd":6,"notify_read":7,"notify_write":8,"state":1,"failures":2,
      "backoff_ns":100,"retry_at":200,"workers":[
        {"pid":10,"slot":0,"generation":2,"started_ns":1,"ready":true,"term_sent":false,
         "kill_sent":false,"kill_at":0,"last_state":2,"report_fd":-1},
        {"pid":11,"slot":1,"generation":1,"started_ns":1,"ready":true,"term_sent":true,
         "kill_sent":false,"kill_at":9,"last_state":3,"report_fd":-1},
        {"pid":12,"slot":2,"generation":2,"started_ns":1,"ready":false,"term_sent":false,
         "kill_sent":false,"kill_at":0,"last_state":1,"report_fd":12}]}]})";
  CHECK(corral::handover_version(v1) == 1);
  auto s = corral::decode_handover(v1);
  REQUIRE(s.ok());
  CHECK(s->version == 1);
  REQUIRE(s->jobs.size() == 1);
  CHECK(s->jobs[0].phase == "backing-off");
  CHECK(s->jobs[0].workers[0].phase == "up");
  CHECK(s->jobs[0].workers[1].phase == "stopping");
  CHECK(s->jobs[0].workers[2].phase == "starting");
}

TEST_CASE("an unknown version or a broken state is an error, never an exception") {
  CHECK_FALSE(corral::decode_handover(R"({"version":99,"generation":1,"started":0})").ok());
  CHECK(corral::handover_version(R"({"version":99})") == 99);
  CHECK_FALSE(corral::decode_handover("not json").ok());
  CHECK_FALSE(corral::decode_handover("[1,2]").ok());
  CHECK_FALSE(corral::decode_handover(R"({"version":2})").ok());  // no generation
  CHECK_FALSE(corral::decode_handover(R"({"generation":"x","started":0})").ok());
  CHECK(corral::handover_version("garbage") == 0);
}

TEST_CASE("version 3 carries the metrics counters and socket; version 2 reads as zero") {
  corral::Handover s;
  s.generation = 2;
  s.reloads = {{"ok", 3}, {"rejected", 1}};
  s.upgrades = {{"ok", 2}};
  s.metrics_fd = 11;
  s.metrics_listen = "127.0.0.1:9101";
  corral::HandoverJob j;
  j.name = "web";
  j.sb_fd = 6;
  j.spawns = 40;
  j.exits = {{"crash", 5}, {"max_requests", 7}};
  j.max_reached = 2;
  j.accepted = 12345;
  s.jobs.push_back(j);
  auto back = corral::decode_handover(corral::encode_handover(s));
  REQUIRE(back.ok());
  CHECK(back->version == corral::kHandoverVersion);
  CHECK(back->reloads == s.reloads);
  CHECK(back->upgrades == s.upgrades);
  CHECK(back->metrics_fd == 11);
  CHECK(back->metrics_listen == "127.0.0.1:9101");
  REQUIRE(back->jobs.size() == 1);
  CHECK(back->jobs[0].spawns == 40);
  CHECK(back->jobs[0].exits == j.exits);
  CHECK(back->jobs[0].max_reached == 2);
  CHECK(back->jobs[0].accepted == 12345);
  CHECK(back->fds() == std::vector<int>{11, 6});

  auto v2 = corral::decode_handover(
      R"({"version":2,"generation":4,"started":1,"jobs":[{"name":"web","mode":0,"generation":4,"sb_fd":6}]})");
  REQUIRE(v2.ok());
  CHECK(v2->metrics_fd == -1);
  CHECK(v2->reloads.empty());
  REQUIRE(v2->jobs.size() == 1);
  CHECK(v2->jobs[0].spawns == 0);
  CHECK(v2->jobs[0].exits.empty());
}

TEST_CASE("version 4 carries the grown scoreboard's counters; version 3 reads as none") {
  corral::Handover s;
  corral::HandoverJob j;
  j.name = "web";
  j.sb_fd = 6;
  j.accepted = 50;
  j.refused = 3;
  j.listener_accepted = {{"127.0.0.1:8080", 30}, {"unix:/run/web.sock", 20}};
  j.slot_oom_kills = {{0, 1}, {7, 2}};
  corral::HandoverWorker w;
  w.pid = 4242;
  w.slot = 7;
  w.listeners = {"127.0.0.1:8080", "unix:/run/web.sock"};
  w.reports_listeners = true;
  w.requests_seen = 9;
  w.refused_seen = 1;
  w.accepted_seen = {4, 5};
  j.workers.push_back(w);
  s.jobs.push_back(j);
  auto back = corral::decode_handover(corral::encode_handover(s));
  REQUIRE(back.ok());
  CHECK(back->version >= 4);
  REQUIRE(back->jobs.size() == 1);
  const auto& bj = back->jobs[0];
  CHECK(bj.accepted == 50);
  CHECK(bj.refused == 3);
  CHECK(bj.listener_accepted == j.listener_accepted);
  CHECK(bj.slot_oom_kills == j.slot_oom_kills);
  REQUIRE(bj.workers.size() == 1);
  const auto& bw = bj.workers[0];
  CHECK(bw.listeners == w.listeners);
  CHECK(bw.reports_listeners);
  CHECK(bw.requests_seen == 9);
  CHECK(bw.refused_seen == 1);
  CHECK(bw.accepted_seen == w.accepted_seen);

  // What a version 3 image wrote: no per-listener block anywhere.
  auto v3 = corral::decode_handover(
      R"({"version":3,"generation":2,"started":1,"jobs":[{"name":"web","mode":0,"generation":2,)"
      R"("sb_fd":6,"workers":[{"pid":10,"slot":0,"phase":"up"}],)"
      R"("counters":{"spawns":4,"exits":{"crash":1},"max_reached":0,"accepted":12}}]})");
  REQUIRE(v3.ok());
  CHECK(v3->version == 3);
  REQUIRE(v3->jobs.size() == 1);
  CHECK(v3->jobs[0].accepted == 12);
  CHECK(v3->jobs[0].refused == 0);
  CHECK(v3->jobs[0].listener_accepted.empty());
  CHECK(v3->jobs[0].slot_oom_kills.empty());
  REQUIRE(v3->jobs[0].workers.size() == 1);
  CHECK(v3->jobs[0].workers[0].listeners.empty());
  CHECK_FALSE(v3->jobs[0].workers[0].reports_listeners);
  CHECK(v3->jobs[0].workers[0].accepted_seen.empty());

  // A version 4 state with the wrong shapes is an error, not a crash.
  auto bad = corral::decode_handover(
      R"({"version":4,"generation":2,"started":1,"jobs":[{"name":"web","mode":0,"generation":2,)"
      R"("sb_fd":6,"counters":{"listener_accepted":[1,2],"slot_oom_kills":[[1,2,3],"x"]}}]})");
  CHECK_FALSE(bad.ok());
}

TEST_CASE("version 5 (limits) carries slot cgroups and the budget; older versions read as none") {
  corral::Handover s;
  corral::HandoverJob j;
  j.name = "web";
  j.sb_fd = 6;
  j.cgroup_off = true;
  j.budget_limited = true;
  j.budget_median = 48ULL << 20;
  corral::HandoverWorker in_cgroup;
  in_cgroup.pid = 100;
  in_cgroup.slot = 2;
  in_cgroup.cgroup = true;
  in_cgroup.cgroup_oom_base = 3;
  corral::HandoverWorker plain;
  plain.pid = 101;
  plain.slot = 3;
  j.workers = {in_cgroup, plain};
  s.jobs.push_back(j);
  auto back = corral::decode_handover(corral::encode_handover(s));
  REQUIRE(back.ok());
  CHECK(back->version == 5);
  REQUIRE(back->jobs.size() == 1);
  const auto& bj = back->jobs[0];
  CHECK(bj.cgroup_off);
  CHECK(bj.budget_limited);
  CHECK(bj.budget_median == 48ULL << 20);
  REQUIRE(bj.workers.size() == 2);
  CHECK(bj.workers[0].cgroup);
  CHECK(bj.workers[0].cgroup_oom_base == 3);
  CHECK_FALSE(bj.workers[1].cgroup);

  auto v3 = corral::decode_handover(
      R"({"version":3,"generation":4,"started":1,"jobs":[{"name":"web","mode":0,"generation":4,"sb_fd":6,"workers":[{"pid":100,"slot":2}]}]})");
  REQUIRE(v3.ok());
  REQUIRE(v3->jobs.size() == 1);
  CHECK_FALSE(v3->jobs[0].cgroup_off);
  CHECK(v3->jobs[0].budget_median == 0);
  REQUIRE(v3->jobs[0].workers.size() == 1);
  CHECK_FALSE(v3->jobs[0].workers[0].cgroup);
}
