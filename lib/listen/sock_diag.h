// What the kernel says about one socket through NETLINK_SOCK_DIAG (linux/unix_diag.h):
// the file a unix socket is bound to, and the queue of a listening one. Also the
// accept-queue length and capacity of any listening stream socket (TCP_INFO for TCP).
#pragma once

#include <sys/types.h>

#include <cstdint>

#include "common/error.h"

namespace corral {

/// The answer of sock_diag about one unix socket (fields present as asked for).
struct UnixDiag {
  bool has_vfs = false;  // UDIAG_SHOW_VFS: the (device, inode) bound to
  dev_t dev = 0;
  ino_t ino = 0;
  bool has_rqlen = false;    // UDIAG_SHOW_RQLEN: for a listener, pending connections
  std::uint32_t rqueue = 0;  // and (wqueue) its backlog (net/unix/diag.c, sk_diag_show_rqlen)
  std::uint32_t wqueue = 0;
};

/// Asks sock_diag about the unix socket `sock` (by its inode), `show` being
/// UDIAG_SHOW_* bits. Never blocks: the kernel answers within sendto(), so the reply
/// is read with MSG_DONTWAIT. Fails where the kernel lacks unix_diag (CONFIG_UNIX_DIAG).
Result<UnixDiag> unix_diag(int sock, unsigned show);

/// A listening socket's accept queue.
struct ListenQueue {
  std::uint32_t length = 0;    // connections waiting to be accepted now
  std::uint32_t capacity = 0;  // the backlog the kernel applies (listen(2), capped by somaxconn)
};

/// The accept queue of a listening stream socket: TCP from TCP_INFO (tcpi_unacked and
/// tcpi_sacked hold the queue and its backlog on a listener, tcp_get_info()), unix from
/// sock_diag UNIX_DIAG_RQLEN. An error for any other socket (UDP, not listening).
/// Non-blocking; noexcept in practice (the only allocation is an error's text).
Result<ListenQueue> listen_queue_of(int fd);

}  // namespace corral
