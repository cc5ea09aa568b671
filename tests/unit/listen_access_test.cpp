// lib/listen/access: allow:/deny: parsing, the decision, and the BPF socket filter, which
// must decide as access_allows does (checked on real UDP sockets on loopback, from
// several source addresses of 127.0.0.0/8 and ::1).
#include "listen/access.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <doctest/doctest.h>

#include <cstring>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/unique_fd.h"

namespace {

using corral::AccessRules;
using corral::parse_cidr;

std::string error_of(const std::string& text) {
  try {
    (void)parse_cidr(text);
  } catch (const corral::ConfigError& e) {
    return e.what();
  }
  return "";
}

AccessRules rules(const std::vector<std::string>& allow, const std::vector<std::string>& deny) {
  AccessRules r;
  for (const auto& a : allow) r.allow.push_back(parse_cidr(a));
  for (const auto& d : deny) r.deny.push_back(parse_cidr(d));
  return r;
}

sockaddr_in6 peer6(const char* host) {
  sockaddr_in6 sin6{};
  sin6.sin6_family = AF_INET6;
  REQUIRE(inet_pton(AF_INET6, host, &sin6.sin6_addr) == 1);
  return sin6;
}
sockaddr_in peer4(const char* host) {
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  REQUIRE(inet_pton(AF_INET, host, &sin.sin_addr) == 1);
  return sin;
}
bool allows(const AccessRules& r, const char* host) {
  if (std::strchr(host, ':') != nullptr) {
    auto p = peer6(host);
    return corral::access_allows(r, reinterpret_cast<sockaddr*>(&p), sizeof p);
  }
  auto p = peer4(host);
  return corral::access_allows(r, reinterpret_cast<sockaddr*>(&p), sizeof p);
}

bool have_ipv6_loopback() {
  corral::UniqueFd s(::socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!s) return false;
  auto a = peer6("::1");
  return ::bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
}

// A UDP socket bound to `host` port 0 (dual stack for "::"), and its port.
corral::UniqueFd udp_bound(const char* host, std::uint16_t& port) {
  const bool v6 = std::strchr(host, ':') != nullptr;
  corral::UniqueFd s(::socket(v6 ? AF_INET6 : AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  REQUIRE(s);
  sockaddr_storage ss{};
  socklen_t len = 0;
  if (v6) {
    int zero = 0;
    ::setsockopt(s.get(), IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    auto a = peer6(host);
    std::memcpy(&ss, &a, sizeof a);
    len = sizeof a;
  } else {
    auto a = peer4(host);
    std::memcpy(&ss, &a, sizeof a);
    len = sizeof a;
  }
  REQUIRE(::bind(s.get(), reinterpret_cast<sockaddr*>(&ss), len) == 0);
  len = sizeof ss;
  REQUIRE(::getsockname(s.get(), reinterpret_cast<sockaddr*>(&ss), &len) == 0);
  port = ntohs(v6 ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                  : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  return s;
}

void send_from(const char* source, const char* dest, std::uint16_t port) {
  std::uint16_t unused = 0;
  auto s = udp_bound(source, unused);
  const bool v6 = std::strchr(dest, ':') != nullptr;
  if (v6) {
    auto a = peer6(dest);
    a.sin6_port = htons(port);
    REQUIRE(::sendto(s.get(), "x", 1, 0, reinterpret_cast<sockaddr*>(&a), sizeof a) == 1);
  } else {
    auto a = peer4(dest);
    a.sin_port = htons(port);
    REQUIRE(::sendto(s.get(), "x", 1, 0, reinterpret_cast<sockaddr*>(&a), sizeof a) == 1);
  }
}

// Whether a datagram from `source` reaches a socket on `listen_host` carrying the filter.
// A marker sent after it, from the same source to an unfiltered twin, tells when it
// would have arrived (loopback delivers in order).
bool filter_lets_in(const AccessRules& r, const char* listen_host, const char* source) {
  std::uint16_t port = 0;
  std::uint16_t twin_port = 0;
  auto filtered = udp_bound(listen_host, port);
  auto twin = udp_bound(listen_host, twin_port);
  auto applied = corral::apply_access_filter(filtered.get(), r);
  REQUIRE_MESSAGE(applied.ok(), (applied.ok() ? "" : applied.error().to_string()));
  const char* dest = std::strchr(source, ':') != nullptr ? "::1" : "127.0.0.1";
  send_from(source, dest, port);
  send_from(source, dest, twin_port);
  pollfd pfd{twin.get(), POLLIN, 0};
  REQUIRE(::poll(&pfd, 1, 5000) == 1);
  char buf[8];
  return ::recv(filtered.get(), buf, sizeof buf, MSG_DONTWAIT) == 1;
}

}  // namespace

TEST_CASE("address rules: parsing and canonical text") {
  CHECK(to_string(parse_cidr("10.0.0.0/8")) == "10.0.0.0/8");
  CHECK(to_string(parse_cidr("192.168.1.7")) == "192.168.1.7/32");
  CHECK(to_string(parse_cidr("::1")) == "::1/128");
  CHECK(to_string(parse_cidr("2001:db8::/32")) == "2001:db8::/32");
  CHECK(to_string(parse_cidr("0.0.0.0/0")) == "0.0.0.0/0");
  // IPv4-mapped IPv6 is the IPv4 network it stands for.
  CHECK(to_string(parse_cidr("::ffff:10.0.0.0/104")) == "10.0.0.0/8");
  CHECK(to_string(parse_cidr("::ffff:127.0.0.1")) == "127.0.0.1/32");
  CHECK(error_of("10.0.0.1/8").find("the network is 10.0.0.0/8") != std::string::npos);
  CHECK(error_of("10.0.0.0/33").find("at most 32") != std::string::npos);
  CHECK(error_of("::/129").find("at most 128") != std::string::npos);
  CHECK(error_of("10.0.0.0/").find("must be a number") != std::string::npos);
  CHECK(error_of("10.0.0.0/-1").find("must be a number") != std::string::npos);
  CHECK(error_of("localhost").find("not a numeric") != std::string::npos);
  CHECK(error_of("").find("empty") != std::string::npos);
  CHECK(error_of("10.").find("not a numeric") != std::string::npos);
}

TEST_CASE("address rules: longest prefix wins, deny on a tie, allow refuses the rest") {
  auto r = rules({"10.0.0.0/8"}, {"10.1.0.0/16"});
  CHECK(allows(r, "10.2.3.4"));
  CHECK_FALSE(allows(r, "10.1.2.3"));
  CHECK_FALSE(allows(r, "11.0.0.1"));  // a non-empty allow refuses the unmatched
  r = rules({"10.1.2.0/24"}, {"10.0.0.0/8"});
  CHECK(allows(r, "10.1.2.9"));
  CHECK_FALSE(allows(r, "10.1.3.9"));
  r = rules({"10.0.0.0/8"}, {"10.0.0.0/8"});
  CHECK_FALSE(allows(r, "10.0.0.1"));  // tie: deny
  r = rules({}, {"192.168.0.0/16"});
  CHECK(allows(r, "10.0.0.1"));  // deny only: the rest is let in
  CHECK_FALSE(allows(r, "192.168.7.7"));
  // IPv4-mapped peers (a dual-stack socket's IPv4 clients) match IPv4 rules, and IPv6
  // rules do not stand for IPv4 peers.
  r = rules({"127.0.0.2", "::1"}, {});
  CHECK(allows(r, "::ffff:127.0.0.2"));
  CHECK_FALSE(allows(r, "::ffff:127.0.0.1"));
  CHECK(allows(r, "::1"));
  CHECK_FALSE(allows(r, "::2"));
  r = rules({}, {"::/0"});
  CHECK(allows(r, "::ffff:10.0.0.1"));
  CHECK_FALSE(allows(r, "2001:db8::1"));
  CHECK(allows(AccessRules{}, "10.0.0.1"));
}

TEST_CASE("address rules: the acceptor's encoding is in decision order") {
  auto r = rules({"10.0.0.0/8", "::1"}, {"10.1.0.0/16", "10.0.0.0/8"});
  CHECK(corral::encode_access(r) == "D,+::1/128,-10.1.0.0/16,-10.0.0.0/8,+10.0.0.0/8");
  CHECK(corral::encode_access(rules({}, {"127.0.0.1"})) == "A,-127.0.0.1/32");
  CHECK(corral::encode_access_list({AccessRules{}, AccessRules{}}).empty());
  CHECK(corral::encode_access_list({AccessRules{}, rules({"::1"}, {})}) == "A D,+::1/128");
}

TEST_CASE("address rules: the BPF filter decides as access_allows does") {
  const std::vector<AccessRules> sets = {
      rules({"127.0.0.0/8"}, {"127.0.0.1"}),
      rules({"127.0.0.2", "127.0.0.3/32"}, {"127.0.0.3/32"}),
      rules({}, {"127.0.0.0/30"}),
      rules({"127.0.0.4/30", "::1"}, {}),
      rules({"0.0.0.0/0"}, {"127.0.0.2/31", "::/0"}),
      rules({"::/1"}, {"::1"}),
      rules({"::1/128"}, {"::/0", "127.0.0.0/24"}),
  };
  const bool v6 = have_ipv6_loopback();
  for (const auto& r : sets) {
    INFO("rules: " << corral::encode_access(r));
    for (const char* source : {"127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.5"}) {
      INFO("source " << source);
      CHECK(filter_lets_in(r, "127.0.0.1", source) == allows(r, source));
      if (v6) {
        // Through a dual-stack socket the IPv4 header still carries the IPv4 source.
        CHECK(filter_lets_in(r, "::", source) == allows(r, source));
      }
    }
    if (v6) CHECK(filter_lets_in(r, "::", "::1") == allows(r, "::1"));
  }
  // Removed again: everyone.
  std::uint16_t port = 0;
  auto s = udp_bound("127.0.0.1", port);
  REQUIRE(corral::apply_access_filter(s.get(), rules({}, {"127.0.0.1"})).ok());
  REQUIRE(corral::apply_access_filter(s.get(), AccessRules{}).ok());
  REQUIRE(corral::apply_access_filter(s.get(), AccessRules{}).ok());  // none there: fine
  CHECK(filter_lets_in(AccessRules{}, "127.0.0.1", "127.0.0.1"));
}

TEST_CASE("address rules: too many for one BPF program is an error, not a crash") {
  AccessRules r;
  for (unsigned i = 0; i < 800; ++i) {
    char text[64];
    std::snprintf(text, sizeof text, "2001:db8:%x::/48", i);
    r.deny.push_back(parse_cidr(text));
  }
  CHECK_THROWS_AS((void)corral::compile_access_filter(r), corral::ConfigError);
  r.deny.resize(100);
  CHECK(corral::compile_access_filter(r).size() < 4096);
}
