// echo: a prefork-mode corral worker that sends back every byte (so every line)
// a client sends, until the client closes. The slot says busy for exactly as
// long as the connection is held.
//
// Run it under corral (examples/echo.yaml), or alone with socket activation:
//   systemd-socket-activate -l 127.0.0.1:7070 build/examples/echo
#include <corral/worker.hpp>

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <system_error>

namespace {

// Writes all of buf; false if the client went away.
bool send_all(int fd, const char* buf, size_t len) {
  while (len > 0) {
    ssize_t n = ::send(fd, buf, len, MSG_NOSIGNAL);  // a closed peer gives EPIPE, not SIGPIPE
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    buf += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

void echo(int fd) {
  char buf[16384];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n == 0) return;  // the client closed: we are done
    if (n < 0) {
      // EINTR: SIGTERM arrived while we serve. The contract is to finish the
      // connection, so keep going; accept() reports the stop afterwards.
      if (errno == EINTR) continue;
      return;
    }
    if (!send_all(fd, buf, static_cast<size_t>(n))) return;
  }
}

}  // namespace

int main() {
  try {
    corral::Worker worker;
    while (auto conn = worker.accept()) echo(conn.fd());
    return 0;  // asked to stop
  } catch (const std::system_error& e) {
    std::fprintf(stderr, "echo: %s\n", e.what());
    // No memory is a passing shortage; anything else is a broken setup that a
    // respawn will not fix.
    return e.code().value() == ENOMEM ? CORRAL_EXIT_SICK : CORRAL_EXIT_FATAL;
  }
}
