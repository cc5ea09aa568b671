#include "listen/address.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/un.h>

#include <algorithm>
#include <charconv>
#include <cstring>

#include "common/error.h"

namespace corral {
namespace {

[[noreturn]] void bad_address(std::string_view text, const std::string& why) {
  throw ConfigError("invalid listen address \"" + std::string(text) + "\": " + why);
}

std::uint16_t parse_port(std::string_view text, std::string_view port) {
  if (port.empty()) bad_address(text, "the port is missing (write e.g. 127.0.0.1:8080)");
  unsigned value = 0;
  auto [ptr, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if ((ec != std::errc() && ec != std::errc::result_out_of_range) ||
      ptr != port.data() + port.size())
    bad_address(text, "the port \"" + std::string(port) + "\" is not a number");
  // A port too large even for `unsigned` is out of range, not "not a number".
  if (ec == std::errc::result_out_of_range || value > 65535)
    bad_address(text, "the port must be between 0 and 65535");
  return static_cast<std::uint16_t>(value);
}

bool is_ipv4(const std::string& host) {
  in_addr a{};
  return inet_pton(AF_INET, host.c_str(), &a) == 1;
}
bool is_ipv6(const std::string& host) {
  in6_addr a{};
  return inet_pton(AF_INET6, host.c_str(), &a) == 1;
}

}  // namespace

ListenAddress parse_listen_address(std::string_view text) {
  if (text.empty()) bad_address(text, "empty");
  if (text.starts_with("unix:") || text.starts_with("unix-dgram:")) {
    const bool datagram = text.starts_with("unix-dgram:");
    std::string path(text.substr(datagram ? 11 : 5));
    if (path.empty()) bad_address(text, "the socket path is missing");
    if (path.find('\0') != std::string::npos) bad_address(text, "the path contains a NUL byte");
    if (path.front() == '@') {
      // The abstract namespace (unix(7)): sun_path[0] is NUL, the name follows.
      std::string name = path.substr(1);
      if (name.empty()) bad_address(text, "the abstract socket name after '@' is missing");
      if (name.size() > sizeof(sockaddr_un::sun_path) - 1)
        bad_address(text, "the abstract name is longer than " +
                              std::to_string(sizeof(sockaddr_un::sun_path) - 1) + " bytes");
      return UnixAddress{name, true, datagram};
    }
    if (path.size() >= sizeof(sockaddr_un::sun_path))
      bad_address(text, "the path is longer than " +
                            std::to_string(sizeof(sockaddr_un::sun_path) - 1) +
                            " bytes; choose a shorter one");
    return UnixAddress{path, false, datagram};
  }
  if (text.starts_with("udp:")) {
    auto rest = text.substr(4);
    if (rest.starts_with("unix") || rest.starts_with("udp:") || rest.starts_with("systemd:"))
      bad_address(text, "write udp:HOST:PORT or udp:[IPv6]:PORT");
    ListenAddress inner;
    try {
      inner = parse_listen_address(rest);
    } catch (const ConfigError& e) {
      throw ConfigError(std::string(e.what()).replace(0, 0, "udp: "));
    }
    auto tcp = std::get<TcpAddress>(inner);
    tcp.datagram = true;
    return tcp;
  }
  if (text.starts_with("systemd:")) {
    std::string name(text.substr(8));
    if (name.empty())
      bad_address(text, "the name is missing (write systemd:NAME, as in FileDescriptorName=)");
    if (name.find(':') != std::string::npos) bad_address(text, "a socket name may not contain ':'");
    return SystemdAddress{name};
  }
  if (text.front() == '[') {
    auto close = text.find(']');
    if (close == std::string_view::npos) bad_address(text, "missing ']' after the IPv6 address");
    std::string host(text.substr(1, close - 1));
    if (!is_ipv6(host)) bad_address(text, "\"" + host + "\" is not a numeric IPv6 address");
    auto rest = text.substr(close + 1);
    if (!rest.starts_with(":")) bad_address(text, "expected ':PORT' after ']'");
    return TcpAddress{host, parse_port(text, rest.substr(1))};
  }
  auto colon = text.rfind(':');
  if (colon == std::string_view::npos)
    bad_address(text, "expected HOST:PORT, [IPv6]:PORT, :PORT, unix:PATH or systemd:NAME");
  std::string host(text.substr(0, colon));
  if (host.find(':') != std::string::npos)
    bad_address(text, "an IPv6 address needs brackets, as in [::1]:8080");
  if (host == "*" || host == "0.0.0.0" || host.empty()) {
    // ":8080" and "*:8080" mean every address; "0.0.0.0" stays IPv4 only.
    if (host != "0.0.0.0") host.clear();
  } else if (host == "localhost") {
    host = "127.0.0.1";
  } else if (!is_ipv4(host)) {
    bad_address(text,
                "\"" + host + "\" is not a numeric IPv4 address (host names are not resolved)");
  }
  return TcpAddress{host, parse_port(text, text.substr(colon + 1))};
}

std::string to_string(const ListenAddress& address) {
  if (const auto* tcp = std::get_if<TcpAddress>(&address)) {
    const std::string proto = tcp->datagram ? "udp:" : "";
    if (tcp->host.find(':') != std::string::npos)
      return proto + "[" + tcp->host + "]:" + std::to_string(tcp->port);
    return proto + tcp->host + ":" + std::to_string(tcp->port);
  }
  if (const auto* un = std::get_if<UnixAddress>(&address))
    return (un->datagram ? "unix-dgram:" : "unix:") + std::string(un->abstract ? "@" : "") +
           un->path;
  return "systemd:" + std::get<SystemdAddress>(address).name;
}

SocketAddress to_socket_address(const ListenAddress& address) {
  SocketAddress out;
  if (const auto* tcp = std::get_if<TcpAddress>(&address)) {
    if (tcp->host.empty() || tcp->host.find(':') != std::string::npos) {
      auto* sin6 = reinterpret_cast<sockaddr_in6*>(&out.storage);
      sin6->sin6_family = AF_INET6;
      sin6->sin6_port = htons(tcp->port);
      sin6->sin6_addr = in6addr_any;
      if (!tcp->host.empty() && inet_pton(AF_INET6, tcp->host.c_str(), &sin6->sin6_addr) != 1)
        throw ConfigError("invalid IPv6 address \"" + tcp->host + "\"");
      out.length = sizeof(sockaddr_in6);
    } else {
      auto* sin = reinterpret_cast<sockaddr_in*>(&out.storage);
      sin->sin_family = AF_INET;
      sin->sin_port = htons(tcp->port);
      if (inet_pton(AF_INET, tcp->host.c_str(), &sin->sin_addr) != 1)
        throw ConfigError("invalid IPv4 address \"" + tcp->host + "\"");
      out.length = sizeof(sockaddr_in);
    }
    return out;
  }
  if (const auto* un = std::get_if<UnixAddress>(&address)) {
    auto* sun = reinterpret_cast<sockaddr_un*>(&out.storage);
    sun->sun_family = AF_UNIX;
    if (un->abstract) {
      // No trailing NUL: every byte of the length is part of the name (unix(7)).
      if (un->path.size() + 1 > sizeof(sun->sun_path))
        throw ConfigError("abstract unix socket name too long: " + un->path);
      std::memcpy(sun->sun_path + 1, un->path.data(), un->path.size());
      out.length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + un->path.size());
      return out;
    }
    if (un->path.size() >= sizeof(sun->sun_path))
      throw ConfigError("unix socket path too long: " + un->path);
    std::memcpy(sun->sun_path, un->path.data(), un->path.size());
    out.length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + un->path.size() + 1);
    return out;
  }
  throw ConfigError("systemd:" + std::get<SystemdAddress>(address).name +
                    " has no socket address of its own");
}

bool split_socket_address(const sockaddr* sa, socklen_t length, std::string& host,
                          std::uint16_t& port) {
  char buf[INET6_ADDRSTRLEN] = {};
  if (sa->sa_family == AF_INET && length >= static_cast<socklen_t>(sizeof(sockaddr_in))) {
    const auto* sin = reinterpret_cast<const sockaddr_in*>(sa);
    inet_ntop(AF_INET, &sin->sin_addr, buf, sizeof buf);
    host = buf;
    port = ntohs(sin->sin_port);
    return true;
  }
  if (sa->sa_family == AF_INET6 && length >= static_cast<socklen_t>(sizeof(sockaddr_in6))) {
    const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(sa);
    if (IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr)) {
      inet_ntop(AF_INET, &sin6->sin6_addr.s6_addr[12], buf, sizeof buf);
    } else {
      inet_ntop(AF_INET6, &sin6->sin6_addr, buf, sizeof buf);
    }
    host = buf;
    port = ntohs(sin6->sin6_port);
    return true;
  }
  return false;
}

std::string format_socket_address(const sockaddr* sa, socklen_t length) {
  std::string host;
  std::uint16_t port = 0;
  if (split_socket_address(sa, length, host, port)) {
    if (host.find(':') != std::string::npos) return "[" + host + "]:" + std::to_string(port);
    return host + ":" + std::to_string(port);
  }
  if (sa->sa_family == AF_UNIX) {
    const auto* sun = reinterpret_cast<const sockaddr_un*>(sa);
    auto max = static_cast<size_t>(length) > offsetof(sockaddr_un, sun_path)
                   ? static_cast<size_t>(length) - offsetof(sockaddr_un, sun_path)
                   : 0;
    max = std::min(max, sizeof sun->sun_path);
    if (max >= 1 && sun->sun_path[0] == '\0') {
      // Abstract: the name is every byte after the NUL, shown as systemd writes it.
      std::string name(sun->sun_path + 1, max - 1);
      for (auto& c : name) {
        if (c == '\0') c = '@';
      }
      return "@" + name;
    }
    return "unix:" + std::string(sun->sun_path, strnlen(sun->sun_path, max));
  }
  return "unknown";
}

bool is_datagram(const ListenAddress& address) {
  if (const auto* tcp = std::get_if<TcpAddress>(&address)) return tcp->datagram;
  if (const auto* un = std::get_if<UnixAddress>(&address)) return un->datagram;
  return false;
}

}  // namespace corral
