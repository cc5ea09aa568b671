// lib/worker: the accept mutexes and the accept cycle, with real processes.
//
// Every test forks real children that share inherited fds, as corral's workers
// do. Nothing sleeps to synchronise: the parent polls a condition against a
// deadline, every wait is bounded, and every child is killed and reaped by its
// pid (ChildGuard) even when a REQUIRE fails.
#include <corral/worker.h>

#include <doctest/doctest.h>

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <arpa/inet.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using Ms = std::chrono::milliseconds;

constexpr Ms kDeadline = 10s;  // generous for a loaded CI machine; normally ms

// Polls `pred` until it holds or `timeout` passes; returns its last value.
bool wait_until(const std::function<bool()>& pred, Ms timeout = kDeadline) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    if (pred()) return true;
    if (Clock::now() >= deadline) return pred();
    ::poll(nullptr, 0, 1);  // yield the CPU between checks of the condition
  }
}

// Kills (SIGKILL) and reaps every child not reaped yet, whatever happened.
class ChildGuard {
 public:
  ~ChildGuard() {
    for (pid_t pid : pids_) {
      ::kill(pid, SIGKILL);
      int status = 0;
      while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
    }
  }
  pid_t fork_child(const std::function<int()>& body) {
    pid_t pid = ::fork();
    if (pid == 0) {
      int rc = 99;
      try {
        rc = body();
      } catch (...) {
        rc = 98;
      }
      ::_exit(rc);  // never return into doctest in the child
    }
    if (pid > 0) pids_.push_back(pid);
    return pid;
  }
  // Waits for `pid` to end; the raw wait status, or nullopt after the
  // deadline (the child is then killed and reaped).
  std::optional<int> wait_exit(pid_t pid, Ms timeout = kDeadline) {
    int status = 0;
    bool done = wait_until(
        [&] {
          pid_t r = ::waitpid(pid, &status, WNOHANG);
          return r == pid;
        },
        timeout);
    forget(pid);
    if (done) return status;
    ::kill(pid, SIGKILL);
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return std::nullopt;
  }
  void forget(pid_t pid) { std::erase(pids_, pid); }

 private:
  std::vector<pid_t> pids_;
};

bool exited_with(const std::optional<int>& status, int code) {
  return status && WIFEXITED(*status) && WEXITSTATUS(*status) == code;
}

class TempDir {
 public:
  TempDir() {
    std::string tmpl =
        (std::filesystem::temp_directory_path() / "corral-worker-test-XXXXXX").string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string file(const char* name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

// A FIFO opened read-write, as the supervisor hands it out, with `tokens` tokens.
int make_token_fifo(const TempDir& dir, int tokens) {
  std::string path = dir.file("accept.lock");
  REQUIRE(::mkfifo(path.c_str(), 0600) == 0);
  // O_RDWR on a FIFO does not block and keeps a writer open, so read() never
  // sees EOF (fifo(7)).
  int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  REQUIRE(fd >= 0);
  for (int i = 0; i < tokens; i++) REQUIRE(::write(fd, "T", 1) == 1);
  return fd;
}

int make_lock_file(const TempDir& dir) {
  int fd = ::open(dir.file("accept.lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  REQUIRE(fd >= 0);
  return fd;
}

int fionread(int fd) {
  int n = -1;
  if (::ioctl(fd, FIONREAD, &n) < 0) return -1;
  return n;
}

// What the counting children share: a MAP_SHARED anonymous page.
struct Shared {
  std::uint64_t counter;
  int inside;      // processes currently in the critical section
  int max_inside;  // the most ever seen at once
};

Shared* map_shared() {
  void* p =
      ::mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  REQUIRE(p != MAP_FAILED);
  std::memset(p, 0, sizeof(Shared));
  return static_cast<Shared*>(p);
}

// Each child increments the counter `rounds` times under the lock, with a
// read-yield-write sequence that loses updates unless the lock excludes.
int count_under_lock(corral_lock_kind kind, int fd, Shared* sh, int rounds) {
  for (int i = 0; i < rounds; i++) {
    if (corral_lock_acquire(kind, fd) != 0) return 2;
    int inside = __atomic_add_fetch(&sh->inside, 1, __ATOMIC_SEQ_CST);
    int max = __atomic_load_n(&sh->max_inside, __ATOMIC_SEQ_CST);
    while (inside > max && !__atomic_compare_exchange_n(&sh->max_inside, &max, inside, false,
                                                        __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
    }
    std::uint64_t v = *static_cast<volatile std::uint64_t*>(&sh->counter);
    ::sched_yield();  // invite another process into the critical section
    *static_cast<volatile std::uint64_t*>(&sh->counter) = v + 1;
    __atomic_sub_fetch(&sh->inside, 1, __ATOMIC_SEQ_CST);
    if (corral_lock_release(kind, fd) != 0) return 3;
  }
  return 0;
}

// Runs `procs` counting children and checks that all of them exited 0.
void run_counters(corral_lock_kind kind, int fd, Shared* sh, int procs, int rounds) {
  ChildGuard children;
  std::vector<pid_t> pids;
  for (int i = 0; i < procs; i++) {
    pid_t pid = children.fork_child([&] { return count_under_lock(kind, fd, sh, rounds); });
    REQUIRE(pid > 0);
    pids.push_back(pid);
  }
  for (pid_t pid : pids) CHECK(exited_with(children.wait_exit(pid, 60s), 0));
}

// ---- a worker process on the library ---------------------------------------

int listen_tcp() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;  // the kernel picks a free port
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  REQUIRE(::listen(fd, 64) == 0);
  return fd;
}

int connect_to(int listener) {
  sockaddr_in a{};
  socklen_t len = sizeof a;
  REQUIRE(::getsockname(listener, reinterpret_cast<sockaddr*>(&a), &len) == 0);
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), len) == 0);
  return fd;
}

// Connections waiting in a TCP listener's accept queue: for a socket in
// LISTEN state, tcp_info.tcpi_unacked is the accept backlog (tcp_get_info).
unsigned accept_queue(int listener) {
  tcp_info ti{};
  socklen_t len = sizeof ti;
  if (::getsockopt(listener, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0) return 0;
  return ti.tcpi_unacked;
}

// Reads exactly n bytes before the deadline; what arrived otherwise.
std::string read_n(int fd, std::size_t n, Ms timeout = kDeadline) {
  std::string out;
  auto deadline = Clock::now() + timeout;
  while (out.size() < n) {
    auto left = std::chrono::duration_cast<Ms>(deadline - Clock::now()).count();
    if (left <= 0) break;
    pollfd p{fd, POLLIN, 0};
    int r = ::poll(&p, 1, static_cast<int>(left));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    char buf[256];
    ssize_t k = ::read(fd, buf, std::min(sizeof buf, n - out.size()));
    if (k <= 0) break;
    out.append(buf, static_cast<std::size_t>(k));
  }
  return out;
}

bool readable_now(int fd) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, 0) == 1;
}

// A scoreboard file as the supervisor writes it: every slot STARTING.
struct Scoreboard {
  int fd = -1;
  void* map = MAP_FAILED;
  std::size_t size = 0;
  std::size_t header_size = CORRAL_SB_HEADER_SIZE;
  std::size_t slot_size = CORRAL_SB_SLOT_SIZE;
  corral_sb_slot* slot(unsigned i) const {
    return reinterpret_cast<corral_sb_slot*>(static_cast<char*>(map) + header_size + i * slot_size);
  }
  corral_sb_slot_ext* ext(unsigned i) const {  // the grown layout only
    return reinterpret_cast<corral_sb_slot_ext*>(reinterpret_cast<char*>(slot(i)) +
                                                 CORRAL_SB_SLOT_SIZE);
  }
  std::uint32_t state(unsigned i) const {
    return __atomic_load_n(&slot(i)->state, __ATOMIC_ACQUIRE);
  }
  std::uint32_t lock(unsigned i) const { return __atomic_load_n(&slot(i)->lock, __ATOMIC_ACQUIRE); }
  ~Scoreboard() {
    if (map != MAP_FAILED) ::munmap(map, size);
    if (fd >= 0) ::close(fd);
  }
};

// `grown`: the layout corral creates now (header 2048, slots 256); else the first one.
void make_scoreboard(const TempDir& dir, unsigned slots, Scoreboard& sb, bool grown = false) {
  sb.fd = ::open(dir.file("job.scoreboard").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  REQUIRE(sb.fd >= 0);
  sb.header_size = grown ? CORRAL_SB_EXT_HEADER_SIZE : CORRAL_SB_HEADER_SIZE;
  sb.slot_size = grown ? CORRAL_SB_EXT_SLOT_SIZE : CORRAL_SB_SLOT_SIZE;
  sb.size = sb.header_size + slots * sb.slot_size;
  REQUIRE(::ftruncate(sb.fd, static_cast<off_t>(sb.size)) == 0);
  sb.map = ::mmap(nullptr, sb.size, PROT_READ | PROT_WRITE, MAP_SHARED, sb.fd, 0);
  REQUIRE(sb.map != MAP_FAILED);
  auto* h = static_cast<corral_sb_header*>(sb.map);
  std::memcpy(h->magic, CORRAL_SB_MAGIC, sizeof h->magic);
  h->version = CORRAL_SB_VERSION;
  h->header_size = static_cast<std::uint32_t>(sb.header_size);
  h->slot_size = static_cast<std::uint32_t>(sb.slot_size);
  h->slot_count = slots;
  h->supervisor_pid = ::getpid();
  h->generation = 1;
  for (unsigned i = 0; i < slots; i++) sb.slot(i)->state = CORRAL_SLOT_STARTING;
}

// What the worker child gets, laid out as corral does it: listeners at
// 3..3+N-1, then the lock, then the scoreboard; the test's report pipe after.
struct WorkerEnv {
  std::vector<int> listeners;
  const char* lock_kind = nullptr;  // CORRAL_LOCK_KIND, or unset
  int lock_fd = -1;
  int scoreboard_fd = -1;
  unsigned slot = 0;
  const char* fd_names = nullptr;
  int report_fd = -1;  // where the child tells the parent what it did
};

// In the child: puts the fds in place and sets the environment. Returns the
// report fd's new number, or -1.
int place_worker_fds(const WorkerEnv& env) {
  std::vector<int> src = env.listeners;
  if (env.lock_fd >= 0) src.push_back(env.lock_fd);
  if (env.scoreboard_fd >= 0) src.push_back(env.scoreboard_fd);
  if (env.report_fd >= 0) src.push_back(env.report_fd);
  // Move everything above the target range first, so that no dup2() below
  // closes an fd that is still to be moved.
  std::vector<int> high;
  for (int fd : src) {
    int h = ::fcntl(fd, F_DUPFD_CLOEXEC, 100);
    if (h < 0) return -1;
    high.push_back(h);
  }
  for (std::size_t i = 0; i < high.size(); i++) {
    // dup2 onto a different number clears FD_CLOEXEC on the copy.
    if (::dup2(high[i], 3 + static_cast<int>(i)) < 0) return -1;
    ::close(high[i]);
  }
  int next = 3 + static_cast<int>(env.listeners.size());
  ::setenv("LISTEN_FDS", std::to_string(env.listeners.size()).c_str(), 1);
  ::setenv("LISTEN_PID", std::to_string(::getpid()).c_str(), 1);
  if (env.fd_names)
    ::setenv("LISTEN_FDNAMES", env.fd_names, 1);
  else
    ::unsetenv("LISTEN_FDNAMES");
  for (const char* v : {CORRAL_ENV_LOCK_FD, CORRAL_ENV_LOCK_KIND, CORRAL_ENV_SCOREBOARD_FD,
                        CORRAL_ENV_SLOT, CORRAL_ENV_JOB, CORRAL_ENV_GENERATION})
    ::unsetenv(v);
  if (env.lock_kind) ::setenv(CORRAL_ENV_LOCK_KIND, env.lock_kind, 1);
  if (env.lock_fd >= 0) ::setenv(CORRAL_ENV_LOCK_FD, std::to_string(next++).c_str(), 1);
  if (env.scoreboard_fd >= 0) {
    ::setenv(CORRAL_ENV_SCOREBOARD_FD, std::to_string(next++).c_str(), 1);
    ::setenv(CORRAL_ENV_SLOT, std::to_string(env.slot).c_str(), 1);
  }
  return env.report_fd >= 0 ? next : -1;
}

// Forks a worker: places the fds, runs corral_worker_init, then `body`.
// Exit codes: 10 = placement failed, 11 = init failed, else body's.
pid_t fork_worker(ChildGuard& children, const WorkerEnv& env,
                  const std::function<int(corral_worker*, int report)>& body) {
  return children.fork_child([&] {
    int report = place_worker_fds(env);
    if (env.report_fd >= 0 && report < 0) return 10;
    corral_worker* w = nullptr;
    if (corral_worker_init(&w) != 0) return 11;
    int rc = body(w, report);
    corral_worker_free(w);
    return rc;
  });
}

// An echo worker: serves connections until accept() says ESHUTDOWN (exit 0).
// Reports 'A' on each accept and 'D' when a connection is done.
int echo_worker(corral_worker* w, int report) {
  for (;;) {
    int c = corral_worker_accept(w, nullptr, nullptr, nullptr);
    if (c < 0) return errno == ESHUTDOWN ? 0 : 20;
    if (report >= 0) (void)!::write(report, "A", 1);
    char buf[256];
    for (;;) {
      ssize_t n = ::read(c, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;  // SIGTERM while busy: carry on
      if (n <= 0) break;
      if (::send(c, buf, static_cast<std::size_t>(n), MSG_NOSIGNAL) != n) break;
    }
    ::close(c);
    corral_worker_done(w);
    if (report >= 0) (void)!::write(report, "D", 1);
  }
}

struct Pipe {
  int rd = -1, wr = -1;
  Pipe() {
    int p[2];
    REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
    rd = p[0];
    wr = p[1];
  }
  ~Pipe() {
    ::close(rd);
    ::close(wr);
  }
};

}  // namespace

TEST_SUITE("worker lock") {
  TEST_CASE("the pipe token lock excludes across processes") {
    TempDir dir;
    int fd = make_token_fifo(dir, 1);
    Shared* sh = map_shared();
    constexpr int kProcs = 4, kRounds = 2000;
    run_counters(CORRAL_LOCK_KIND_PIPE, fd, sh, kProcs, kRounds);
    CHECK(sh->counter == std::uint64_t{kProcs} * kRounds);
    CHECK(sh->max_inside == 1);
    CHECK(fionread(fd) == 1);  // the one token is back in the pipe
    ::munmap(sh, sizeof *sh);
    ::close(fd);
  }

  TEST_CASE("without a lock the same harness sees the race (control)") {
    // Shows that the exclusion checks above can fail. A warning, not an
    // error: a race is likely, not certain.
    Shared* sh = map_shared();
    run_counters(CORRAL_LOCK_KIND_NONE, -1, sh, 4, 500);
    WARN(sh->max_inside > 1);
    ::munmap(sh, sizeof *sh);
  }

  TEST_CASE("the fcntl lock excludes across processes sharing one inherited fd") {
    TempDir dir;
    int fd = make_lock_file(dir);  // opened once, before fork: one open file description
    Shared* sh = map_shared();
    constexpr int kProcs = 4, kRounds = 1000;
    run_counters(CORRAL_LOCK_KIND_FCNTL, fd, sh, kProcs, kRounds);
    CHECK(sh->counter == std::uint64_t{kProcs} * kRounds);
    CHECK(sh->max_inside == 1);
    ::munmap(sh, sizeof *sh);
    ::close(fd);
  }

  TEST_CASE("an fcntl lock held by a process killed with SIGKILL is released") {
    TempDir dir;
    int fd = make_lock_file(dir);
    Pipe report;
    ChildGuard children;

    pid_t holder = children.fork_child([&] {
      if (corral_lock_acquire(CORRAL_LOCK_KIND_FCNTL, fd) != 0) return 2;
      (void)!::write(report.wr, "A", 1);
      for (;;) ::pause();  // hold it until killed
    });
    REQUIRE(holder > 0);
    REQUIRE(read_n(report.rd, 1) == "A");

    pid_t waiter = children.fork_child([&] {
      (void)!::write(report.wr, "W", 1);
      if (corral_lock_acquire(CORRAL_LOCK_KIND_FCNTL, fd) != 0) return 2;
      (void)!::write(report.wr, "B", 1);
      return corral_lock_release(CORRAL_LOCK_KIND_FCNTL, fd) == 0 ? 0 : 3;
    });
    REQUIRE(waiter > 0);
    REQUIRE(read_n(report.rd, 1) == "W");

    // The waiter is blocked in F_SETLKW: /proc/locks lists it with "->".
    // (Built with append, not operator+: GCC 12 -O3 warns falsely on the
    // latter, -Wrestrict, GCC bug 105329.)
    std::string needle(" ");
    needle.append(std::to_string(waiter)).append(" ");
    bool blocked = wait_until([&] {
      std::ifstream locks("/proc/locks");
      for (std::string line; std::getline(locks, line);)
        if (line.find("->") != std::string::npos && line.find(needle) != std::string::npos)
          return true;
      return false;
    });
    if (!blocked) MESSAGE("/proc/locks shows no blocked waiter; checking F_GETLK only");
    CHECK_FALSE(readable_now(report.rd));  // the waiter has not got it

    // Seen from a third process (us): the holder owns the lock.
    struct flock fl {};
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    REQUIRE(::fcntl(fd, F_GETLK, &fl) == 0);
    CHECK(fl.l_type == F_WRLCK);
    CHECK(fl.l_pid == holder);

    REQUIRE(::kill(holder, SIGKILL) == 0);
    auto status = children.wait_exit(holder);
    REQUIRE(status);
    CHECK((WIFSIGNALED(*status) && WTERMSIG(*status) == SIGKILL));

    // The kernel dropped the dead holder's lock: the waiter gets it promptly.
    CHECK(read_n(report.rd, 1, 5s) == "B");
    CHECK(exited_with(children.wait_exit(waiter), 0));
    ::close(fd);
  }
}

TEST_SUITE("worker accept") {
  TEST_CASE("a worker serves two busy listeners alternately") {
    TempDir dir;
    int l0 = listen_tcp(), l1 = listen_tcp();
    constexpr unsigned kPerListener = 4;
    std::vector<int> clients0, clients1;
    for (unsigned i = 0; i < kPerListener; i++) {
      clients0.push_back(connect_to(l0));
      clients1.push_back(connect_to(l1));
    }
    // Every connection is queued on both listeners before the worker starts,
    // so the order of service is the worker's choice alone.
    REQUIRE(wait_until(
        [&] { return accept_queue(l0) == kPerListener && accept_queue(l1) == kPerListener; }));

    int lock = make_token_fifo(dir, 1);
    Scoreboard sb;
    make_scoreboard(dir, 2, sb);
    Pipe report;
    WorkerEnv env;
    env.listeners = {l0, l1};
    env.fd_names = "first:second";
    env.lock_kind = "pipe";
    env.lock_fd = lock;
    env.scoreboard_fd = sb.fd;
    env.slot = 1;
    env.report_fd = report.wr;

    ChildGuard children;
    pid_t worker = fork_worker(children, env, [](corral_worker* w, int rep) {
      if (corral_worker_listener_count(w) != 2) return 30;
      if (std::strcmp(corral_worker_listener_name(w, 0), "first") != 0 ||
          std::strcmp(corral_worker_listener_name(w, 1), "second") != 0)
        return 31;
      if (corral_worker_lock_kind(w) != CORRAL_LOCK_KIND_PIPE || corral_worker_slot(w) != 1)
        return 32;
      for (unsigned n = 0; n < 2 * kPerListener; n++) {
        sockaddr_storage peer{};
        socklen_t len = sizeof peer;
        unsigned index = 99;
        int c = corral_worker_accept(w, reinterpret_cast<sockaddr*>(&peer), &len, &index);
        if (c < 0) return 33;
        if (peer.ss_family != AF_INET || index > 1) return 34;
        char msg[2] = {static_cast<char>('0' + index), '\n'};
        (void)!::write(rep, msg, 1);
        (void)::send(c, msg, 2, MSG_NOSIGNAL);
        ::close(c);
        corral_worker_done(w);
      }
      return 0;
    });
    REQUIRE(worker > 0);

    std::string order = read_n(report.rd, 2 * kPerListener);
    auto status = children.wait_exit(worker);
    REQUIRE(exited_with(status, 0));
    INFO("order of service: " << order);
    REQUIRE(order.size() == 2 * kPerListener);
    for (std::size_t i = 1; i < order.size(); i++) CHECK(order[i] != order[i - 1]);

    // Each client got the index of the listener it connected to.
    for (int c : clients0) CHECK(read_n(c, 2) == "0\n");
    for (int c : clients1) CHECK(read_n(c, 2) == "1\n");

    // The token is back, and the slot tells the story.
    CHECK(fionread(lock) == 1);
    CHECK(sb.state(1) == CORRAL_SLOT_IDLE);
    CHECK(sb.lock(1) == CORRAL_LOCK_NONE);
    CHECK(__atomic_load_n(&sb.slot(1)->requests, __ATOMIC_ACQUIRE) == 2 * kPerListener);
    CHECK(sb.state(0) == CORRAL_SLOT_STARTING);  // nobody else's slot was touched

    for (int c : clients0) ::close(c);
    for (int c : clients1) ::close(c);
    ::close(l0);
    ::close(l1);
    ::close(lock);
  }

  TEST_CASE("grown slots: accepts counted per listener, refusals counted, reports set") {
    TempDir dir;
    int l0 = listen_tcp();
    int l1 = listen_tcp();
    int lock = make_token_fifo(dir, 1);
    Scoreboard sb;
    make_scoreboard(dir, 2, sb, true);
    // What a lying predecessor or a worker of another slot left: slot 0 untouched by us.
    __atomic_store_n(&sb.ext(0)->accepted[0], std::uint64_t{77}, __ATOMIC_RELEASE);
    WorkerEnv env;
    env.listeners = {l0, l1};
    env.lock_kind = "pipe";
    env.lock_fd = lock;
    env.scoreboard_fd = sb.fd;
    env.slot = 1;
    ChildGuard children;
    pid_t worker = fork_worker(children, env, [](corral_worker* w, int) {
      for (int n = 0; n < 5; n++) {
        unsigned index = 99;
        int c = corral_worker_accept(w, nullptr, nullptr, &index);
        if (c < 0) return 33;
        ::close(c);
        if (n == 4) corral_worker_count_refused(w);  // the last one: closed unserved
        corral_worker_done(w);
      }
      return 0;
    });
    REQUIRE(worker > 0);
    std::vector<int> clients;
    for (int i = 0; i < 3; i++) clients.push_back(connect_to(l1));
    for (int i = 0; i < 2; i++) clients.push_back(connect_to(l0));
    REQUIRE(exited_with(children.wait_exit(worker), 0));
    CHECK(__atomic_load_n(&sb.slot(1)->requests, __ATOMIC_ACQUIRE) == 5);
    CHECK(__atomic_load_n(&sb.ext(1)->accepted[0], __ATOMIC_ACQUIRE) == 2);
    CHECK(__atomic_load_n(&sb.ext(1)->accepted[1], __ATOMIC_ACQUIRE) == 3);
    CHECK(__atomic_load_n(&sb.ext(1)->accepted[2], __ATOMIC_ACQUIRE) == 0);
    CHECK(__atomic_load_n(&sb.ext(1)->refused, __ATOMIC_ACQUIRE) == 1);
    CHECK((__atomic_load_n(&sb.ext(1)->reports, __ATOMIC_ACQUIRE) & CORRAL_SB_REPORTS_LISTENERS) !=
          0);
    CHECK(__atomic_load_n(&sb.ext(0)->accepted[0], __ATOMIC_ACQUIRE) == 77);
    CHECK(__atomic_load_n(&sb.ext(0)->reports, __ATOMIC_ACQUIRE) == 0);
    for (int c : clients) ::close(c);
    ::close(l0);
    ::close(l1);
    ::close(lock);
  }

  TEST_CASE("first-layout slots: the library writes none of the grown fields") {
    TempDir dir;
    int l = listen_tcp();
    Scoreboard sb;
    make_scoreboard(dir, 2, sb);  // 64-byte slots: slot 0's bytes 64.. are slot 1
    WorkerEnv env;
    env.listeners = {l};
    env.scoreboard_fd = sb.fd;
    env.slot = 0;
    ChildGuard children;
    pid_t worker = fork_worker(children, env, [](corral_worker* w, int) {
      int c = corral_worker_accept(w, nullptr, nullptr, nullptr);
      if (c < 0) return 33;
      ::close(c);
      corral_worker_count_refused(w);  // nowhere to count: harmless
      corral_worker_done(w);
      return 0;
    });
    REQUIRE(worker > 0);
    int c = connect_to(l);
    REQUIRE(exited_with(children.wait_exit(worker), 0));
    CHECK(__atomic_load_n(&sb.slot(0)->requests, __ATOMIC_ACQUIRE) == 1);
    // Slot 1 is exactly as the supervisor left it.
    CHECK(sb.state(1) == CORRAL_SLOT_STARTING);
    CHECK(__atomic_load_n(&sb.slot(1)->requests, __ATOMIC_ACQUIRE) == 0);
    CHECK(__atomic_load_n(&sb.slot(1)->pid, __ATOMIC_ACQUIRE) == 0);
    CHECK(sb.lock(1) == CORRAL_LOCK_NONE);
    ::close(c);
    ::close(l);
  }

  TEST_CASE("SIGTERM to an idle worker waiting for the pipe token: exit 0, no token taken") {
    TempDir dir;
    int l = listen_tcp();
    int lock = make_token_fifo(dir, 0);  // someone else holds the token
    Scoreboard sb;
    make_scoreboard(dir, 1, sb);
    WorkerEnv env;
    env.listeners = {l};
    env.lock_fd = lock;  // no CORRAL_LOCK_KIND: the library tells a FIFO by fstat
    env.scoreboard_fd = sb.fd;
    ChildGuard children;
    pid_t worker = fork_worker(children, env, echo_worker);
    REQUIRE(worker > 0);
    REQUIRE(wait_until([&] { return sb.lock(0) == CORRAL_LOCK_WAITING; }));
    CHECK(sb.state(0) == CORRAL_SLOT_IDLE);

    REQUIRE(::kill(worker, SIGTERM) == 0);
    CHECK(exited_with(children.wait_exit(worker), 0));
    CHECK(fionread(lock) == 0);
    CHECK(sb.state(0) == CORRAL_SLOT_STOPPING);
    CHECK(sb.lock(0) == CORRAL_LOCK_NONE);
    ::close(l);
    ::close(lock);
  }

  TEST_CASE("SIGTERM to an idle worker holding the pipe token: the token comes back") {
    TempDir dir;
    int l = listen_tcp();
    int lock = make_token_fifo(dir, 1);
    Scoreboard sb;
    make_scoreboard(dir, 1, sb);
    WorkerEnv env;
    env.listeners = {l};
    env.lock_kind = "pipe";
    env.lock_fd = lock;
    env.scoreboard_fd = sb.fd;
    ChildGuard children;
    pid_t worker = fork_worker(children, env, echo_worker);
    REQUIRE(worker > 0);
    REQUIRE(wait_until([&] { return sb.lock(0) == CORRAL_LOCK_HELD; }));
    CHECK(fionread(lock) == 0);

    REQUIRE(::kill(worker, SIGTERM) == 0);
    CHECK(exited_with(children.wait_exit(worker), 0));
    CHECK(fionread(lock) == 1);
    CHECK(sb.state(0) == CORRAL_SLOT_STOPPING);
    CHECK(sb.lock(0) == CORRAL_LOCK_NONE);
    ::close(l);
    ::close(lock);
  }

  TEST_CASE("SIGTERM to a busy worker: it finishes the connection, then exits 0") {
    TempDir dir;
    int l = listen_tcp();
    int lock = make_lock_file(dir);
    Scoreboard sb;
    make_scoreboard(dir, 1, sb);
    Pipe report;
    WorkerEnv env;
    env.listeners = {l};
    env.lock_kind = "fcntl";
    env.lock_fd = lock;
    env.scoreboard_fd = sb.fd;
    env.report_fd = report.wr;
    ChildGuard children;
    pid_t worker = fork_worker(children, env, echo_worker);
    REQUIRE(worker > 0);

    int c = connect_to(l);
    REQUIRE(read_n(report.rd, 1) == "A");
    REQUIRE(wait_until([&] { return sb.state(0) == CORRAL_SLOT_BUSY; }));
    CHECK(sb.lock(0) == CORRAL_LOCK_NONE);
    CHECK(__atomic_load_n(&sb.slot(0)->requests, __ATOMIC_ACQUIRE) == 1);

    REQUIRE(::kill(worker, SIGTERM) == 0);
    // Still served after the signal.
    REQUIRE(::send(c, "ping\n", 5, MSG_NOSIGNAL) == 5);
    CHECK(read_n(c, 5) == "ping\n");
    ::close(c);  // done: the worker's next accept says ESHUTDOWN
    CHECK(exited_with(children.wait_exit(worker), 0));
    CHECK(read_n(report.rd, 1) == "D");
    CHECK(sb.state(0) == CORRAL_SLOT_STOPPING);
    ::close(l);
    ::close(lock);
  }

  TEST_CASE("STOPPING written in the slot by the supervisor is kept and obeyed") {
    TempDir dir;
    int l = listen_tcp();
    Scoreboard sb;
    make_scoreboard(dir, 1, sb);
    Pipe report;
    WorkerEnv env;
    env.listeners = {l};
    env.lock_kind = "epoll";
    env.scoreboard_fd = sb.fd;
    env.report_fd = report.wr;
    ChildGuard children;
    pid_t worker = fork_worker(children, env, echo_worker);
    REQUIRE(worker > 0);

    int c = connect_to(l);
    REQUIRE(read_n(report.rd, 1) == "A");
    REQUIRE(wait_until([&] { return sb.state(0) == CORRAL_SLOT_BUSY; }));
    __atomic_store_n(&sb.slot(0)->state, std::uint32_t{CORRAL_SLOT_STOPPING}, __ATOMIC_RELEASE);
    ::close(c);  // corral_worker_done must not turn STOPPING back into IDLE
    CHECK(exited_with(children.wait_exit(worker), 0));
    CHECK(sb.state(0) == CORRAL_SLOT_STOPPING);
    ::close(l);
  }

  TEST_CASE("a scoreboard that fails validation is ignored, not fatal") {
    TempDir dir;
    int l = listen_tcp();
    Scoreboard sb;
    make_scoreboard(dir, 1, sb);
    std::memcpy(static_cast<corral_sb_header*>(sb.map)->magic, "GARBAGE!", 8);
    WorkerEnv env;
    env.listeners = {l};
    env.scoreboard_fd = sb.fd;
    ChildGuard children;
    pid_t worker = fork_worker(children, env, [](corral_worker* w, int) {
      return corral_worker_slot(w) == -1 && corral_worker_lock_kind(w) == CORRAL_LOCK_KIND_NONE
                 ? 0
                 : 40;
    });
    REQUIRE(worker > 0);
    CHECK(exited_with(children.wait_exit(worker), 0));
    CHECK(sb.state(0) == CORRAL_SLOT_STARTING);
    ::close(l);
  }

  TEST_CASE("LISTEN_FDS meant for another pid is ignored, as sd_listen_fds does") {
    int l = listen_tcp();
    WorkerEnv env;
    env.listeners = {l};
    ChildGuard children;
    pid_t worker = children.fork_child([&] {
      if (place_worker_fds(env) != -1) return 10;
      ::setenv("LISTEN_PID", std::to_string(::getppid()).c_str(), 1);
      corral_worker* w = nullptr;
      return corral_worker_init(&w) == -ENOENT ? 0 : 41;
    });
    REQUIRE(worker > 0);
    CHECK(exited_with(children.wait_exit(worker), 0));
    ::close(l);
  }
}
