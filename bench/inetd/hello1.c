/* hello1: a legacy inetd-style program for the inetd scenario. The connection is
 * on stdin/stdout: read one HTTP request head (up to the blank line, or EOF),
 * answer "hello\n" with HTTP/1.0 and exit, which closes the connection.
 * Built dynamically linked on purpose: what a legacy program usually is. */
#define _GNU_SOURCE
#include <string.h>
#include <unistd.h>

int main(void) {
  static const char resp[] =
      "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n"
      "Connection: close\r\n\r\nhello\n";
  char buf[8192];
  size_t have = 0;
  while (have < sizeof buf) {
    ssize_t n = read(0, buf + have, sizeof buf - have);
    if (n <= 0) break;
    have += (size_t)n;
    if (have >= 4 && memmem(buf, have, "\r\n\r\n", 4)) break;
    if (have >= 2 && memmem(buf, have, "\n\n", 2)) break;
  }
  size_t off = 0;
  while (off < sizeof resp - 1) {
    ssize_t n = write(1, resp + off, sizeof resp - 1 - off);
    if (n <= 0) return 1;
    off += (size_t)n;
  }
  return 0;
}
