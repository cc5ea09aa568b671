#include "listen/listener.h"

#include <fcntl.h>
#include <grp.h>
#include <linux/unix_diag.h>
#include <netinet/in.h>
#include <pwd.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <utility>
#include <vector>

#include "common/error.h"
#include "listen/access.h"
#include "listen/sock_diag.h"

namespace corral {
namespace {

int socket_type(int fd) {
  int type = 0;
  socklen_t len = sizeof type;
  if (::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0) return -1;
  return type;
}

bool same_socket_address(const SocketAddress& want, int want_type, int fd) {
  sockaddr_storage got{};
  socklen_t len = sizeof got;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&got), &len) != 0) return false;
  if (got.ss_family != want.storage.ss_family) return false;
  if (socket_type(fd) != want_type) return false;  // udp:H:P is not H:P
  if (got.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&got);
    const auto* b = reinterpret_cast<const sockaddr_in*>(&want.storage);
    return a->sin_port == b->sin_port && a->sin_addr.s_addr == b->sin_addr.s_addr;
  }
  if (got.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&got);
    const auto* b = reinterpret_cast<const sockaddr_in6*>(&want.storage);
    return a->sin6_port == b->sin6_port &&
           std::memcmp(&a->sin6_addr, &b->sin6_addr, sizeof a->sin6_addr) == 0;
  }
  if (got.ss_family == AF_UNIX) {
    const auto* a = reinterpret_cast<const sockaddr_un*>(&got);
    const auto* b = reinterpret_cast<const sockaddr_un*>(&want.storage);
    const size_t base = offsetof(sockaddr_un, sun_path);
    if (want.length > base && b->sun_path[0] == '\0') {
      // Abstract: the name is exactly the bytes the length covers, NULs included.
      return len == want.length &&
             std::memcmp(a->sun_path, b->sun_path, static_cast<size_t>(len) - base) == 0;
    }
    if (len > base && a->sun_path[0] == '\0') return false;
    return std::strncmp(a->sun_path, b->sun_path, sizeof a->sun_path) == 0;
  }
  return false;
}

bool is_listening_stream(int fd) {
  if (socket_type(fd) != SOCK_STREAM) return false;
  int listening = 0;
  socklen_t len = sizeof listening;
  return ::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) == 0 && listening != 0;
}

// What systemd's ListenDatagram= passes: a bound SOCK_DGRAM socket (IP or unix).
bool is_bound_datagram(int fd) {
  if (socket_type(fd) != SOCK_DGRAM) return false;
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return false;
  return ss.ss_family == AF_INET || ss.ss_family == AF_INET6 ||
         (ss.ss_family == AF_UNIX && len > offsetof(sockaddr_un, sun_path));
}

// "/proc/self/fd/N": a path that resolves to exactly the file an fd (O_PATH too) is
// open on, whatever has been renamed over its name since.
std::string proc_fd_path(int fd) {
  return "/proc/self/fd/" + std::to_string(fd);
}

bool same_file_at(int dir_fd, const std::string& path, const struct stat& want) {
  struct stat now {};
  return ::fstatat(dir_fd, path.c_str(), &now, AT_SYMLINK_NOFOLLOW) == 0 &&
         now.st_dev == want.st_dev && now.st_ino == want.st_ino;
}

// A unix socket path that already exists is replaced only when it is a socket nobody
// listens on (connect() refused): never a regular file, never a live socket, never a
// link (nor what a link points to). The probe connects to the very inode that was
// checked, through /proc/self/fd.
void remove_stale_unix_socket(const std::string& path, const std::string& text, int type) {
  UniqueFd file(::open(path.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
  if (!file) {
    if (errno == ENOENT) return;
    throw SetupError("open", path, errno);
  }
  struct stat st {};
  if (::fstat(file.get(), &st) != 0) throw SetupError("stat", path, errno);
  if (!S_ISSOCK(st.st_mode))
    throw SetupError(text + ": " + path +
                     " exists and is not a socket; refusing to replace it (remove it or choose "
                     "another path)");
  // A probe of the socket's own type: a datagram socket refuses a stream connect
  // (EPROTOTYPE) whether anyone reads it or not.
  UniqueFd probe(::socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
  if (!probe) throw SetupError("socket", text, errno);
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  auto via = proc_fd_path(file.get());
  std::memcpy(sun.sun_path, via.data(), via.size());
  if (::connect(probe.get(), reinterpret_cast<sockaddr*>(&sun), sizeof sun) == 0)
    throw SetupError("bind", text, EADDRINUSE);
  if (errno != ECONNREFUSED && errno != ENOENT) throw SetupError("connect", text, errno);
  // unlink() never follows a link; what it removes must still be what was probed.
  if (!same_file_at(AT_FDCWD, path, st))
    throw SetupError(text + ": " + path +
                     " was replaced while corral checked it; refusing to "
                     "remove it (someone else can write to its directory)");
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) throw SetupError("unlink", path, errno);
  spdlog::info("replaced stale unix socket {}", path);
}

// The (device, inode) of the file that binding `sock` created, as the kernel recorded
// it (sock_diag, UNIX_DIAG_VFS: linux/unix_diag.h); fails where unix_diag is missing.
Result<std::pair<dev_t, ino_t>> bound_file_of(int sock) {
  auto diag = unix_diag(sock, UDIAG_SHOW_VFS);
  if (!diag) return diag.error();
  if (!diag->has_vfs) return Error{0, "sock_diag: the socket is bound to no file"};
  return std::pair<dev_t, ino_t>{diag->dev, diag->ino};
}

// The file `sock` was just bound to, opened O_PATH without following a link, after
// checking that it is that very socket: a socket file of ours whose inode sock_diag
// names. Whoever can write to the directory may have renamed something over it.
UniqueFd open_bound_file(int sock, const std::string& path, const std::string& text) {
  UniqueFd file(::open(path.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
  if (!file) throw SetupError("open", path, errno);
  struct stat st {};
  if (::fstat(file.get(), &st) != 0) throw SetupError("stat", path, errno);
  auto replaced = [&](const std::string& what) {
    return SetupError(text + ": " + path + " was replaced after corral bound it (" + what +
                      "); someone else can write to its directory: refusing to change it. Put "
                      "the socket in a directory only root or the supervisor's user can write");
  };
  if (S_ISLNK(st.st_mode)) throw replaced("it is now a symbolic link");
  if (!S_ISSOCK(st.st_mode)) throw replaced("it is no longer a socket");
  if (st.st_uid != ::geteuid()) throw replaced("it is owned by uid " + std::to_string(st.st_uid));
  auto bound = bound_file_of(sock);
  if (!bound)
    throw SetupError(text + ": cannot check which file the socket is bound to (" +
                     bound.error().to_string() +
                     "); corral needs the kernel's unix_diag (CONFIG_UNIX_DIAG) to set "
                     "owner:, group: or a mode the umask changed");
  if (bound->first != st.st_dev ||
      static_cast<__u32>(bound->second) != static_cast<__u32>(st.st_ino))
    throw replaced("it is another socket");
  return file;
}

uid_t lookup_uid(const std::string& user) {
  std::vector<char> buf(16384);
  passwd pw{};
  passwd* result = nullptr;
  if (getpwnam_r(user.c_str(), &pw, buf.data(), buf.size(), &result) != 0 || result == nullptr)
    throw SetupError("user \"" + user + "\" does not exist");
  return pw.pw_uid;
}

gid_t lookup_gid(const std::string& group_name) {
  std::vector<char> buf(16384);
  group gr{};
  group* result = nullptr;
  if (getgrnam_r(group_name.c_str(), &gr, buf.data(), buf.size(), &result) != 0 ||
      result == nullptr)
    throw SetupError("group \"" + group_name + "\" does not exist");
  return gr.gr_gid;
}

constexpr std::string_view kStorePrefix = "corral-bound.";

std::string key_of(const std::string& job, const std::vector<ListenerSpec>& specs, size_t index) {
  const auto& spec = specs[index];
  auto text = to_string(spec.address);
  if (const auto* tcp = std::get_if<TcpAddress>(&spec.address); tcp && tcp->port == 0)
    return text + "#" + job + "#" + std::to_string(index);  // each port 0 is its own socket
  return text;
}

}  // namespace

std::string fd_store_name(const std::string& display) {
  std::string name(kStorePrefix);
  for (char c : display) {
    // LISTEN_FDNAMES is ':'-separated; systemd refuses control and non-ASCII bytes.
    auto u = static_cast<unsigned char>(c);
    name += (c == ':' || u < 0x20 || u >= 0x7f) ? '_' : c;
  }
  return name.substr(0, 255);  // FDNAME_MAX
}

std::string local_address_of(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "unknown";
  auto text = format_socket_address(reinterpret_cast<sockaddr*>(&ss), len);
  if (socket_type(fd) == SOCK_DGRAM) {
    if (ss.ss_family == AF_UNIX)
      return "unix-dgram:" + (text.starts_with("unix:") ? text.substr(5) : text);
    return "udp:" + text;
  }
  return text;
}

std::string socket_file_of(const std::string& display) {
  for (std::string_view prefix : {"unix:", "unix-dgram:"}) {
    if (display.starts_with(prefix) && display.size() > prefix.size() &&
        display[prefix.size()] == '/')
      return display.substr(prefix.size());
  }
  return "";
}

UniqueFd bind_listener(const ListenerSpec& spec) {
  const auto text = to_string(spec.address);
  const auto sa = to_socket_address(spec.address);
  const int type = is_datagram(spec.address) ? SOCK_DGRAM : SOCK_STREAM;
  UniqueFd fd(::socket(sa.family(), type | SOCK_CLOEXEC, 0));
  if (!fd) throw SetupError("socket", text, errno);
  // Before listen(): no SYN from a refused peer is ever queued, not even in between.
  if (spec.kernel_filter && sa.family() != AF_UNIX) {
    if (auto attached = apply_access_filter(fd.get(), spec.access); !attached)
      throw SetupError(text + ": " + attached.error().to_string());
  }
  int one = 1;
  int zero = 0;
  if (sa.family() != AF_UNIX) {
    ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  }
  if (sa.family() == AF_INET6) {
    // ":port" serves IPv4 clients too (PRODUCT.md); an explicit IPv6 address stays IPv6.
    const auto& tcp = std::get<TcpAddress>(spec.address);
    int v6only = tcp.host.empty() ? zero : one;
    if (::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only) != 0)
      throw SetupError("setsockopt IPV6_V6ONLY", text, errno);
  }
  const auto* un = std::get_if<UnixAddress>(&spec.address);
  if (un == nullptr || un->abstract) {
    if (::bind(fd.get(), sa.get(), sa.length) != 0) throw SetupError("bind", text, errno);
  } else {
    // Nothing is done by path after bind() but through a checked O_PATH fd: whoever can
    // write to the socket's directory could rename a link to any file over it.
    const mode_t mode = spec.unix_mode.value_or(0666);
    const uid_t uid = spec.owner.empty() ? static_cast<uid_t>(-1) : lookup_uid(spec.owner);
    const gid_t gid = spec.group.empty() ? static_cast<gid_t>(-1) : lookup_gid(spec.group);
    remove_stale_unix_socket(un->path, text, type);
    // Linux's unix_bind gives the new file the socket inode's mode minus the umask: set
    // the mode there, and the umask to 0 for the call (corral has one thread).
    if (::fchmod(fd.get(), mode) != 0) throw SetupError("fchmod", text, errno);
    const mode_t saved_umask = ::umask(0);
    const int rc = ::bind(fd.get(), sa.get(), sa.length);
    const int err = errno;
    ::umask(saved_umask);
    if (rc != 0) throw SetupError("bind", text, err);
    struct stat st {};
    UniqueFd file(::open(un->path.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
    const bool mode_ok = file && ::fstat(file.get(), &st) == 0 && S_ISSOCK(st.st_mode) &&
                         (st.st_mode & 07777) == mode;
    if (!mode_ok || uid != static_cast<uid_t>(-1) || gid != static_cast<gid_t>(-1)) {
      file = open_bound_file(fd.get(), un->path, text);
      // A kernel that ignored the socket inode's mode: chmod the checked inode itself.
      if (!mode_ok && ::chmod(proc_fd_path(file.get()).c_str(), mode) != 0)
        throw SetupError("chmod", un->path, errno);
      if ((uid != static_cast<uid_t>(-1) || gid != static_cast<gid_t>(-1)) &&
          ::fchownat(file.get(), "", uid, gid, AT_EMPTY_PATH) != 0)
        throw SetupError("chown", un->path, errno);
    }
  }
  if (type == SOCK_STREAM && ::listen(fd.get(), spec.backlog) != 0)
    throw SetupError("listen", text, errno);
  return fd;
}

namespace {

constexpr int kListenFdsStart = 3;  // SD_LISTEN_FDS_START

// The socket-activation protocol, as sd_listen_fds_with_names(unset_environment=1)
// implements it (systemd src/libsystemd/sd-daemon/sd-daemon.c; sd_listen_fds(3)):
// LISTEN_PID must be this process, LISTEN_FDS fds start at 3 and get FD_CLOEXEC,
// LISTEN_FDNAMES has one colon-separated name per fd ("unknown" when absent), and the
// three variables are unset whatever happens, so that they never reach workers.
// Done here without libsystemd, which only lib/notify and lib/log link.
int take_listen_fds(std::vector<std::string>& names) {
  const char* pid_text = std::getenv("LISTEN_PID");
  const char* fds_text = std::getenv("LISTEN_FDS");
  const char* names_text = std::getenv("LISTEN_FDNAMES");
  const std::string names_copy = names_text != nullptr ? names_text : "";
  const bool have_names = names_text != nullptr;
  int result = 0;
  if (pid_text != nullptr && fds_text != nullptr) {
    char* end = nullptr;
    errno = 0;
    long pid = std::strtol(pid_text, &end, 10);
    if (errno != 0 || end == pid_text || *end != '\0' || pid <= 0) {
      result = -EINVAL;
    } else if (pid == ::getpid()) {
      errno = 0;
      long n = std::strtol(fds_text, &end, 10);
      if (errno != 0 || end == fds_text || *end != '\0' || n < 0 || n > 4096) {
        result = -EINVAL;
      } else {
        result = static_cast<int>(n);
      }
    }
  }
  ::unsetenv("LISTEN_PID");
  ::unsetenv("LISTEN_FDS");
  ::unsetenv("LISTEN_FDNAMES");
  if (result <= 0) return result;
  for (int fd = kListenFdsStart; fd < kListenFdsStart + result; ++fd) {
    int flags = ::fcntl(fd, F_GETFD);
    if (flags < 0) return -errno;
    if (::fcntl(fd, F_SETFD, flags | FD_CLOEXEC) < 0) return -errno;
  }
  names.clear();
  if (have_names) {
    size_t start = 0;
    for (;;) {
      size_t colon = names_copy.find(':', start);
      names.push_back(names_copy.substr(start, colon == std::string::npos ? colon : colon - start));
      if (colon == std::string::npos) break;
      start = colon + 1;
    }
    if (names.size() != static_cast<size_t>(result)) return -EINVAL;
  } else {
    names.assign(static_cast<size_t>(result), "unknown");
  }
  return result;
}

}  // namespace

bool unlink_own_socket_file(int sock, const std::string& path) {
  // Never follow a link, and never remove what someone renamed over our socket since:
  // only the very file the socket is bound to goes (its inode, as sock_diag reports).
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0 || !S_ISSOCK(st.st_mode) || st.st_uid != ::geteuid())
    return false;
  // Without unix_diag the owner check above is all there is.
  if (auto bound = bound_file_of(sock);
      bound && (bound->first != st.st_dev ||
                static_cast<__u32>(bound->second) != static_cast<__u32>(st.st_ino)))
    return false;
  return ::unlink(path.c_str()) == 0;
}

int ListenerSet::adopt_systemd_listeners() {
  const char* pid_text = std::getenv("LISTEN_PID");
  if (pid_text != nullptr && std::strtol(pid_text, nullptr, 10) != ::getpid()) {
    spdlog::warn("ignoring LISTEN_FDS: LISTEN_PID={} is not this process ({})", pid_text,
                 ::getpid());
  }
  std::vector<std::string> names;
  int n = take_listen_fds(names);
  if (n < 0) {
    spdlog::warn("cannot take the sockets systemd passed: {}", std::strerror(-n));
    return 0;
  }
  for (int i = 0; i < n; ++i) {
    int raw = kListenFdsStart + i;
    const std::string& name = names[static_cast<size_t>(i)];
    // Move the socket out of the 3.. range that workers' listeners use and keep it CLOEXEC.
    int fd = ::fcntl(raw, F_DUPFD_CLOEXEC, 3 + n);
    if (fd < 0) {
      spdlog::error("cannot keep inherited fd {} ({}): {}", raw, name, std::strerror(errno));
      continue;
    }
    ::close(raw);
    if (!is_listening_stream(fd) && !is_bound_datagram(fd)) {
      spdlog::warn(
          "inherited fd {} ({}) is neither a listening stream socket nor a bound datagram "
          "socket; ignored",
          raw, name);
      ::close(fd);
      continue;
    }
    auto l = std::make_shared<Listener>();
    l->fd = UniqueFd(fd);
    l->name = name;
    l->display = local_address_of(fd);
    l->key = "systemd-fd:" + std::to_string(raw);
    if (name.starts_with(kStorePrefix)) {
      // One of ours, back from the fd store: found by address, closed when unused.
      l->stored = true;
      l->store_name = name;
      spdlog::info("adopted socket {} from the fd store", l->display);
    } else {
      l->inherited = true;
      spdlog::info("adopted socket {} ({}) from systemd", l->display, name);
    }
    listeners_.push_back(std::move(l));
  }
  return n;
}

void ListenerSet::begin_generation() {
  for (auto& l : listeners_) l->used = false;
}

std::vector<std::shared_ptr<Listener>> ListenerSet::open_for_job(
    const std::string& job, const std::vector<ListenerSpec>& specs, std::vector<size_t>* spec_of) {
  std::vector<std::shared_ptr<Listener>> out;
  if (spec_of != nullptr) spec_of->clear();
  auto note = [&](size_t index) {
    if (spec_of != nullptr) spec_of->resize(out.size(), index);
  };
  for (size_t i = 0; i < specs.size(); ++i) {
    const auto& spec = specs[i];
    if (const auto* sd = std::get_if<SystemdAddress>(&spec.address)) {
      size_t before = out.size();
      for (const auto& l : listeners_) {
        if (l->inherited && l->name == sd->name) out.push_back(l);
      }
      if (out.size() == before)
        throw SetupError("job " + job + ": no socket named \"" + sd->name +
                         "\" was passed by systemd (LISTEN_FDNAMES); check FileDescriptorName= "
                         "in the .socket unit");
      for (size_t k = before; k < out.size(); ++k) out[k]->used = true;
      note(i);
      continue;
    }
    auto key = key_of(job, specs, i);
    size_t found = listeners_.size();
    for (size_t k = 0; k < listeners_.size(); ++k) {
      if (listeners_[k]->key == key) found = k;
    }
    if (found == listeners_.size()) {
      // A host:port listener adopts an inherited socket bound to the same address, or
      // one of its own back from the fd store.
      auto sa = to_socket_address(spec.address);
      const int type = is_datagram(spec.address) ? SOCK_DGRAM : SOCK_STREAM;
      for (size_t k = 0; k < listeners_.size(); ++k) {
        if ((listeners_[k]->inherited || listeners_[k]->stored) && !listeners_[k]->used &&
            same_socket_address(sa, type, listeners_[k]->fd.get())) {
          found = k;
          listeners_[k]->key = key;
          spdlog::info("job {}: {} uses the socket systemd passed", job, to_string(spec.address));
          break;
        }
      }
    }
    if (found == listeners_.size()) {
      auto l = std::make_shared<Listener>();
      l->fd = bind_listener(spec);
      l->key = key;
      l->display = local_address_of(l->fd.get());
      spdlog::info("job {}: listening on {}", job, l->display);
      listeners_.push_back(std::move(l));
    }
    listeners_[found]->name = spec.name.empty() ? job : spec.name;
    listeners_[found]->used = true;
    out.push_back(listeners_[found]);
    note(i);
  }
  return out;
}

std::vector<std::string> ListenerSet::close_unused() {
  std::vector<std::string> closed;
  std::vector<std::shared_ptr<Listener>> kept;
  for (auto& l : listeners_) {
    if (l->used || l->inherited) {
      kept.push_back(std::move(l));
    } else {
      closed.push_back(l->display);
      if (l->stored) removed_from_store_.push_back(l->store_name);
    }
  }
  listeners_ = std::move(kept);
  return closed;
}

std::vector<std::string> ListenerSet::take_removed_from_store() {
  return std::exchange(removed_from_store_, {});
}

void ListenerSet::report_unused_inherited() const {
  for (const auto& l : listeners_) {
    if (l->inherited && !l->used)
      spdlog::warn("socket {} ({}) passed by systemd is used by no job; kept open for a reload",
                   l->display, l->name);
  }
}

}  // namespace corral
