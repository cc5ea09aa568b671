// lib/common/duration: every form PRODUCT.md accepts, and every error a user can hit.
#include "common/duration.h"

#include <doctest/doctest.h>

#include <string>

#include "common/error.h"

namespace {

using namespace std::chrono_literals;

// The message a user would see for `text`, or "" when it parses.
std::string error_of(const std::string& text) {
  try {
    (void)corral::parse_duration(text);
  } catch (const corral::ConfigError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("durations with a unit") {
  CHECK(corral::parse_duration("500ms") == 500ms);
  CHECK(corral::parse_duration("30s") == 30s);
  CHECK(corral::parse_duration("5m") == 5min);
  CHECK(corral::parse_duration("1h") == 1h);
  CHECK(corral::parse_duration("250us") == 250us);
  CHECK(corral::parse_duration("5min") == 5min);
  CHECK(corral::parse_duration("1.5s") == 1500ms);
}

TEST_CASE("durations combine units") {
  CHECK(corral::parse_duration("1m30s") == 90s);
  CHECK(corral::parse_duration("1h30m") == 90min);
  CHECK(corral::parse_duration("1h1m1s500ms") == 3661500ms);
}

TEST_CASE("a plain number is seconds, integer or decimal") {
  CHECK(corral::parse_duration("2") == 2s);
  CHECK(corral::parse_duration("0.5") == 500ms);
  CHECK(corral::parse_duration("30") == 30s);
}

TEST_CASE("zero is zero, which disables a timeout") {
  CHECK(corral::parse_duration("0") == corral::Duration::zero());
  CHECK(corral::parse_duration("0s") == corral::Duration::zero());
  CHECK(corral::parse_duration("0ms") == corral::Duration::zero());
}

TEST_CASE("an empty duration is rejected") {
  CHECK_THROWS_AS(corral::parse_duration(""), corral::ConfigError);
  auto msg = error_of("");
  CHECK(msg.find("invalid duration \"\"") != std::string::npos);
  CHECK(msg.find("empty") != std::string::npos);
}

TEST_CASE("an unknown unit is rejected and named") {
  auto msg = error_of("5x");
  CHECK(msg ==
        "invalid duration \"5x\": unknown unit \"x\" (write e.g. 500ms, 30s, 5m, 1h, 1m30s, or a "
        "number of seconds)");
  CHECK(error_of("5sec").find("unknown unit \"sec\"") != std::string::npos);
}

TEST_CASE("a unit without a number is rejected") {
  auto msg = error_of("ms");
  CHECK(msg.find("\"ms\"") != std::string::npos);
  CHECK(msg.find("expected a number") != std::string::npos);
  msg = error_of("s5");
  CHECK(msg.find("\"s5\"") != std::string::npos);
  CHECK(msg.find("expected a number") != std::string::npos);
}

TEST_CASE("a malformed number is rejected") {
  auto msg = error_of("1.2.3s");
  CHECK(msg.find("\"1.2.3s\"") != std::string::npos);
  CHECK(msg.find("malformed number") != std::string::npos);
  CHECK(error_of(".s").find("malformed number") != std::string::npos);
}

TEST_CASE("a negative duration is rejected") {
  auto msg = error_of("-5s");
  CHECK(msg.find("\"-5s\"") != std::string::npos);
  CHECK_FALSE(msg.empty());
  CHECK_FALSE(error_of("-1").empty());
}

TEST_CASE("a number after a combination needs its unit") {
  auto msg = error_of("1m30");
  CHECK(msg.find("\"1m30\"") != std::string::npos);
  CHECK(msg.find("a unit is missing") != std::string::npos);
}

TEST_CASE("spaces are not part of a duration") {
  CHECK(error_of("5 s").find("\"5 s\"") != std::string::npos);
  CHECK_FALSE(error_of(" 5s").empty());
}

TEST_CASE("a duration too long to represent is rejected, not wrapped") {
  auto msg = error_of("999999999999h");
  CHECK(msg.find("\"999999999999h\"") != std::string::npos);
  CHECK(msg.find("too long") != std::string::npos);
  // More digits than a double holds: must still be a ConfigError naming the text,
  // not an escaping std::out_of_range.
  std::string huge = "1" + std::string(400, '0') + "s";
  CHECK_THROWS_AS(corral::parse_duration(huge), corral::ConfigError);
  CHECK(error_of(huge).find("too long") != std::string::npos);
}

TEST_CASE("format_duration gives the shortest exact form") {
  CHECK(corral::format_duration(corral::Duration::zero()) == "0s");
  CHECK(corral::format_duration(500ms) == "500ms");
  CHECK(corral::format_duration(30s) == "30s");
  CHECK(corral::format_duration(90s) == "1m30s");
  CHECK(corral::format_duration(1h) == "1h");
  CHECK(corral::format_duration(3661s) == "1h1m1s");
  CHECK(corral::format_duration(250us) == "250us");
}

TEST_CASE("format_duration round-trips through parse_duration") {
  for (corral::Duration d :
       {corral::Duration(0), corral::Duration(1500ns), corral::Duration(1500us),
        corral::Duration(1500ms), corral::Duration(90s), corral::Duration(25h)}) {
    CAPTURE(d.count());
    CHECK(corral::parse_duration(corral::format_duration(d)) == d);
  }
}
