/* A FastCGI responder on Debian's libfcgi (libfcgi-dev), for tests/integration/test_compat.py.
 * It takes its listener as every FastCGI application does, on fd 0 (FCGI_LISTENSOCK_FILENO),
 * and answers each request with what it was started with: the fds open at start-up,
 * whether fd 0 is blocking, LISTEN_FDS, its pid and the request's QUERY_STRING. */
#include <dirent.h>
#include <fcgiapp.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(void) {
  char fds[256] = "";
  DIR* dir = opendir("/proc/self/fd");
  int own = dir != NULL ? dirfd(dir) : -1;
  for (struct dirent* e; dir != NULL && (e = readdir(dir)) != NULL;) {
    if (e->d_name[0] == '.' || atoi(e->d_name) == own) continue;
    if (strlen(fds) + strlen(e->d_name) + 2 < sizeof fds) {
      if (fds[0] != '\0') strcat(fds, ",");
      strcat(fds, e->d_name);
    }
  }
  if (dir != NULL) closedir(dir);
  const int nonblock = (fcntl(0, F_GETFL) & O_NONBLOCK) != 0;
  const char* listen_fds = getenv("LISTEN_FDS");

  if (FCGX_Init() != 0) return 1;
  FCGX_Request request;
  if (FCGX_InitRequest(&request, 0, 0) != 0) return 1;
  while (FCGX_Accept_r(&request) >= 0) {
    const char* query = FCGX_GetParam("QUERY_STRING", request.envp);
    FCGX_FPrintF(request.out,
                 "Content-Type: text/plain\r\n\r\n"
                 "hello from fastcgi\npid=%d\nquery=%s\nfds=%s\nfd0_nonblock=%d\nlisten_fds=%s\n",
                 (int)getpid(), query != NULL ? query : "", fds, nonblock,
                 listen_fds != NULL ? listen_fds : "unset");
    FCGX_Finish_r(&request);
  }
  return 0;
}
