// lib/common/size: sizes in the configuration.
#include "common/size.h"

#include <doctest/doctest.h>

#include <string>

#include "common/error.h"

TEST_CASE("sizes are bytes or powers of 1024") {
  CHECK(*corral::parse_size("512", false) == 512);
  CHECK(*corral::parse_size("64KiB", false) == 64 * 1024);
  CHECK(*corral::parse_size("256MiB", false) == 256ULL << 20);
  CHECK(*corral::parse_size("2GiB", false) == 2ULL << 30);
  CHECK_FALSE(corral::parse_size("infinity", true).has_value());
  CHECK_THROWS_AS(corral::parse_size("infinity", false), corral::ConfigError);
}

TEST_CASE("K, M and G are refused with a did-you-mean") {
  try {
    corral::parse_size("64M", false);
    FAIL("64M accepted");
  } catch (const corral::ConfigError& e) {
    CHECK(e.issues().front().message.find("did you mean 64MiB?") != std::string::npos);
  }
  CHECK_THROWS_AS(corral::parse_size("1k", false), corral::ConfigError);
  CHECK_THROWS_AS(corral::parse_size("2GB", false), corral::ConfigError);
  CHECK_THROWS_AS(corral::parse_size("lots", false), corral::ConfigError);
  CHECK_THROWS_AS(corral::parse_size("99999999999TiB", false), corral::ConfigError);
  CHECK_THROWS_AS(corral::parse_size("-1", false), corral::ConfigError);
}
