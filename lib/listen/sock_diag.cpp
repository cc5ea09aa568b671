#include "listen/sock_diag.h"

#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <cerrno>
#include <cstring>

#include "common/unique_fd.h"

namespace corral {

Result<UnixDiag> unix_diag(int sock, unsigned show) {
  struct stat self {};
  if (::fstat(sock, &self) != 0) return errno_error("fstat the socket");
  UniqueFd nl(::socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG));
  if (!nl) return errno_error("socket NETLINK_SOCK_DIAG");
  struct {
    nlmsghdr nlh;
    unix_diag_req req;
  } msg{};
  msg.nlh.nlmsg_len = sizeof msg;
  msg.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  msg.nlh.nlmsg_flags = NLM_F_REQUEST;
  msg.nlh.nlmsg_seq = 1;
  msg.req.sdiag_family = AF_UNIX;
  msg.req.udiag_states = ~0U;
  msg.req.udiag_ino = static_cast<__u32>(self.st_ino);
  msg.req.udiag_show = show;
  msg.req.udiag_cookie[0] = INET_DIAG_NOCOOKIE;
  msg.req.udiag_cookie[1] = INET_DIAG_NOCOOKIE;
  sockaddr_nl kernel{};
  kernel.nl_family = AF_NETLINK;
  if (::sendto(nl.get(), &msg, sizeof msg, 0, reinterpret_cast<sockaddr*>(&kernel),
               sizeof kernel) != static_cast<ssize_t>(sizeof msg))
    return errno_error("sock_diag request");
  // The netlink kernel side handles the request inside sendto() (netlink_unicast_kernel),
  // so the answer is queued by now: a non-blocking read cannot miss it.
  alignas(nlmsghdr) char buf[8192];
  ssize_t n = ::recv(nl.get(), buf, sizeof buf, MSG_DONTWAIT);
  if (n < 0) return errno_error("sock_diag answer");
  auto len = static_cast<unsigned>(n);
  for (auto* h = reinterpret_cast<nlmsghdr*>(buf); NLMSG_OK(h, len); h = NLMSG_NEXT(h, len)) {
    if (h->nlmsg_type == NLMSG_ERROR) {
      const auto* e = static_cast<const nlmsgerr*>(NLMSG_DATA(h));
      return Error{-e->error, "sock_diag"};
    }
    if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY) continue;
    const auto* m = static_cast<const unix_diag_msg*>(NLMSG_DATA(h));
    if (m->udiag_ino != static_cast<__u32>(self.st_ino)) continue;
    UnixDiag out;
    auto attr_len = static_cast<unsigned>(h->nlmsg_len - NLMSG_LENGTH(sizeof *m));
    for (auto* a = reinterpret_cast<rtattr*>(const_cast<unix_diag_msg*>(m) + 1);
         RTA_OK(a, attr_len); a = RTA_NEXT(a, attr_len)) {
      if (a->rta_type == UNIX_DIAG_VFS && RTA_PAYLOAD(a) >= sizeof(unix_diag_vfs)) {
        unix_diag_vfs vfs{};
        std::memcpy(&vfs, RTA_DATA(a), sizeof vfs);
        // The kernel's own dev_t encoding (MAJOR << 20 | MINOR), not stat's.
        out.dev = makedev(vfs.udiag_vfs_dev >> 20, vfs.udiag_vfs_dev & 0xfffff);
        out.ino = static_cast<ino_t>(vfs.udiag_vfs_ino);
        out.has_vfs = true;
      } else if (a->rta_type == UNIX_DIAG_RQLEN && RTA_PAYLOAD(a) >= sizeof(unix_diag_rqlen)) {
        unix_diag_rqlen rql{};
        std::memcpy(&rql, RTA_DATA(a), sizeof rql);
        out.rqueue = rql.udiag_rqueue;
        out.wqueue = rql.udiag_wqueue;
        out.has_rqlen = true;
      }
    }
    return out;
  }
  return Error{0, "sock_diag: no answer about the socket"};
}

Result<ListenQueue> listen_queue_of(int fd) {
  int listening = 0;
  socklen_t len = sizeof listening;
  if (::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0)
    return errno_error("getsockopt SO_ACCEPTCONN");
  if (listening == 0) return Error{0, "not a listening socket"};
  int domain = 0;
  len = sizeof domain;
  if (::getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0)
    return errno_error("getsockopt SO_DOMAIN");
  if (domain == AF_INET || domain == AF_INET6) {
    tcp_info info{};
    len = sizeof info;
    if (::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0)
      return errno_error("getsockopt TCP_INFO");
    if (info.tcpi_state != TCP_LISTEN) return Error{0, "not a listening TCP socket"};
    return ListenQueue{info.tcpi_unacked, info.tcpi_sacked};
  }
  if (domain == AF_UNIX) {
    auto diag = unix_diag(fd, UDIAG_SHOW_RQLEN);
    if (!diag) return diag.error();
    if (!diag->has_rqlen) return Error{0, "sock_diag: no UNIX_DIAG_RQLEN in the answer"};
    return ListenQueue{diag->rqueue, diag->wqueue};
  }
  return Error{0, "not a TCP or unix socket"};
}

}  // namespace corral
