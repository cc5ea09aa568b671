#include "supervisor/conventions.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/un.h>

#include <algorithm>
#include <cstring>
#include <map>

namespace corral {
namespace {

// Where the worker finds listener `index` of its job: fd 3+i, or 0 with fastcgi.
int worker_fd_of(const JobConfig& cfg, std::size_t index) {
  return cfg.compat.fastcgi ? 0 : 3 + static_cast<int>(index);
}

bool is_dual_stack(int fd, const sockaddr_storage& ss) {
  if (ss.ss_family != AF_INET6) return false;
  const auto& a6 = reinterpret_cast<const sockaddr_in6&>(ss);
  if (std::memcmp(&a6.sin6_addr, &in6addr_any, sizeof a6.sin6_addr) != 0) return false;
  int v6only = 1;
  socklen_t len = sizeof v6only;
  return ::getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &len) == 0 && v6only == 0;
}

std::string server_starter_address_of(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "";
  return server_starter_address(reinterpret_cast<const sockaddr*>(&ss), len, is_dual_stack(fd, ss));
}

void unset_env(std::vector<std::string>& env, std::string_view key) {
  std::erase_if(env, [&](const std::string& e) {
    return e.size() > key.size() && e.compare(0, key.size(), key) == 0 && e[key.size()] == '=';
  });
}

// The one fd number listener `name` is found at, or an Error naming what is wrong.
Result<int> socket_fd_named(const JobConfig& cfg,
                            const std::vector<std::shared_ptr<Listener>>& listeners,
                            const std::string& name) {
  int found = -1;
  int count = 0;
  for (std::size_t i = 0; i < listeners.size(); ++i) {
    if (listeners[i]->name != name) continue;
    found = worker_fd_of(cfg, i);
    ++count;
  }
  if (count == 1) return found;
  return Error{0, "$(corral.sockets." + name + ") in the command stands for " +
                      std::to_string(count) + " sockets, and one number names one fd"};
}

}  // namespace

std::string server_starter_address(const sockaddr* sa, socklen_t len, bool dual) {
  char text[INET6_ADDRSTRLEN] = {};
  switch (sa->sa_family) {
    case AF_INET: {
      if (len < static_cast<socklen_t>(sizeof(sockaddr_in))) return "";
      const auto* in = reinterpret_cast<const sockaddr_in*>(sa);
      ::inet_ntop(AF_INET, &in->sin_addr, text, sizeof text);
      return std::string(text) + ":" + std::to_string(ntohs(in->sin_port));
    }
    case AF_INET6: {
      if (len < static_cast<socklen_t>(sizeof(sockaddr_in6))) return "";
      const auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
      auto port = std::to_string(ntohs(in6->sin6_port));
      // start_server --port=8080 binds every address and names it by the port alone.
      if (dual) return port;
      ::inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof text);
      return "[" + std::string(text) + "]:" + port;
    }
    case AF_UNIX: {
      const auto* un = reinterpret_cast<const sockaddr_un*>(sa);
      const auto offset = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path));
      if (len <= offset) return "";
      std::string path(un->sun_path, static_cast<std::size_t>(len - offset));
      if (path.front() == '\0') return "@" + path.substr(1);  // abstract, as ss(8) shows it
      return path.substr(0, path.find('\0'));
    }
    default: return "";
  }
}

std::string server_starter_port(const std::vector<std::pair<std::string, int>>& entries) {
  std::string out;
  for (const auto& [address, fd] : entries)
    out += (out.empty() ? "" : ";") + address + "=" + std::to_string(fd);
  return out;
}

std::vector<std::pair<std::string, std::string>> einhorn_env(const std::vector<int>& fds,
                                                             unsigned slot) {
  std::vector<std::pair<std::string, std::string>> out;
  out.emplace_back("EINHORN_FD_COUNT", std::to_string(fds.size()));
  for (std::size_t i = 0; i < fds.size(); ++i)
    out.emplace_back("EINHORN_FD_" + std::to_string(i), std::to_string(fds[i]));
  out.emplace_back("EINHORN_CHILD_INDEX", std::to_string(slot));
  return out;
}

Status apply_conventions(SpawnPlan& plan, const JobConfig& cfg,
                         const std::vector<std::shared_ptr<Listener>>& listeners, unsigned slot,
                         std::uint64_t generation) noexcept {
  try {
    const auto& compat = cfg.compat;
    if (compat.fastcgi && !listeners.empty()) {
      // The check allows one listener in plain mode, so `inherit` holds only it.
      const int fd = listeners.front()->fd.get();
      // The flag belongs to the open file description, shared with every copy: a
      // socket a prefork generation made non-blocking before a reload is set back here.
      if (int flags = ::fcntl(fd, F_GETFL); flags >= 0 && (flags & O_NONBLOCK) != 0)
        ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
      plan.stdin_fd = fd;
      plan.inherit.clear();
      plan.listen_pid = false;
      unset_env(plan.env, "LISTEN_FDS");
      unset_env(plan.env, "LISTEN_FDNAMES");
    }
    if (!compat.fastcgi && compat.speaks(EnvConvention::einhorn)) {
      std::vector<int> fds;
      for (std::size_t i = 0; i < listeners.size(); ++i) fds.push_back(worker_fd_of(cfg, i));
      for (const auto& [key, value] : einhorn_env(fds, slot)) set_env(plan.env, key, value);
    }
    if (!compat.fastcgi && compat.speaks(EnvConvention::server_starter)) {
      std::vector<std::pair<std::string, int>> entries;
      for (std::size_t i = 0; i < listeners.size(); ++i)
        entries.emplace_back(server_starter_address_of(listeners[i]->fd.get()),
                             worker_fd_of(cfg, i));
      set_env(plan.env, "SERVER_STARTER_PORT", server_starter_port(entries));
      set_env(plan.env, "SERVER_STARTER_GENERATION", std::to_string(generation));
    }
    if (!compat.socket_refs.empty()) {
      std::map<std::string, int> fd_by_name;
      for (const auto& ref : compat.socket_refs) {
        auto fd = socket_fd_named(cfg, listeners, ref.name);
        if (!fd) return fd.error();
        fd_by_name[ref.name] = *fd;
      }
      plan.argv = expand_socket_refs(plan.argv, compat.socket_refs,
                                     [&](const SocketRef& ref) { return fd_by_name[ref.name]; });
    }
    return Ok{};
  } catch (const std::exception& e) {
    return Error{ENOMEM, std::string("prepare the environment: ") + e.what()};
  }
}

}  // namespace corral
