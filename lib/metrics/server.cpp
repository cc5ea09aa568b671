#include "metrics/server.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

namespace corral {
namespace {

const char* reason_phrase(int status) {
  switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 431: return "Request Header Fields Too Large";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Error";
  }
}

}  // namespace

HttpRequestLine parse_request_head(std::string_view head) {
  HttpRequestLine r;
  auto eol = head.find("\r\n");
  std::string_view line = head.substr(0, eol);
  auto sp1 = line.find(' ');
  auto sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp1 == std::string_view::npos || sp2 == std::string_view::npos || sp1 == 0) {
    r.error_status = 400;
    return r;
  }
  r.method = std::string(line.substr(0, sp1));
  std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  std::string_view version = line.substr(sp2 + 1);
  if (!version.starts_with("HTTP/1.")) {
    r.error_status = version.starts_with("HTTP/") ? 505 : 400;
    return r;
  }
  if (target.empty() || target.front() != '/') {
    r.error_status = 400;
    return r;
  }
  if (auto q = target.find('?'); q != std::string_view::npos) target = target.substr(0, q);
  r.path = std::string(target);
  if (r.method != "GET" && r.method != "HEAD") r.error_status = 405;
  return r;
}

MetricsServer::MetricsServer(UniqueFd listen_fd, int epoll_fd, HttpHandler handler)
    : listen_(std::move(listen_fd)), epoll_(epoll_fd), handler_(std::move(handler)) {
  int flags = ::fcntl(listen_.get(), F_GETFL);
  if (flags >= 0) ::fcntl(listen_.get(), F_SETFL, flags | O_NONBLOCK);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = listen_.get();
  listening_armed_ = ::epoll_ctl(epoll_, EPOLL_CTL_ADD, listen_.get(), &ev) == 0;
  clients_.reserve(kMaxClients);
}

MetricsServer::~MetricsServer() {
  while (!clients_.empty()) close_client(clients_.size() - 1);
  if (listen_) ::epoll_ctl(epoll_, EPOLL_CTL_DEL, listen_.get(), nullptr);
}

bool MetricsServer::owns(int fd) const noexcept {
  if (fd == listen_.get()) return true;
  for (const auto& c : clients_) {
    if (c.fd.get() == fd) return true;
  }
  return false;
}

void MetricsServer::arm_listener(bool on) noexcept {
  if (on == listening_armed_) return;
  // Off the loop while full: a level-triggered readable listener would wake us for
  // nothing; the connections wait in the kernel's backlog until a client leaves.
  epoll_event ev{};
  ev.events = on ? static_cast<std::uint32_t>(EPOLLIN) : 0U;
  ev.data.fd = listen_.get();
  if (::epoll_ctl(epoll_, EPOLL_CTL_MOD, listen_.get(), &ev) == 0) listening_armed_ = on;
}

void MetricsServer::on_event(int fd, std::uint32_t events, std::uint64_t now) noexcept {
  if (fd == listen_.get()) {
    accept_clients(now);
    return;
  }
  for (std::size_t i = 0; i < clients_.size(); ++i) {
    auto& c = clients_[i];
    if (c.fd.get() != fd) continue;
    if (!c.writing && (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) != 0) read_request(c, now);
    if (c.writing && (events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) != 0) flush(c);
    // A client done with (or broken off): sent everything, or the fd was closed.
    if (!c.fd || (c.writing && c.sent == c.out.size())) close_client(i);
    return;
  }
}

void MetricsServer::accept_clients(std::uint64_t now) noexcept {
  while (clients_.size() < kMaxClients) {
    int fd = ::accept4(listen_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        // EMFILE, ENFILE, ENOBUFS, ENOMEM: the connection stays queued; rest a moment.
        accept_retry_at_ = now + kAcceptRetryNs;
        arm_listener(false);
        return;
      }
      break;
    }
    Client c;
    c.fd = UniqueFd(fd);
    c.deadline = now + kReadTimeoutNs;
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.fd = fd;
    if (::epoll_ctl(epoll_, EPOLL_CTL_ADD, fd, &ev) != 0) continue;  // closed by ~UniqueFd
    clients_.push_back(std::move(c));
  }
  arm_listener(clients_.size() < kMaxClients);
}

void MetricsServer::read_request(Client& c, std::uint64_t now) noexcept {
  try {
    char buf[2048];
    for (;;) {
      ssize_t n = ::recv(c.fd.get(), buf, sizeof buf, 0);
      if (n == 0) {  // the client went away before finishing its request
        ::epoll_ctl(epoll_, EPOLL_CTL_DEL, c.fd.get(), nullptr);
        c.fd.reset();
        return;
      }
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        ::epoll_ctl(epoll_, EPOLL_CTL_DEL, c.fd.get(), nullptr);
        c.fd.reset();
        return;
      }
      const std::size_t scan_from = c.in.size() >= 3 ? c.in.size() - 3 : 0;
      c.in.append(buf, static_cast<size_t>(n));
      auto end = c.in.find("\r\n\r\n", scan_from);
      if (end == std::string::npos) {
        if (c.in.size() > kMaxRequestBytes) {
          answer(c, HttpResponse{431, "text/plain; charset=utf-8", "request too large\n"}, false,
                 now);
        }
        if (c.writing) return;
        continue;
      }
      if (end + 4 > kMaxRequestBytes) {
        answer(c, HttpResponse{431, "text/plain; charset=utf-8", "request too large\n"}, false,
               now);
        return;
      }
      auto line = parse_request_head(std::string_view(c.in).substr(0, end + 2));
      if (line.error_status != 0) {
        answer(c,
               HttpResponse{line.error_status, "text/plain; charset=utf-8",
                            std::string(reason_phrase(line.error_status)) + "\n"},
               false, now);
        return;
      }
      HttpResponse r = handler_(line.path);
      answer(c, r, line.method == "HEAD", now);
      return;
    }
  } catch (...) {
    // Out of memory building a buffer or an answer: drop this client, keep serving.
    ::epoll_ctl(epoll_, EPOLL_CTL_DEL, c.fd.get(), nullptr);
    c.fd.reset();
  }
}

void MetricsServer::answer(Client& c, const HttpResponse& r, bool head,
                           std::uint64_t now) noexcept {
  try {
    c.out = "HTTP/1.1 " + std::to_string(r.status) + " " + reason_phrase(r.status) +
            "\r\nContent-Type: " + r.content_type +
            "\r\nContent-Length: " + std::to_string(r.body.size()) +
            "\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n";
    if (!head) c.out += r.body;
  } catch (...) {
    ::epoll_ctl(epoll_, EPOLL_CTL_DEL, c.fd.get(), nullptr);
    c.fd.reset();
    return;
  }
  c.in.clear();
  c.in.shrink_to_fit();
  c.writing = true;
  c.sent = 0;
  c.deadline = now + kWriteTimeoutNs;
  // Nothing more is read: a client that keeps sending only fills its own buffers.
  ::shutdown(c.fd.get(), SHUT_RD);
  epoll_event ev{};
  ev.events = EPOLLOUT;
  ev.data.fd = c.fd.get();
  ::epoll_ctl(epoll_, EPOLL_CTL_MOD, c.fd.get(), &ev);
  flush(c);
}

void MetricsServer::flush(Client& c) noexcept {
  while (c.fd && c.sent < c.out.size()) {
    ssize_t n = ::send(c.fd.get(), c.out.data() + c.sent, c.out.size() - c.sent,
                       MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      c.sent += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    ::epoll_ctl(epoll_, EPOLL_CTL_DEL, c.fd.get(), nullptr);
    c.fd.reset();
    return;
  }
}

void MetricsServer::close_client(std::size_t index) noexcept {
  auto& c = clients_[index];
  if (c.fd) {
    ::epoll_ctl(epoll_, EPOLL_CTL_DEL, c.fd.get(), nullptr);
    // Everything was sent (or the client is dropped): FIN, then close.
    ::shutdown(c.fd.get(), SHUT_WR);
  }
  if (index + 1 != clients_.size()) clients_[index] = std::move(clients_.back());
  clients_.pop_back();
  if (accept_retry_at_ == 0) arm_listener(true);
}

std::uint64_t MetricsServer::next_deadline() const noexcept {
  std::uint64_t at = accept_retry_at_;
  for (const auto& c : clients_) {
    if (at == 0 || c.deadline < at) at = c.deadline;
  }
  return at;
}

void MetricsServer::expire(std::uint64_t now) noexcept {
  for (std::size_t i = clients_.size(); i-- > 0;) {
    if (!clients_[i].fd || clients_[i].deadline <= now) close_client(i);
  }
  if (accept_retry_at_ != 0 && now >= accept_retry_at_) {
    accept_retry_at_ = 0;
    arm_listener(clients_.size() < kMaxClients);
  }
}

}  // namespace corral
