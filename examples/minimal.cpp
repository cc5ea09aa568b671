// The smallest corral worker: answers each connection with one line and closes.
// Under corral (mode: prefork) or `systemd-socket-activate -l 7000 build/examples/minimal`.
#include <corral/worker.hpp>

#include <sys/socket.h>

#include <cstdio>
#include <system_error>

int main() {
  try {
    corral::Worker worker;  // LISTEN_FDS, accept mutex, scoreboard: all from the environment
    while (auto conn = worker.accept()) {  // empty once SIGTERM asked us to stop
      static const char line[] = "hello from a corral worker\n";
      (void)::send(conn.fd(), line, sizeof line - 1, MSG_NOSIGNAL);
    }  // ~Connection closes the socket and marks the slot idle
    return 0;
  } catch (const std::system_error& e) {
    std::fprintf(stderr, "minimal: %s\n", e.what());
    return CORRAL_EXIT_FATAL;
  }
}
