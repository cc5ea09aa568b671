/* A tiny prefork worker built against an installed corral (tests/integration/
 * test_install.py): answers every connection with "pong <listener name>\n" and closes. */
#include <corral/worker.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(void) {
  corral_worker* w = NULL;
  int rc = corral_worker_init(&w);
  if (rc < 0) {
    fprintf(stderr, "pong: corral_worker_init: %s\n", strerror(-rc));
    return CORRAL_EXIT_FATAL;
  }
  for (;;) {
    unsigned index = 0;
    int conn = corral_worker_accept(w, NULL, NULL, &index);
    if (conn < 0) {
      if (errno == ESHUTDOWN) break;
      perror("pong: accept");
      return CORRAL_EXIT_FATAL;
    }
    char reply[128];
    int n = snprintf(reply, sizeof reply, "pong %s\n", corral_worker_listener_name(w, index));
    if (write(conn, reply, (size_t)n) < 0) perror("pong: write");
    close(conn);
    corral_worker_done(w);
  }
  corral_worker_free(w);
  return 0;
}
