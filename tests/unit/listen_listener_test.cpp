#include "listen/listener.h"

#include <doctest/doctest.h>

#include <string>

TEST_CASE("fd store names are the address behind a prefix, without ':'") {
  CHECK(corral::fd_store_name("127.0.0.1:8080") == "corral-bound.127.0.0.1_8080");
  CHECK(corral::fd_store_name("[::]:8080") == "corral-bound.[__]_8080");
  CHECK(corral::fd_store_name("unix:/run/web.sock") == "corral-bound.unix_/run/web.sock");
}

TEST_CASE("fd store names hold only what LISTEN_FDNAMES allows, at most 255 bytes") {
  auto name =
      corral::fd_store_name(std::string("unix:/tmp/a\nb\x7f\xc3\xa9") + std::string(300, 'x'));
  CHECK(name.size() == 255);
  CHECK(name.starts_with("corral-bound.unix_/tmp/a_b___"));
  for (char c : name) {
    auto u = static_cast<unsigned char>(c);
    CHECK((u >= 0x20 && u < 0x7f && c != ':'));
  }
}
