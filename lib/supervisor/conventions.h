// The launcher conventions of a job (env_conventions, fastcgi, $(corral.sockets.NAME)):
// what a worker's fds, environment and arguments look like for a program written for
// einhorn, Server::Starter, spawn-fcgi or circus (docs/MIGRATING.md).
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/error.h"
#include "config/config.h"
#include "listen/listener.h"
#include "spawn/spawn.h"

namespace corral {

/// Server::Starter's name for a bound socket, as its start_server writes it into
/// SERVER_STARTER_PORT: "127.0.0.1:8080", "[::1]:8080", "8080" for every address (an
/// IPv6 wildcard socket that serves IPv4 too, `dual`), "/run/app.sock" for a unix path.
/// Pure; `len` bytes of `sa` are read.
std::string server_starter_address(const sockaddr* sa, socklen_t len, bool dual);

/// `entries` (address, fd) joined as SERVER_STARTER_PORT: "127.0.0.1:8080=3;8080=4".
std::string server_starter_port(const std::vector<std::pair<std::string, int>>& entries);

/// The einhorn variables for `fds` inherited fds: EINHORN_FD_COUNT, EINHORN_FD_0.. and
/// EINHORN_CHILD_INDEX. Never EINHORN_MASTER_PID (einhorn's worker library would look
/// for einhorn's command socket). Pure.
std::vector<std::pair<std::string, std::string>> einhorn_env(const std::vector<int>& fds,
                                                             unsigned slot);

/// Applies the job's conventions to `plan`, which holds the systemd layout already
/// (listeners at 3.., LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID). With fastcgi: the one
/// listener on fd 0 (made blocking: libfcgi treats EAGAIN from accept as fatal), no
/// inherited fd and no LISTEN_*. Adds the einhorn and Server::Starter variables the job
/// asks for, and replaces $(corral.sockets.NAME) in argv by the listener's fd number.
/// Returns an Error when NAME stands for no socket or several (a `systemd:NAME` that
/// became several sockets since the check). Before fork; never throws.
Status apply_conventions(SpawnPlan& plan, const JobConfig& cfg,
                         const std::vector<std::shared_ptr<Listener>>& listeners, unsigned slot,
                         std::uint64_t generation) noexcept;

}  // namespace corral
