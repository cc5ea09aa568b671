// Listening addresses as users write them.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <variant>

namespace corral {

/// host is "" for all addresses (":8080"), else a numeric IPv4 or IPv6 address.
/// `datagram`: "udp:HOST:PORT" (plain mode), a UDP socket.
struct TcpAddress {
  std::string host;
  std::uint16_t port = 0;
  bool datagram = false;
  bool operator==(const TcpAddress&) const = default;
};
/// `abstract`: "unix:@name", a name in the abstract namespace (no file; `path` is the name
/// without the '@'). `datagram`: "unix-dgram:PATH", a SOCK_DGRAM socket (plain mode).
struct UnixAddress {
  std::string path;
  bool abstract = false;
  bool datagram = false;
  bool operator==(const UnixAddress&) const = default;
};
/// Every socket systemd passed whose LISTEN_FDNAMES entry is `name`.
struct SystemdAddress {
  std::string name;
  bool operator==(const SystemdAddress&) const = default;
};
using ListenAddress = std::variant<TcpAddress, UnixAddress, SystemdAddress>;

/// Parses "127.0.0.1:8080", "[::1]:8080", ":8080", "unix:/run/x.sock", "unix:@name",
/// "udp:127.0.0.1:5353", "udp:[::1]:5353", "unix-dgram:/run/x.dgram" or "systemd:NAME".
/// Pure (no syscalls, no name resolution). Throws ConfigError (without position)
/// whose message names the text and the fix.
ListenAddress parse_listen_address(std::string_view text);

/// The canonical text of an address ("127.0.0.1:8080", "[::1]:8080", ":8080", "unix:/p",
/// "unix:@name", "udp:127.0.0.1:53", "unix-dgram:/p").
std::string to_string(const ListenAddress& address);

/// A socket address with its length.
struct SocketAddress {
  sockaddr_storage storage{};
  socklen_t length = 0;
  [[nodiscard]] int family() const { return storage.ss_family; }
  [[nodiscard]] const sockaddr* get() const { return reinterpret_cast<const sockaddr*>(&storage); }
};

/// The sockaddr to bind for a TCP or unix address (":port" is the IPv6 any address).
/// Pure. Throws ConfigError for a systemd address or a unix path that does not fit.
SocketAddress to_socket_address(const ListenAddress& address);

/// "127.0.0.1:8080", "[::1]:8080", "unix:/path", "@name" for an abstract unix socket
/// (IPv4-mapped IPv6 shown as IPv4).
std::string format_socket_address(const sockaddr* sa, socklen_t length);

/// Whether the address is a datagram one (udp:, unix-dgram:).
bool is_datagram(const ListenAddress& address);

/// Numeric host and port of an IP socket address (IPv4-mapped IPv6 as IPv4; IPv6
/// without brackets). Returns false for other families.
bool split_socket_address(const sockaddr* sa, socklen_t length, std::string& host,
                          std::uint16_t& port);

}  // namespace corral
