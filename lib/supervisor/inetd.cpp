#include "supervisor/inetd.h"

#include <corral/protocol.h>
#include <corral/worker.h>
#include <fcntl.h>
#include <linux/close_range.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

#include "listen/address.h"

namespace corral {
namespace {

// Byte range of the scoreboard header that acceptors lock (fcntl, process-owned, so
// released if the holder dies) around the per-source count. Inside reserved bytes.
constexpr off_t kPerSourceLockOffset = 1000;

struct AcceptorArgs {
  const SpawnPlan* plan;
  const InetdParams* params;
};

// The peer as 16 bytes (IPv4 as IPv4-mapped IPv6) for the per-source count;
// false for unix sockets (no source to count).
bool peer_key(const sockaddr* sa, std::uint8_t out[16]) {
  if (sa->sa_family == AF_INET) {
    const auto* sin = reinterpret_cast<const sockaddr_in*>(sa);
    std::memset(out, 0, 10);
    out[10] = 0xff;
    out[11] = 0xff;
    std::memcpy(out + 12, &sin->sin_addr, 4);
    return true;
  }
  if (sa->sa_family == AF_INET6) {
    std::memcpy(out, &reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr, 16);
    return true;
  }
  return false;
}

bool region_lock(int fd, short type) {
  struct flock fl {};
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  fl.l_start = kPerSourceLockOffset;
  fl.l_len = 8;
  while (::fcntl(fd, type == F_UNLCK ? F_SETLK : F_SETLKW, &fl) != 0) {
    if (errno != EINTR) return false;
  }
  return true;
}

// Records this acceptor's peer in its slot and counts the busy slots with the same
// peer, under a lock so that two acceptors cannot both slip under the limit.
bool within_source_limit(int sb_fd, unsigned slot, unsigned limit, const std::uint8_t key[16],
                         unsigned& count) {
  struct stat st {};
  if (::fstat(sb_fd, &st) != 0) return true;
  auto size = static_cast<size_t>(st.st_size);
  void* base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, sb_fd, 0);
  if (base == MAP_FAILED) return true;
  auto* h = static_cast<corral_sb_header*>(base);
  unsigned slots = h->slot_count;
  if (CORRAL_SB_HEADER_SIZE + static_cast<size_t>(slots) * CORRAL_SB_SLOT_SIZE > size) slots = 0;
  auto* table = reinterpret_cast<corral_sb_slot*>(static_cast<char*>(base) + CORRAL_SB_HEADER_SIZE);
  bool ok = true;
  region_lock(sb_fd, F_WRLCK);
  count = 0;
  for (unsigned i = 0; i < slots; ++i) {
    if (i == slot) continue;
    if (__atomic_load_n(&table[i].state, __ATOMIC_ACQUIRE) != CORRAL_SLOT_BUSY) continue;
    if (std::memcmp(table[i].reserved, key, 16) == 0) ++count;
  }
  if (count >= limit) ok = false;
  if (ok && slot < slots) std::memcpy(table[slot].reserved, key, 16);
  region_lock(sb_fd, F_UNLCK);
  ::munmap(base, size);
  return ok;
}

int acceptor_main(void* arg) {
  const auto& a = *static_cast<AcceptorArgs*>(arg);
  const auto& p = *a.params;
  const auto& plan = *a.plan;
  // Fds were placed by the spawn layer: listeners at 3.., then the lock, the
  // scoreboard and the notify pipe.
  unsigned next = 3 + p.listener_count;
  int lock_fd = p.has_lock_fd ? static_cast<int>(next++) : -1;
  int sb_fd = static_cast<int>(next++);
  int notify_fd = p.has_notify_fd ? static_cast<int>(next++) : -1;
  char buf[32];
  std::snprintf(buf, sizeof buf, "%d", ::getpid());
  ::setenv("LISTEN_PID", buf, 1);
  ::setenv("LISTEN_FDS", std::to_string(p.listener_count).c_str(), 1);
  ::setenv("LISTEN_FDNAMES", p.listener_names.c_str(), 1);
  ::setenv(CORRAL_ENV_LOCK_KIND, p.lock_kind, 1);
  if (lock_fd >= 0) ::setenv(CORRAL_ENV_LOCK_FD, std::to_string(lock_fd).c_str(), 1);
  ::setenv(CORRAL_ENV_SCOREBOARD_FD, std::to_string(sb_fd).c_str(), 1);
  if (notify_fd >= 0) ::setenv(CORRAL_ENV_NOTIFY_FD, std::to_string(notify_fd).c_str(), 1);
  ::setenv(CORRAL_ENV_SLOT, std::to_string(p.slot).c_str(), 1);
  corral_worker* w = nullptr;
  if (int r = corral_worker_init(&w); r != 0) {
    std::fprintf(stderr, "corral: job %s: inetd acceptor (slot %u): %s\n", p.job.c_str(), p.slot,
                 std::strerror(-r));
    return CORRAL_EXIT_FATAL;
  }
  for (;;) {
    sockaddr_storage peer{};
    socklen_t peer_len = sizeof peer;
    int conn = corral_worker_accept(w, reinterpret_cast<sockaddr*>(&peer), &peer_len, nullptr);
    if (conn < 0) return errno == ESHUTDOWN ? 0 : 1;
    std::uint8_t key[16];
    unsigned count = 0;
    if (p.max_per_source != 0 && peer_key(reinterpret_cast<sockaddr*>(&peer), key) &&
        !within_source_limit(sb_fd, p.slot, p.max_per_source, key, count)) {
      std::string who = format_socket_address(reinterpret_cast<sockaddr*>(&peer), peer_len);
      std::fprintf(stderr,
                   "corral: job %s: refused %s: %u connections from that address already "
                   "(max_per_source %u)\n",
                   p.job.c_str(), who.c_str(), count, p.max_per_source);
      ::close(conn);
      corral_worker_done(w);
      continue;
    }
    sockaddr_storage local{};
    socklen_t local_len = sizeof local;
    ::getsockname(conn, reinterpret_cast<sockaddr*>(&local), &local_len);
    std::vector<std::string> env = plan.env;
    add_connection_environment(env, reinterpret_cast<sockaddr*>(&peer), peer_len,
                               reinterpret_cast<sockaddr*>(&local), local_len);
    std::vector<char*> envp;
    envp.reserve(env.size() + 1);
    for (auto& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
    std::vector<char*> argv;
    argv.reserve(plan.argv.size() + 1);
    for (const auto& s : plan.argv) argv.push_back(const_cast<char*>(s.c_str()));
    argv.push_back(nullptr);
    // The connection becomes stdin and stdout; nothing else of ours may reach the
    // program: every fd from 3 up is closed at exec.
    if (::dup2(conn, 0) < 0 || ::dup2(conn, 1) < 0) return 1;
    ::syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC);
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    ::sigaction(SIGTERM, &dfl, nullptr);
    ::execve(plan.path.c_str(), argv.data(), envp.data());
    report_exec_failure(errno);
    // Close the connection cleanly (FIN, not RST): nothing was read from it.
    ::shutdown(0, SHUT_WR);
    return 127;
  }
}

}  // namespace

void add_connection_environment(std::vector<std::string>& env, const sockaddr* peer,
                                socklen_t peer_len, const sockaddr* local, socklen_t local_len) {
  std::string rhost;
  std::string lhost;
  std::uint16_t rport = 0;
  std::uint16_t lport = 0;
  if (split_socket_address(peer, peer_len, rhost, rport)) {
    set_env(env, "PROTO", "TCP");
    set_env(env, "REMOTE_ADDR", rhost);
    set_env(env, "REMOTE_PORT", std::to_string(rport));
    set_env(env, "TCPREMOTEIP", rhost);
    set_env(env, "TCPREMOTEPORT", std::to_string(rport));
    if (split_socket_address(local, local_len, lhost, lport)) {
      set_env(env, "TCPLOCALIP", lhost);
      set_env(env, "TCPLOCALPORT", std::to_string(lport));
    }
  } else {
    set_env(env, "PROTO", "UNIX");
  }
}

Result<pid_t> spawn_inetd_acceptor(const SpawnPlan& plan, const InetdParams& params,
                                   UniqueFd& report) noexcept {
  AcceptorArgs args{&plan, &params};
  return fork_process(plan, acceptor_main, &args, &report);
}

}  // namespace corral
