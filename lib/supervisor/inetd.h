// inetd mode: a pre-forked acceptor that execs a legacy program on the connection.
#pragma once

#include <sys/socket.h>

#include <string>
#include <vector>

#include "common/error.h"
#include "common/unique_fd.h"
#include "spawn/spawn.h"

namespace corral {

/// What an acceptor needs besides its SpawnPlan.
struct InetdParams {
  std::string job;
  std::string listener_names;  // LISTEN_FDNAMES
  unsigned listener_count = 0;
  const char* lock_kind = "none";
  bool has_lock_fd = false;
  bool has_notify_fd = false;
  unsigned slot = 0;
  unsigned max_per_source = 0;
};

/// Forks an acceptor. `plan.inherit` must hold the listeners, then the lock fd (when
/// has_lock_fd), then the scoreboard fd, then the notify fd (when has_notify_fd); `plan.env` is the
/// program's environment (without LISTEN_* and CORRAL_* fds). The acceptor runs the worker protocol
/// (lock, poll, accept) from lib/worker, then execs plan.path with the connection on fds 0 and 1,
/// REMOTE_ADDR/REMOTE_PORT/PROTO/TCP* in the environment, and no other fd. On success `report`
/// receives the spawn report pipe (spawn_process): a set-up failure, or the failure of the
/// program's exec, is read from it at reap time.
Result<pid_t> spawn_inetd_acceptor(const SpawnPlan& plan, const InetdParams& params,
                                   UniqueFd& report) noexcept;

/// The environment a legacy program gets for a connection (PRODUCT.md): REMOTE_ADDR,
/// REMOTE_PORT, PROTO, TCPREMOTEIP, TCPREMOTEPORT, TCPLOCALIP, TCPLOCALPORT; for unix
/// sockets PROTO=UNIX only. Pure apart from formatting.
void add_connection_environment(std::vector<std::string>& env, const sockaddr* peer,
                                socklen_t peer_len, const sockaddr* local, socklen_t local_len);

}  // namespace corral
