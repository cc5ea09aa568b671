// lib/listen/address: the addresses users write (PRODUCT.md), their canonical text,
// and the text of the socket addresses corral shows (status, REMOTE_ADDR, logs).
#include "listen/address.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/un.h>

#include <doctest/doctest.h>

#include <cstddef>
#include <cstring>
#include <string>

#include "common/error.h"

namespace {

// The message a user would see for `text`, or "" when it parses.
std::string error_of(const std::string& text) {
  try {
    (void)corral::parse_listen_address(text);
  } catch (const corral::ConfigError& e) {
    return e.what();
  }
  return "";
}

corral::TcpAddress tcp(const std::string& text) {
  auto a = corral::parse_listen_address(text);
  REQUIRE(std::holds_alternative<corral::TcpAddress>(a));
  return std::get<corral::TcpAddress>(a);
}

sockaddr_in ipv4(const char* host, std::uint16_t port) {
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_port = htons(port);
  REQUIRE(inet_pton(AF_INET, host, &sin.sin_addr) == 1);
  return sin;
}

sockaddr_in6 ipv6(const char* host, std::uint16_t port) {
  sockaddr_in6 sin6{};
  sin6.sin6_family = AF_INET6;
  sin6.sin6_port = htons(port);
  REQUIRE(inet_pton(AF_INET6, host, &sin6.sin6_addr) == 1);
  return sin6;
}

}  // namespace

TEST_CASE("an IPv4 address and port") {
  auto a = tcp("127.0.0.1:8080");
  CHECK(a.host == "127.0.0.1");
  CHECK(a.port == 8080);
  CHECK(tcp("0.0.0.0:80").host == "0.0.0.0");  // stays IPv4 only
  CHECK(tcp("10.1.2.3:0").port == 0);
  CHECK(tcp("10.1.2.3:65535").port == 65535);
}

TEST_CASE("an IPv6 address in brackets") {
  auto a = tcp("[::1]:8080");
  CHECK(a.host == "::1");
  CHECK(a.port == 8080);
  CHECK(tcp("[2001:db8::5]:443").host == "2001:db8::5");
  CHECK(tcp("[::]:80").host == "::");
}

TEST_CASE(":PORT and *:PORT mean every address") {
  auto a = tcp(":8080");
  CHECK(a.host.empty());
  CHECK(a.port == 8080);
  auto b = tcp("*:8080");
  CHECK(b.host.empty());
  CHECK(b.port == 8080);
}

TEST_CASE("localhost is the IPv4 loopback, with no name lookup") {
  auto a = tcp("localhost:80");
  CHECK(a.host == "127.0.0.1");
  CHECK(a.port == 80);
}

TEST_CASE("unix: and systemd: addresses") {
  auto u = corral::parse_listen_address("unix:/run/web.sock");
  REQUIRE(std::holds_alternative<corral::UnixAddress>(u));
  CHECK(std::get<corral::UnixAddress>(u).path == "/run/web.sock");

  auto s = corral::parse_listen_address("systemd:web-https");
  REQUIRE(std::holds_alternative<corral::SystemdAddress>(s));
  CHECK(std::get<corral::SystemdAddress>(s).name == "web-https");
}

TEST_CASE("to_string gives the canonical text, which parses back to the same address") {
  for (const char* text : {"127.0.0.1:8080", "[::1]:8080", ":8080", "0.0.0.0:80",
                           "unix:/run/web.sock", "systemd:web-https", "[2001:db8::5]:443"}) {
    CAPTURE(text);
    auto a = corral::parse_listen_address(text);
    CHECK(corral::to_string(a) == text);
    CHECK(corral::parse_listen_address(corral::to_string(a)) == a);
  }
  CHECK(corral::to_string(corral::parse_listen_address("*:8080")) == ":8080");
  CHECK(corral::to_string(corral::parse_listen_address("localhost:80")) == "127.0.0.1:80");
}

TEST_CASE("a bare IPv6 address is rejected: brackets are required") {
  CHECK_THROWS_AS(corral::parse_listen_address("::1:8080"), corral::ConfigError);
  auto msg = error_of("::1:8080");
  CHECK(msg ==
        "invalid listen address \"::1:8080\": an IPv6 address needs brackets, as in [::1]:8080");
}

TEST_CASE("a missing port is rejected") {
  auto msg = error_of("127.0.0.1:");
  CHECK(msg.find("\"127.0.0.1:\"") != std::string::npos);
  CHECK(msg.find("port is missing") != std::string::npos);
  msg = error_of("127.0.0.1");
  CHECK(msg.find("\"127.0.0.1\"") != std::string::npos);
  CHECK(msg.find("HOST:PORT") != std::string::npos);
  msg = error_of("[::1]");
  CHECK(msg.find("\"[::1]\"") != std::string::npos);
  CHECK(msg.find("':PORT'") != std::string::npos);
  CHECK(error_of("[::1]:").find("port is missing") != std::string::npos);
  CHECK_FALSE(error_of("").empty());
}

TEST_CASE("a port above 65535 is rejected") {
  auto msg = error_of("127.0.0.1:65536");
  CHECK(msg == "invalid listen address \"127.0.0.1:65536\": the port must be between 0 and 65535");
  // Too large even for an unsigned: still a range error, not "not a number".
  msg = error_of(":99999999999");
  CHECK(msg.find("\":99999999999\"") != std::string::npos);
  CHECK(msg.find("between 0 and 65535") != std::string::npos);
}

TEST_CASE("a non-numeric port is rejected") {
  auto msg = error_of("127.0.0.1:http");
  CHECK(msg == "invalid listen address \"127.0.0.1:http\": the port \"http\" is not a number");
  CHECK(error_of("127.0.0.1:-1").find("is not a number") != std::string::npos);
  CHECK(error_of("127.0.0.1:80x").find("is not a number") != std::string::npos);
  CHECK(error_of("[::1]:abc").find("is not a number") != std::string::npos);
}

TEST_CASE("host names are not resolved") {
  auto msg = error_of("example.com:80");
  CHECK(msg.find("\"example.com:80\"") != std::string::npos);
  CHECK(msg.find("host names are not resolved") != std::string::npos);
  CHECK_FALSE(error_of("1.2.3:80").empty());
  CHECK_FALSE(error_of("256.1.1.1:80").empty());
}

TEST_CASE("an IPv6 address in brackets must be numeric and closed") {
  auto msg = error_of("[::1:8080");
  CHECK(msg.find("\"[::1:8080\"") != std::string::npos);
  CHECK(msg.find("missing ']'") != std::string::npos);
  msg = error_of("[example.com]:80");
  CHECK(msg.find("not a numeric IPv6 address") != std::string::npos);
  CHECK_FALSE(error_of("[127.0.0.1]:80").empty());
  CHECK_FALSE(error_of("[]:80").empty());
}

TEST_CASE("a unix socket path must fit in sun_path") {
  std::string longest = "/" + std::string(sizeof(sockaddr_un::sun_path) - 2, 'a');  // 107 bytes
  REQUIRE(longest.size() == 107);
  auto ok = corral::parse_listen_address("unix:" + longest);
  CHECK(std::get<corral::UnixAddress>(ok).path == longest);

  std::string too_long = longest + "b";  // 108 bytes: no room for the terminating NUL
  auto msg = error_of("unix:" + too_long);
  CHECK(msg.find("unix:" + too_long) != std::string::npos);
  CHECK(msg.find("longer than 107 bytes") != std::string::npos);

  CHECK(error_of("unix:").find("path is missing") != std::string::npos);
}

TEST_CASE("a systemd: address needs a name without ':'") {
  auto msg = error_of("systemd:");
  CHECK(msg.find("\"systemd:\"") != std::string::npos);
  CHECK(msg.find("name is missing") != std::string::npos);
  msg = error_of("systemd:a:b");
  CHECK(msg.find("\"systemd:a:b\"") != std::string::npos);
  CHECK(msg.find("may not contain ':'") != std::string::npos);
}

TEST_CASE("to_socket_address builds what bind() needs") {
  auto v4 = corral::to_socket_address(corral::parse_listen_address("127.0.0.1:8080"));
  CHECK(v4.family() == AF_INET);
  CHECK(v4.length == sizeof(sockaddr_in));
  CHECK(corral::format_socket_address(v4.get(), v4.length) == "127.0.0.1:8080");

  // ":PORT" is one IPv6 socket on every address.
  auto any = corral::to_socket_address(corral::parse_listen_address(":8080"));
  CHECK(any.family() == AF_INET6);
  CHECK(corral::format_socket_address(any.get(), any.length) == "[::]:8080");

  auto v6 = corral::to_socket_address(corral::parse_listen_address("[::1]:9"));
  CHECK(corral::format_socket_address(v6.get(), v6.length) == "[::1]:9");

  auto un = corral::to_socket_address(corral::parse_listen_address("unix:/run/x.sock"));
  CHECK(un.family() == AF_UNIX);
  CHECK(corral::format_socket_address(un.get(), un.length) == "unix:/run/x.sock");

  CHECK_THROWS_AS(corral::to_socket_address(corral::parse_listen_address("systemd:web")),
                  corral::ConfigError);
}

TEST_CASE("format_socket_address and split_socket_address on IPv4") {
  auto sin = ipv4("192.0.2.7", 4242);
  const auto* sa = reinterpret_cast<const sockaddr*>(&sin);
  CHECK(corral::format_socket_address(sa, sizeof sin) == "192.0.2.7:4242");
  std::string host;
  std::uint16_t port = 0;
  REQUIRE(corral::split_socket_address(sa, sizeof sin, host, port));
  CHECK(host == "192.0.2.7");
  CHECK(port == 4242);
}

TEST_CASE("format_socket_address and split_socket_address on IPv6") {
  auto sin6 = ipv6("2001:db8::1", 443);
  const auto* sa = reinterpret_cast<const sockaddr*>(&sin6);
  CHECK(corral::format_socket_address(sa, sizeof sin6) == "[2001:db8::1]:443");
  std::string host;
  std::uint16_t port = 0;
  REQUIRE(corral::split_socket_address(sa, sizeof sin6, host, port));
  CHECK(host == "2001:db8::1");  // no brackets, as TCPREMOTEIP wants
  CHECK(port == 443);
}

TEST_CASE("an IPv4-mapped IPv6 address is shown as plain IPv4") {
  auto sin6 = ipv6("::ffff:192.0.2.7", 5555);
  const auto* sa = reinterpret_cast<const sockaddr*>(&sin6);
  CHECK(corral::format_socket_address(sa, sizeof sin6) == "192.0.2.7:5555");
  std::string host;
  std::uint16_t port = 0;
  REQUIRE(corral::split_socket_address(sa, sizeof sin6, host, port));
  CHECK(host == "192.0.2.7");
  CHECK(port == 5555);
}

TEST_CASE("format_socket_address on unix sockets; split_socket_address refuses them") {
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  std::strcpy(sun.sun_path, "/run/web.sock");
  const auto* sa = reinterpret_cast<const sockaddr*>(&sun);
  auto len =
      static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + std::strlen(sun.sun_path) + 1);
  CHECK(corral::format_socket_address(sa, len) == "unix:/run/web.sock");
  // Without the terminating NUL in the length (as some kernels report).
  CHECK(corral::format_socket_address(sa, len - 1) == "unix:/run/web.sock");
  // An unnamed socket (accept() on a unix listener) has just the family.
  CHECK(corral::format_socket_address(sa, sizeof(sa_family_t)) == "unix:");

  std::string host = "unchanged";
  std::uint16_t port = 7;
  CHECK_FALSE(corral::split_socket_address(sa, len, host, port));
  CHECK(host == "unchanged");
  CHECK(port == 7);
}

TEST_CASE("a truncated IP socket address is not read past its length") {
  auto sin6 = ipv6("2001:db8::1", 443);
  const auto* sa = reinterpret_cast<const sockaddr*>(&sin6);
  std::string host;
  std::uint16_t port = 0;
  CHECK_FALSE(corral::split_socket_address(sa, sizeof(sockaddr_in), host, port));
  CHECK(corral::format_socket_address(sa, sizeof(sockaddr_in)) == "unknown");
}

TEST_CASE("datagram and abstract addresses: parsing, canonical text, socket address") {
  using corral::parse_listen_address;
  using corral::to_string;
  for (const char* text : {"udp:127.0.0.1:5353", "udp:[::1]:5353", "udp::5353", "unix:@corral",
                           "unix-dgram:/run/app.dgram", "unix-dgram:@corral"}) {
    INFO(text);
    CHECK(to_string(parse_listen_address(text)) == text);
  }
  CHECK(corral::is_datagram(parse_listen_address("udp:127.0.0.1:53")));
  CHECK(corral::is_datagram(parse_listen_address("unix-dgram:/x")));
  CHECK_FALSE(corral::is_datagram(parse_listen_address("unix:@x")));
  CHECK(error_of("udp:").find("invalid listen address") != std::string::npos);
  CHECK(error_of("udp:unix:/x").find("udp:HOST:PORT") != std::string::npos);
  CHECK(error_of("udp:example.com:53").find("not a numeric") != std::string::npos);
  CHECK(error_of("unix:@").find("name after '@' is missing") != std::string::npos);
  CHECK(error_of("unix:@" + std::string(108, 'a')).find("longer than 107") != std::string::npos);
  // The abstract name: a leading NUL, then exactly the name's bytes (no trailing NUL).
  auto sa = corral::to_socket_address(parse_listen_address("unix:@corral-x"));
  const auto* sun = reinterpret_cast<const sockaddr_un*>(&sa.storage);
  CHECK(sa.length == offsetof(sockaddr_un, sun_path) + 1 + 8);
  CHECK(sun->sun_path[0] == '\0');
  CHECK(std::string(sun->sun_path + 1, 8) == "corral-x");
  CHECK(corral::format_socket_address(sa.get(), sa.length) == "@corral-x");
}
