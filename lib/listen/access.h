// Who may connect: `allow:`/`deny:` address rules, their decision, the classic BPF socket
// filter that enforces them in the kernel (prefork and plain mode), and the compact text
// that hands them to the inetd acceptor (cmd/corral-inetd).
#pragma once

#include <linux/filter.h>
#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"

namespace corral {

/// One CIDR. IPv4 (and IPv4-mapped IPv6, "::ffff:10.0.0.0/104") is kept as IPv4: the two
/// families are separate, an IPv4 rule matches IPv4 peers and IPv4-mapped IPv6 peers, an
/// IPv6 rule the other IPv6 peers.
struct Cidr {
  bool v6 = false;
  std::array<std::uint8_t, 16> addr{};  // IPv4: the first 4 bytes
  unsigned prefix = 0;                  // 0..32 (IPv4) or 0..128 (IPv6)
  bool operator==(const Cidr&) const = default;
};

/// Parses "10.0.0.0/8", "192.168.1.7" (/32), "::1" (/128), "2001:db8::/32". Pure.
/// Throws ConfigError (no position) naming the text and the fix; host bits set beyond
/// the prefix ("10.0.0.1/8") are an error.
Cidr parse_cidr(std::string_view text);
/// The canonical text ("10.0.0.0/8", "::1/128").
std::string to_string(const Cidr& cidr);

/// The rules of one listener. Both empty: everyone may connect.
struct AccessRules {
  std::vector<Cidr> allow;
  std::vector<Cidr> deny;
  [[nodiscard]] bool empty() const { return allow.empty() && deny.empty(); }
  bool operator==(const AccessRules&) const = default;
};

/// One rule in decision order (see ordered()).
struct AccessEntry {
  Cidr cidr;
  bool deny = false;
};

/// The rules in the order in which the first match decides: longest prefix first, and
/// on the same prefix length deny before allow. The family of a rule is its own, so a
/// /24 IPv4 and a /24 IPv6 never compete.
std::vector<AccessEntry> ordered(const AccessRules& rules);

/// The decision for a peer: the longest matching prefix decides, deny on a tie; a peer no
/// rule matches is refused when `allow` is non-empty, else let in. Peers that are not
/// IPv4 or IPv6 (unix sockets) are let in.
bool access_allows(const AccessRules& rules, const sockaddr* peer, socklen_t length);

/// The classic BPF program (SO_ATTACH_FILTER) that drops every packet from a refused
/// source address and keeps the others: the IP version from the network header, the
/// source address from it (SKF_NET_OFF), IPv4-mapped IPv6 sources taken as IPv4, then
/// the rules in decision order. Empty for empty rules. Throws ConfigError when the rules
/// do not fit in BPF_MAXINSNS instructions (about 300 IPv6 rules).
std::vector<sock_filter> compile_access_filter(const AccessRules& rules);

/// Attaches the filter of `rules` to socket `fd`, replacing any earlier one (no
/// SO_LOCK_FILTER, so that a reload can replace or remove it); empty rules detach it.
Status apply_access_filter(int fd, const AccessRules& rules);

/// The rules as the inetd acceptor reads them (CORRAL_ACCESS, one word per listener,
/// separated by ' '): 'A' (unmatched peers let in) or 'D' (refused), then, in decision
/// order, ",+CIDR" or ",-CIDR". "A" alone: no rules.
std::string encode_access(const AccessRules& rules);
/// The whole CORRAL_ACCESS value for listeners 0, 1, ...; "" when none has rules.
std::string encode_access_list(const std::vector<AccessRules>& per_listener);

}  // namespace corral
