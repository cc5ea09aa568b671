// hello-http: a prefork-mode corral worker speaking just enough HTTP/1.1 to
// answer every request with 200 and the body "hello\n". It is the benchmark
// worker, so the request path is lean: one fixed input buffer per connection,
// pipelined requests answered in one write, no allocation per request.
//
// Keep-alive: on by default for HTTP/1.1, off for HTTP/1.0 unless the client
// asks for it; "Connection: close" is honoured. After SIGTERM the connection is
// closed at the next request boundary (the response then says
// "Connection: close"). An idle keep-alive connection is closed after 5 s, as
// Apache's KeepAliveTimeout default, so that it cannot pin a worker forever.
//
// Run it under corral (examples/hello-http.yaml), or alone:
//   systemd-socket-activate -l 127.0.0.1:8080 build/examples/hello-http
#include <corral/worker.hpp>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <system_error>

namespace {

constexpr std::size_t kInSize = 16384;  // a request head must fit: 431 beyond
constexpr std::size_t kOutSize = 32768;
constexpr int kKeepAliveTimeoutSec = 5;

constexpr char kStatus200[] =
    "HTTP/1.1 200 OK\r\n"
    "Server: corral-hello\r\n"
    "Content-Type: text/plain\r\n"
    "Content-Length: 6\r\n";
constexpr char kConnClose[] = "Connection: close\r\n";
constexpr char kConnKeepAlive[] = "Connection: keep-alive\r\n";  // only for HTTP/1.0
constexpr char kBody[] = "\r\nhello\n";
constexpr char kBadRequest[] =
    "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
constexpr char kTooLarge[] =
    "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n"
    "Connection: close\r\n\r\n";
constexpr std::size_t kMaxResponse = 256;  // bigger than any response built below

// The Date header (RFC 9110 8.6.1: an origin server with a clock sends it),
// formatted at most once per second.
class DateLine {
 public:
  const char* get(std::size_t& len) {
    timespec now{};
    clock_gettime(CLOCK_REALTIME_COARSE, &now);  // vDSO, no system call
    if (now.tv_sec != second_) {
      second_ = now.tv_sec;
      tm utc{};
      gmtime_r(&now.tv_sec, &utc);
      len_ = ::strftime(line_, sizeof line_, "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &utc);
    }
    len = len_;
    return line_;
  }

 private:
  time_t second_ = -1;
  char line_[64] = {};
  std::size_t len_ = 0;
};

struct Head {
  bool ok = false;  // a request line ending in HTTP/1.x, well-formed headers
  bool http10 = false;
  bool keep_alive = false;  // what the client wants
  bool chunked = false;     // a Transfer-Encoding body: we do not decode it, so we close
  std::uint64_t content_length = 0;
};

// Compares [p, p+n) with a lowercase literal of the same length, ignoring case
// (enough for header names made of letters and '-').
bool name_is(const char* p, std::size_t n, const char* lower) {
  std::size_t m = std::strlen(lower);
  if (n != m) return false;
  for (std::size_t i = 0; i < n; i++)
    if ((static_cast<unsigned char>(p[i]) | 0x20) != static_cast<unsigned char>(lower[i]))
      return false;
  return true;
}

// Applies the comma-separated tokens of a Connection header.
void apply_connection(const char* v, const char* end, Head& h) {
  while (v < end) {
    while (v < end && (*v == ' ' || *v == '\t' || *v == ',')) v++;
    const char* t = v;
    while (v < end && *v != ',' && *v != ' ' && *v != '\t') v++;
    if (name_is(t, static_cast<std::size_t>(v - t), "close"))
      h.keep_alive = false;
    else if (name_is(t, static_cast<std::size_t>(v - t), "keep-alive"))
      h.keep_alive = true;
  }
}

// Parses a complete head [p, p+len) (request line, headers, blank line).
Head parse_head(const char* p, std::size_t len) {
  Head h;
  const char* end = p + len;
  const char* eol = static_cast<const char*>(std::memchr(p, '\n', len));
  if (!eol) return h;
  const char* line_end = (eol > p && eol[-1] == '\r') ? eol - 1 : eol;
  // "METHOD SP TARGET SP HTTP/1.x": we need only the version.
  if (line_end - p < 12 || std::memcmp(line_end - 9, " HTTP/1.", 8) != 0) return h;
  char minor = line_end[-1];
  if (minor < '0' || minor > '9') return h;
  h.http10 = minor == '0';
  h.keep_alive = !h.http10;

  for (const char* line = eol + 1; line < end;) {
    const char* nl = static_cast<const char*>(std::memchr(line, '\n', end - line));
    if (!nl) break;
    const char* le = (nl > line && nl[-1] == '\r') ? nl - 1 : nl;
    if (le == line) break;  // the blank line
    const char* colon = static_cast<const char*>(std::memchr(line, ':', le - line));
    if (!colon) return h;  // not a header: bad request
    std::size_t name_len = static_cast<std::size_t>(colon - line);
    const char* v = colon + 1;
    while (v < le && (*v == ' ' || *v == '\t')) v++;
    if (name_is(line, name_len, "connection")) {
      apply_connection(v, le, h);
    } else if (name_is(line, name_len, "content-length")) {
      std::uint64_t n = 0;
      const char* d = v;
      for (; d < le && *d >= '0' && *d <= '9'; d++) {
        if (n > (UINT64_MAX - 9) / 10) return h;
        n = n * 10 + static_cast<unsigned>(*d - '0');
      }
      while (d < le && (*d == ' ' || *d == '\t')) d++;
      if (d == v || d != le) return h;
      h.content_length = n;
    } else if (name_is(line, name_len, "transfer-encoding")) {
      h.chunked = true;
    }
    line = nl + 1;
  }
  h.ok = true;
  return h;
}

// Looks for the blank line that ends the head starting at `start`. Returns the
// head's length, or 0 if it is not complete yet; `scan` remembers how far the
// search went, so that a client sending byte by byte costs O(n), not O(n^2).
std::size_t find_head_end(const char* buf, std::size_t start, std::size_t have, std::size_t& scan) {
  std::size_t i = std::max(scan, start);
  while (i < have) {
    const void* nl = std::memchr(buf + i, '\n', have - i);
    if (!nl) break;
    std::size_t j = static_cast<std::size_t>(static_cast<const char*>(nl) - buf);
    if (j + 1 >= have) {
      scan = j;
      return 0;
    }
    if (buf[j + 1] == '\n') return j + 2 - start;
    if (buf[j + 1] == '\r') {
      if (j + 2 >= have) {
        scan = j;
        return 0;
      }
      if (buf[j + 2] == '\n') return j + 3 - start;
    }
    i = j + 1;
  }
  scan = have;
  return 0;
}

bool send_all(int fd, const char* buf, std::size_t len) {
  while (len > 0) {
    ssize_t n = ::send(fd, buf, len, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;  // SIGTERM while busy: finish the write
      return false;
    }
    buf += n;
    len -= static_cast<std::size_t>(n);
  }
  return true;
}

void append(char* out, std::size_t& len, const char* s, std::size_t n) {
  std::memcpy(out + len, s, n);
  len += n;
}

void append_ok(char* out, std::size_t& len, DateLine& date, bool keep_alive, bool http10) {
  append(out, len, kStatus200, sizeof kStatus200 - 1);
  std::size_t date_len = 0;
  const char* d = date.get(date_len);
  append(out, len, d, date_len);
  if (!keep_alive)
    append(out, len, kConnClose, sizeof kConnClose - 1);
  else if (http10)
    append(out, len, kConnKeepAlive, sizeof kConnKeepAlive - 1);
  append(out, len, kBody, sizeof kBody - 1);
}

// Before we close a connection ourselves: if the client already sent more than
// we read, close() would answer with RST (RFC 2525, 2.17), and the client's
// stack may discard the response it has not read yet. Like Apache's lingering
// close, send FIN first and drain for a bounded time. Without pending input
// (the usual case) this is one ioctl.
void close_gently(int fd) {
  int pending = 0;
  if (::ioctl(fd, FIONREAD, &pending) < 0 || pending == 0) return;
  ::shutdown(fd, SHUT_WR);
  timeval limit{1, 0};
  (void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
  char sink[4096];
  for (std::size_t total = 0; total < 256 * 1024;) {
    ssize_t n = ::recv(fd, sink, sizeof sink, 0);
    if (n <= 0) return;  // EOF, timeout, reset or a signal: enough
    total += static_cast<std::size_t>(n);
  }
}

void serve(int fd, const corral::Worker& worker, DateLine& date) {
  // Both are best effort (TCP_NODELAY fails on a unix socket, which is fine):
  // no Nagle delay for a second pipelined batch, and a bound on idle keep-alive.
  int one = 1;
  (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  timeval idle{kKeepAliveTimeoutSec, 0};
  (void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &idle, sizeof idle);

  char in[kInSize];
  char out[kOutSize];
  std::size_t have = 0;    // bytes in `in`
  std::size_t scan = 0;    // see find_head_end
  std::uint64_t skip = 0;  // body bytes still to discard
  bool answered = false;   // a response went out on this connection
  for (;;) {
    std::size_t pos = 0, out_len = 0;
    bool close_after = false;
    for (;;) {  // every complete request in the buffer
      if (skip > 0) {
        std::size_t k = static_cast<std::size_t>(std::min<std::uint64_t>(skip, have - pos));
        pos += k;
        skip -= k;
        if (skip > 0) break;
      }
      // RFC 9112 2.2: ignore empty lines before a request line.
      while (pos < have && (in[pos] == '\r' || in[pos] == '\n')) pos++;
      if (pos == have) break;
      std::size_t head_len = find_head_end(in, pos, have, scan);
      if (head_len == 0) break;
      Head h = parse_head(in + pos, head_len);
      if (out_len + kMaxResponse > kOutSize) {
        if (!send_all(fd, out, out_len)) return;
        out_len = 0;
      }
      if (!h.ok) {
        append(out, out_len, kBadRequest, sizeof kBadRequest - 1);
        close_after = true;
        break;
      }
      // After SIGTERM this response is the last: this is the request boundary.
      bool keep = h.keep_alive && !h.chunked && !worker.stopping();
      append_ok(out, out_len, date, keep, h.http10);
      pos += head_len;
      scan = pos;
      std::size_t body_here =
          static_cast<std::size_t>(std::min<std::uint64_t>(h.content_length, have - pos));
      pos += body_here;
      skip = h.content_length - body_here;
      if (!keep) {
        close_after = true;
        break;
      }
    }
    if (out_len > 0 && !send_all(fd, out, out_len)) return;
    if (out_len > 0) answered = true;
    if (close_after) {
      close_gently(fd);
      return;
    }

    // Keep the unfinished request at the front of the buffer.
    if (pos > 0) {
      std::memmove(in, in + pos, have - pos);
      have -= pos;
      scan = scan > pos ? scan - pos : 0;
    }
    if (have == kInSize) {
      if (send_all(fd, kTooLarge, sizeof kTooLarge - 1)) close_gently(fd);
      return;
    }
    // Between requests and asked to stop: close the keep-alive connection now. Not
    // before the first request: a new connection's client is sending one, and closing
    // it unanswered would lose it.
    if (have == 0 && skip == 0 && answered && worker.stopping()) return;

    ssize_t n = ::recv(fd, in + have, kInSize - have, 0);
    if (n > 0) {
      have += static_cast<std::size_t>(n);
    } else if (n == 0) {
      return;  // the client closed
    } else if (errno != EINTR) {
      return;  // EAGAIN: idle past the keep-alive timeout; or a reset
    }
    // EINTR: SIGTERM; the loop above looks at the request boundary.
  }
}

}  // namespace

int main() {
  try {
    corral::Worker worker;
    DateLine date;
    while (auto conn = worker.accept()) serve(conn.fd(), worker, date);
    return 0;
  } catch (const std::system_error& e) {
    std::fprintf(stderr, "hello-http: %s\n", e.what());
    return e.code().value() == ENOMEM ? CORRAL_EXIT_SICK : CORRAL_EXIT_FATAL;
  }
}
