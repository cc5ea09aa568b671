#include "listen/access.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace corral {
namespace {

[[noreturn]] void bad_cidr(std::string_view text, const std::string& why) {
  throw ConfigError("invalid address rule \"" + std::string(text) + "\": " + why);
}

// Whether the first `prefix` bits of a and b agree.
bool prefix_matches(const std::uint8_t* a, const std::uint8_t* b, unsigned prefix) {
  unsigned full = prefix / 8;
  if (std::memcmp(a, b, full) != 0) return false;
  unsigned rest = prefix % 8;
  if (rest == 0) return true;
  auto mask = static_cast<std::uint8_t>(0xffU << (8 - rest));
  return ((a[full] ^ b[full]) & mask) == 0;
}

bool has_host_bits(const Cidr& c) {
  unsigned bytes = c.v6 ? 16 : 4;
  for (unsigned bit = c.prefix; bit < bytes * 8; ++bit) {
    if ((c.addr[bit / 8] >> (7 - bit % 8)) & 1U) return true;
  }
  return false;
}

std::uint32_t word_of(const std::array<std::uint8_t, 16>& a, unsigned i) {
  return (std::uint32_t{a[4 * i]} << 24) | (std::uint32_t{a[4 * i + 1]} << 16) |
         (std::uint32_t{a[4 * i + 2]} << 8) | std::uint32_t{a[4 * i + 3]};
}

std::uint32_t mask_of(unsigned bits) {  // the top `bits` (1..32) bits of a word
  return bits >= 32 ? 0xffffffffU : ~(0xffffffffU >> bits);
}

constexpr std::uint32_t kKeep = 0xffffffffU;  // the whole packet
constexpr std::uint32_t kDrop = 0;
// Negative offsets address the network header wherever skb->data is (linux/filter.h).
constexpr std::uint32_t kNet = static_cast<std::uint32_t>(SKF_NET_OFF);

sock_filter stmt(std::uint16_t code, std::uint32_t k) {
  return sock_filter{code, 0, 0, k};
}
sock_filter jump(std::uint16_t code, std::uint32_t k, std::uint8_t jt, std::uint8_t jf) {
  return sock_filter{code, jt, jf, k};
}

}  // namespace

Cidr parse_cidr(std::string_view text) {
  if (text.empty()) bad_cidr(text, "empty; write an address such as 10.0.0.0/8 or ::1");
  std::string host(text);
  int prefix = -1;
  if (auto slash = text.find('/'); slash != std::string_view::npos) {
    host = std::string(text.substr(0, slash));
    auto digits = text.substr(slash + 1);
    if (digits.empty() || digits.size() > 3 ||
        !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
      bad_cidr(text, "the prefix length after '/' must be a number (e.g. 10.0.0.0/8)");
    prefix = std::stoi(std::string(digits));
  }
  Cidr out;
  in_addr a4{};
  in6_addr a6{};
  if (inet_pton(AF_INET, host.c_str(), &a4) == 1) {
    std::memcpy(out.addr.data(), &a4, 4);
    if (prefix > 32) bad_cidr(text, "an IPv4 prefix length is at most 32");
    out.prefix = prefix < 0 ? 32U : static_cast<unsigned>(prefix);
  } else if (inet_pton(AF_INET6, host.c_str(), &a6) == 1) {
    if (prefix > 128) bad_cidr(text, "an IPv6 prefix length is at most 128");
    unsigned p = prefix < 0 ? 128U : static_cast<unsigned>(prefix);
    if (IN6_IS_ADDR_V4MAPPED(&a6) && p >= 96) {
      // An IPv4-mapped address is the IPv4 peer it stands for.
      std::memcpy(out.addr.data(), &a6.s6_addr[12], 4);
      out.prefix = p - 96;
    } else {
      out.v6 = true;
      std::memcpy(out.addr.data(), &a6, 16);
      out.prefix = p;
    }
  } else {
    bad_cidr(text, "\"" + host +
                       "\" is not a numeric IPv4 or IPv6 address (write e.g. 10.0.0.0/8, "
                       "192.168.1.7 or 2001:db8::/32; host names are not resolved)");
  }
  if (has_host_bits(out)) {
    Cidr network = out;
    for (unsigned bit = out.prefix; bit < (out.v6 ? 128U : 32U); ++bit)
      network.addr[bit / 8] &= static_cast<std::uint8_t>(~(1U << (7 - bit % 8)));
    bad_cidr(text, "bits are set after the first " + std::to_string(out.prefix) +
                       "; the network is " + to_string(network));
  }
  return out;
}

std::string to_string(const Cidr& cidr) {
  char buf[INET6_ADDRSTRLEN] = {};
  inet_ntop(cidr.v6 ? AF_INET6 : AF_INET, cidr.addr.data(), buf, sizeof buf);
  return std::string(buf) + "/" + std::to_string(cidr.prefix);
}

std::vector<AccessEntry> ordered(const AccessRules& rules) {
  std::vector<AccessEntry> out;
  for (const auto& c : rules.deny) out.push_back({c, true});
  for (const auto& c : rules.allow) out.push_back({c, false});
  // Stable: deny entries come first, and stay first among equal prefix lengths.
  std::stable_sort(out.begin(), out.end(), [](const AccessEntry& a, const AccessEntry& b) {
    return a.cidr.prefix > b.cidr.prefix;
  });
  return out;
}

bool access_allows(const AccessRules& rules, const sockaddr* peer, socklen_t length) {
  if (rules.empty()) return true;
  bool v6 = false;
  std::array<std::uint8_t, 16> addr{};
  if (peer->sa_family == AF_INET && length >= static_cast<socklen_t>(sizeof(sockaddr_in))) {
    std::memcpy(addr.data(), &reinterpret_cast<const sockaddr_in*>(peer)->sin_addr, 4);
  } else if (peer->sa_family == AF_INET6 &&
             length >= static_cast<socklen_t>(sizeof(sockaddr_in6))) {
    const auto& a6 = reinterpret_cast<const sockaddr_in6*>(peer)->sin6_addr;
    if (IN6_IS_ADDR_V4MAPPED(&a6)) {
      std::memcpy(addr.data(), &a6.s6_addr[12], 4);
    } else {
      v6 = true;
      std::memcpy(addr.data(), &a6, 16);
    }
  } else {
    return true;
  }
  for (const auto& e : ordered(rules)) {
    if (e.cidr.v6 == v6 && prefix_matches(e.cidr.addr.data(), addr.data(), e.cidr.prefix))
      return !e.deny;
  }
  return rules.allow.empty();
}

std::vector<sock_filter> compile_access_filter(const AccessRules& rules) {
  std::vector<sock_filter> p;
  if (rules.empty()) return p;
  const auto entries = ordered(rules);
  const std::uint32_t fallback = rules.allow.empty() ? kKeep : kDrop;
  auto verdict = [](const AccessEntry& e) { return e.deny ? kDrop : kKeep; };

  // The IP version, from the network header's first nibble.
  p.push_back(stmt(BPF_LD | BPF_B | BPF_ABS, kNet));
  p.push_back(stmt(BPF_ALU | BPF_RSH | BPF_K, 4));
  p.push_back(jump(BPF_JMP | BPF_JEQ | BPF_K, 4, 0, 1));
  const size_t to_v4_load = p.size();
  p.push_back(stmt(BPF_JMP | BPF_JA, 0));  // patched: to the IPv4 section
  p.push_back(jump(BPF_JMP | BPF_JEQ | BPF_K, 6, 1, 0));
  p.push_back(stmt(BPF_RET | BPF_K, kKeep));  // not IP: nothing to decide
  // IPv6: an IPv4-mapped source (::ffff:a.b.c.d) goes to the IPv4 rules.
  const size_t mapped_start = p.size();
  p.push_back(stmt(BPF_LD | BPF_W | BPF_ABS, kNet + 8));
  p.push_back(jump(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 0));  // jf patched
  p.push_back(stmt(BPF_LD | BPF_W | BPF_ABS, kNet + 12));
  p.push_back(jump(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 0));
  p.push_back(stmt(BPF_LD | BPF_W | BPF_ABS, kNet + 16));
  p.push_back(jump(BPF_JMP | BPF_JEQ | BPF_K, 0xffff, 0, 0));
  p.push_back(stmt(BPF_LD | BPF_W | BPF_ABS, kNet + 20));
  p.push_back(stmt(BPF_ST, 0));
  const size_t to_v4_rules = p.size();
  p.push_back(stmt(BPF_JMP | BPF_JA, 0));  // patched: to the IPv4 rules
  const size_t v6_rules = p.size();
  for (size_t i : {mapped_start + 1, mapped_start + 3, mapped_start + 5})
    p[i].jf = static_cast<std::uint8_t>(v6_rules - (i + 1));
  for (const auto& e : entries) {
    if (!e.cidr.v6) continue;
    const unsigned words = (e.cidr.prefix + 31) / 32;
    size_t length = 1;  // the ret
    for (unsigned w = 0; w < words; ++w) length += (e.cidr.prefix - 32 * w >= 32) ? 2 : 3;
    const size_t end = p.size() + length;
    for (unsigned w = 0; w < words; ++w) {
      const unsigned bits = std::min(32U, e.cidr.prefix - 32 * w);
      p.push_back(stmt(BPF_LD | BPF_W | BPF_ABS, kNet + 8 + 4 * w));
      if (bits < 32) p.push_back(stmt(BPF_ALU | BPF_AND | BPF_K, mask_of(bits)));
      const auto skip = static_cast<std::uint8_t>(end - (p.size() + 1));
      p.push_back(
          jump(BPF_JMP | BPF_JEQ | BPF_K, word_of(e.cidr.addr, w) & mask_of(bits), 0, skip));
    }
    p.push_back(stmt(BPF_RET | BPF_K, verdict(e)));
  }
  p.push_back(stmt(BPF_RET | BPF_K, fallback));
  // IPv4: the source address in M[0], then the rules.
  p[to_v4_load].k = static_cast<std::uint32_t>(p.size() - (to_v4_load + 1));
  p.push_back(stmt(BPF_LD | BPF_W | BPF_ABS, kNet + 12));
  p.push_back(stmt(BPF_ST, 0));
  p[to_v4_rules].k = static_cast<std::uint32_t>(p.size() - (to_v4_rules + 1));
  for (const auto& e : entries) {
    if (e.cidr.v6) continue;
    if (e.cidr.prefix == 0) {
      p.push_back(stmt(BPF_RET | BPF_K, verdict(e)));
      continue;
    }
    p.push_back(stmt(BPF_LD | BPF_MEM, 0));
    if (e.cidr.prefix < 32) p.push_back(stmt(BPF_ALU | BPF_AND | BPF_K, mask_of(e.cidr.prefix)));
    p.push_back(jump(BPF_JMP | BPF_JEQ | BPF_K, word_of(e.cidr.addr, 0), 0, 1));
    p.push_back(stmt(BPF_RET | BPF_K, verdict(e)));
  }
  p.push_back(stmt(BPF_RET | BPF_K, fallback));
  if (p.size() > BPF_MAXINSNS)
    throw ConfigError("the address rules need " + std::to_string(p.size()) +
                      " BPF instructions, more than the kernel's " + std::to_string(BPF_MAXINSNS) +
                      "; merge rules into shorter prefixes");
  return p;
}

Status apply_access_filter(int fd, const AccessRules& rules) {
  if (rules.empty()) {
    int dummy = 0;
    // ENOENT: there was none.
    if (::setsockopt(fd, SOL_SOCKET, SO_DETACH_FILTER, &dummy, sizeof dummy) != 0 &&
        errno != ENOENT)
      return errno_error("setsockopt SO_DETACH_FILTER");
    return Ok{};
  }
  std::vector<sock_filter> program;
  try {
    program = compile_access_filter(rules);
  } catch (const ConfigError& e) {
    return Error{0, e.what()};
  }
  sock_fprog prog{};
  prog.len = static_cast<unsigned short>(program.size());
  prog.filter = program.data();
  if (::setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog) != 0)
    return errno_error("setsockopt SO_ATTACH_FILTER");
  return Ok{};
}

std::string encode_access(const AccessRules& rules) {
  std::string out(rules.allow.empty() ? "A" : "D");
  for (const auto& e : ordered(rules)) {
    out += e.deny ? ",-" : ",+";
    out += to_string(e.cidr);
  }
  return out;
}

std::string encode_access_list(const std::vector<AccessRules>& per_listener) {
  if (std::all_of(per_listener.begin(), per_listener.end(),
                  [](const AccessRules& r) { return r.empty(); }))
    return "";
  std::string out;
  for (const auto& rules : per_listener) out += (out.empty() ? "" : " ") + encode_access(rules);
  return out;
}

}  // namespace corral
