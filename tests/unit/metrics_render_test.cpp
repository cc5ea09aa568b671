// lib/metrics/exposition and render: the text format and PRODUCT.md's names.
#include <doctest/doctest.h>

#include <unistd.h>

#include <string>

#include "metrics/exposition.h"
#include "metrics/render.h"

namespace {

bool has_line(const std::string& text, const std::string& line) {
  return ("\n" + text).find("\n" + line + "\n") != std::string::npos;
}

corral::SupervisorSample one_pool() {
  corral::SupervisorSample s;
  s.generation = 3;
  s.version = "0.1.0";
  s.commit = "abc";
  s.reloads = {2, 1, 0};
  corral::PoolSample p;
  p.pool = "web";
  p.workers = {1, 2, 3, 0, 0};
  p.min_spare = 2;
  p.max_spare = 8;
  p.max_workers = 64;
  p.counters.spawns = 9;
  p.counters.exits[static_cast<size_t>(corral::ExitReason::crash)] = 4;
  p.counters.accepted_folded = 100;
  p.accepted_live = 23;
  p.listeners.push_back({"127.0.0.1:8080", true, 5, 1024, 7});
  p.listeners.push_back({"udp:x", false, 0, 0, 0});
  p.slots.push_back({0, 17, 4.25, 1048576});
  p.slots.push_back({1, 0, 0.5, std::nullopt});
  s.pools.push_back(p);
  return s;
}

}  // namespace

TEST_CASE("label values are escaped as the text format says") {
  CHECK(corral::escape_label_value(R"(a"b\c)") == R"(a\"b\\c)");
  CHECK(corral::escape_label_value("x\ny") == "x\\ny");
  CHECK(corral::format_sample_value(1.0) == "1");
  CHECK(corral::format_sample_value(0.25) == "0.25");
  CHECK(corral::format_sample_value(1.0 / 0.0) == "+Inf");
}

TEST_CASE("a family has HELP and TYPE before its samples") {
  corral::Exposition e;
  e.family("x_total", "counter", "Things\nand \\ more.");
  e.sample("x_total", {{"pool", "a\"b"}}, std::uint64_t(3));
  CHECK(e.text() ==
        "# HELP x_total Things\\nand \\\\ more.\n# TYPE x_total counter\nx_total{pool=\"a\\\"b\"} "
        "3\n");
}

TEST_CASE("the metrics carry PRODUCT.md's names, labels and values") {
  auto text = corral::render_metrics(one_pool());
  CHECK(has_line(text, R"(corral_build_info{version="0.1.0",commit="abc"} 1)"));
  CHECK(has_line(text, "corral_generation 3"));
  CHECK(has_line(text, R"(corral_reloads_total{result="ok"} 2)"));
  CHECK(has_line(text, R"(corral_reloads_total{result="rejected"} 1)"));
  CHECK(has_line(text, R"(corral_upgrades_total{result="failed"} 0)"));
  CHECK(has_line(text, R"(corral_workers{pool="web",state="busy"} 3)"));
  CHECK(has_line(text, R"(corral_workers{pool="web",state="running"} 0)"));
  CHECK(has_line(text, R"(corral_pool_min_spare{pool="web"} 2)"));
  CHECK(has_line(text, R"(corral_pool_max_spare{pool="web"} 8)"));
  CHECK(has_line(text, R"(corral_pool_max_workers{pool="web"} 64)"));
  CHECK(has_line(text, R"(corral_pool_max_reached_total{pool="web"} 0)"));
  CHECK(has_line(text, R"(corral_pool_backoff_active{pool="web"} 0)"));
  CHECK(has_line(text, R"(corral_pool_connections_accepted_total{pool="web"} 123)"));
  CHECK(has_line(text, R"(corral_worker_spawns_total{pool="web"} 9)"));
  CHECK(has_line(text, R"(corral_worker_exits_total{pool="web",reason="crash"} 4)"));
  CHECK(has_line(text, R"(corral_worker_exits_total{pool="web",reason="stuck_lock"} 0)"));
  CHECK(has_line(text, R"(corral_listener_queue_length{pool="web",listener="127.0.0.1:8080"} 5)"));
  CHECK(has_line(text,
                 R"(corral_listener_queue_capacity{pool="web",listener="127.0.0.1:8080"} 1024)"));
  CHECK(has_line(text, R"(corral_listener_queue_peak{pool="web",listener="127.0.0.1:8080"} 7)"));
  CHECK(text.find("udp:x") == std::string::npos);  // no queue the kernel told us of
  CHECK(has_line(text, R"(corral_slot_requests_total{pool="web",slot="0"} 17)"));
  CHECK(has_line(text, R"(corral_slot_state_seconds{pool="web",slot="0"} 4.25)"));
  CHECK(has_line(text, R"(corral_slot_resident_memory_bytes{pool="web",slot="0"} 1048576)"));
  CHECK(text.find(R"(corral_slot_resident_memory_bytes{pool="web",slot="1"})") ==
        std::string::npos);
  // Never Prometheus's own target labels, never a pid.
  CHECK(text.find("job=") == std::string::npos);
  CHECK(text.find("instance=") == std::string::npos);
  CHECK(text.find("pid=") == std::string::npos);
}

TEST_CASE("per-listener accepts, refusals and OOM kills per slot") {
  auto s = one_pool();
  auto& p = s.pools[0];
  p.listener_accepted.push_back({"127.0.0.1:8080", 40});
  p.listener_accepted.push_back({"unix:/run/a b\"c.sock", 2});
  p.counters.refused_folded = 3;
  p.refused_live = 1;
  p.slot_oom_kills = {{0, 0}, {5, 2}};
  auto text = corral::render_metrics(s);
  CHECK(has_line(text, "# TYPE corral_listener_connections_accepted_total counter"));
  CHECK(has_line(
      text,
      R"(corral_listener_connections_accepted_total{pool="web",listener="127.0.0.1:8080"} 40)"));
  CHECK(has_line(
      text,
      R"(corral_listener_connections_accepted_total{pool="web",listener="unix:/run/a b\"c.sock"} 2)"));
  CHECK(has_line(text, R"(corral_pool_connections_refused_total{pool="web"} 4)"));
  CHECK(has_line(text, "# TYPE corral_slot_oom_kills_total counter"));
  CHECK(has_line(text, R"(corral_slot_oom_kills_total{pool="web",slot="0"} 0)"));
  CHECK(has_line(text, R"(corral_slot_oom_kills_total{pool="web",slot="5"} 2)"));
  // No worker reported per listener: no series (the family alone).
  auto none = corral::render_metrics(one_pool());
  CHECK(none.find("corral_listener_connections_accepted_total{") == std::string::npos);
}

TEST_CASE("counters from lying slots saturate instead of wrapping") {
  CHECK(corral::saturating_add(1, 2) == 3);
  CHECK(corral::saturating_add(~0ULL, 1) == ~0ULL);
  CHECK(corral::saturating_add(~0ULL - 1, ~0ULL - 1) == ~0ULL);
  auto s = one_pool();
  s.pools[0].counters.accepted_folded = ~0ULL - 5;
  s.pools[0].accepted_live = 100;
  auto text = corral::render_metrics(s);
  CHECK(
      has_line(text, R"(corral_pool_connections_accepted_total{pool="web"} 18446744073709551615)"));
}

TEST_CASE("every exit reason of PRODUCT.md is a series, zero or not") {
  auto text = corral::render_metrics(one_pool());
  for (const char* r : {"normal", "max_requests", "max_lifetime", "busy_timeout", "start_timeout",
                        "memory", "oom", "signal", "crash", "failed_start", "stuck_lock"}) {
    CHECK(text.find(std::string("reason=\"") + r + "\"") != std::string::npos);
  }
}

TEST_CASE("process_* appear only when read (never in the textfile)") {
  auto s = one_pool();
  CHECK(corral::render_metrics(s).find("process_") == std::string::npos);
  s.process = corral::read_process_sample();
  REQUIRE(s.process.valid);
  CHECK(s.process.resident_bytes > 0);
  CHECK(s.process.open_fds >= 3);
  CHECK(s.process.start_time_seconds > 1.0e9);
  auto text = corral::render_metrics(s);
  CHECK(text.find("# TYPE process_cpu_seconds_total counter") != std::string::npos);
  CHECK(text.find("\nprocess_open_fds ") != std::string::npos);
}

TEST_CASE("a process's resident memory from /proc") {
  auto rss = corral::resident_bytes_of(static_cast<int>(::getpid()));
  REQUIRE(rss.has_value());
  CHECK(*rss > 0);
  CHECK_FALSE(corral::resident_bytes_of(0x7ffffff0).has_value());
}
