/* Prototype (issue 18, docs/INETD.md): the seccomp user-notification join, measured
 * against corral's relay. Not part of corral.
 *
 *   seccomp_join PORT COUNT PROGRAM [ARG...]
 *
 * Serves COUNT connections on 127.0.0.1:PORT, one at a time. For each: forks, and the
 * child sets no_new_privs, installs a filter that sends read/readv/recvfrom/recvmsg on
 * fd 0 to a user-notification listener, passes the listener fd back over a socketpair,
 * and execs PROGRAM with stdin and stdout on /dev/null. The parent waits for the first
 * notification (the program has done its start-up and reads its input: "ready"), then
 * accepts, installs the connection at fds 0 and 1 of the program
 * (SECCOMP_IOCTL_NOTIF_ADDFD with SECCOMP_ADDFD_FLAG_SETFD) and lets the read continue
 * (SECCOMP_USER_NOTIF_FLAG_CONTINUE): the program reads from the real socket. The filter
 * stays, so every later read of fd 0 traps too and is answered CONTINUE: counted and
 * printed at the end ("traps=N"), with this process's CPU (getrusage). Before the next
 * program is started, the previous one must have exited (a pool of one). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <netinet/in.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void die(const char* what) {
  perror(what);
  exit(1);
}

static int install_filter(void) {
  struct sock_filter f[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_read, 4, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_readv, 3, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_recvfrom, 2, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_recvmsg, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {.len = sizeof f / sizeof f[0], .filter = f};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -1;
  return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER,
                      &prog);
}

static void send_fd(int sock, int fd) {
  char c = 'F';
  struct iovec iov = {.iov_base = &c, .iov_len = 1};
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } u;
  struct msghdr m = {
      .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf};
  struct cmsghdr* h = CMSG_FIRSTHDR(&m);
  h->cmsg_level = SOL_SOCKET;
  h->cmsg_type = SCM_RIGHTS;
  h->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(h), &fd, sizeof fd);
  if (sendmsg(sock, &m, 0) != 1) _exit(126);
}

static int recv_fd(int sock) {
  char c;
  struct iovec iov = {.iov_base = &c, .iov_len = 1};
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } u;
  struct msghdr m = {
      .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf};
  if (recvmsg(sock, &m, MSG_CMSG_CLOEXEC) != 1) return -1;
  struct cmsghdr* h = CMSG_FIRSTHDR(&m);
  if (!h || h->cmsg_type != SCM_RIGHTS) return -1;
  int fd;
  memcpy(&fd, CMSG_DATA(h), sizeof fd);
  return fd;
}

static int respond_continue(int nfd, __u64 id) {
  struct seccomp_notif_resp resp;
  memset(&resp, 0, sizeof resp);
  resp.id = id;
  resp.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
  return ioctl(nfd, SECCOMP_IOCTL_NOTIF_SEND, &resp);
}

/* A program started and trapped in its first read of fd 0: its pid, listener, request. */
struct ready {
  pid_t pid;
  int nfd;
  __u64 id;
};

static int start_program(char** argv, struct ready* r) {
  int sp[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) != 0) die("socketpair");
  pid_t pid = fork();
  if (pid < 0) die("fork");
  if (pid == 0) {
    int null = open("/dev/null", O_RDWR);
    dup2(null, 0);
    dup2(null, 1);
    if (null > 2) close(null);
    int nfd = install_filter();
    if (nfd < 0) _exit(125);
    send_fd(sp[1], nfd);
    close(nfd);
    execv(argv[0], argv);
    _exit(127);
  }
  close(sp[1]);
  int nfd = recv_fd(sp[0]);
  close(sp[0]);
  if (nfd < 0) return -1;
  struct seccomp_notif req;
  memset(&req, 0, sizeof req);
  if (ioctl(nfd, SECCOMP_IOCTL_NOTIF_RECV, &req) != 0) return -1; /* blocks: start-up */
  r->pid = pid;
  r->nfd = nfd;
  r->id = req.id;
  return 0;
}

static long cpu_us(void) {
  struct rusage self;
  getrusage(RUSAGE_SELF, &self);
  return self.ru_utime.tv_sec * 1000000L + self.ru_utime.tv_usec + self.ru_stime.tv_sec * 1000000L +
         self.ru_stime.tv_usec;
}

int main(int argc, char** argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: seccomp_join PORT COUNT PROGRAM [ARG...]\n");
    return 2;
  }
  int port = atoi(argv[1]);
  long count = atol(argv[2]);
  int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in sa = {.sin_family = AF_INET,
                           .sin_port = htons((unsigned short)port),
                           .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (bind(ls, (struct sockaddr*)&sa, sizeof sa) != 0 || listen(ls, 128) != 0) die("listen");
  long traps = 0;
  long join_cpu = 0;
  struct ready r;
  if (start_program(argv + 3, &r) != 0) die("start_program");
  for (long n = 0; n < count; ++n) {
    int conn = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
    if (conn < 0) die("accept");
    long c0 = cpu_us();
    struct seccomp_notif_addfd add;
    memset(&add, 0, sizeof add);
    add.id = r.id;
    add.flags = SECCOMP_ADDFD_FLAG_SETFD;
    add.srcfd = (__u32)conn;
    add.newfd = 0;
    if (ioctl(r.nfd, SECCOMP_IOCTL_NOTIF_ADDFD, &add) < 0) die("ADDFD 0");
    add.newfd = 1;
    if (ioctl(r.nfd, SECCOMP_IOCTL_NOTIF_ADDFD, &add) < 0) die("ADDFD 1");
    if (respond_continue(r.nfd, r.id) != 0) die("SEND");
    close(conn);
    join_cpu += cpu_us() - c0;
    /* Every later read of fd 0 traps: answer until the program is gone. */
    for (;;) {
      struct pollfd p = {.fd = r.nfd, .events = POLLIN};
      if (poll(&p, 1, -1) < 0) {
        if (errno == EINTR) continue;
        die("poll");
      }
      if (p.revents & POLLHUP) break; /* no task left under the filter */
      struct seccomp_notif req;
      memset(&req, 0, sizeof req);
      if (ioctl(r.nfd, SECCOMP_IOCTL_NOTIF_RECV, &req) != 0) {
        if (errno == ENOENT || errno == EINTR) continue;
        break;
      }
      ++traps;
      respond_continue(r.nfd, req.id);
    }
    close(r.nfd);
    int st;
    waitpid(r.pid, &st, 0);
    if (n + 1 < count && start_program(argv + 3, &r) != 0) die("start_program");
  }
  printf("connections=%ld\ntraps=%ld\ncpu_us=%ld\njoin_cpu_us=%ld\n", count, traps, cpu_us(),
         join_cpu);
  return 0;
}
