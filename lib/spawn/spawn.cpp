#include "spawn/spawn.h"

#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/close_range.h>
#include <pwd.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/unique_fd.h"
#include "spawn/report.h"

namespace corral {
namespace {

enum class Step : int {
  dup = CORRAL_SPAWN_DUP,
  setpgid = CORRAL_SPAWN_SETPGID,
  chdir = CORRAL_SPAWN_CHDIR,
  setgroups = CORRAL_SPAWN_SETGROUPS,
  setgid = CORRAL_SPAWN_SETGID,
  setuid = CORRAL_SPAWN_SETUID,
  pdeathsig = CORRAL_SPAWN_PDEATHSIG,
  exec = CORRAL_SPAWN_EXEC,
  exec_helper = CORRAL_SPAWN_EXEC_HELPER,
  rlimit = CORRAL_SPAWN_RLIMIT,
  cgroup = CORRAL_SPAWN_CGROUP,
};

const char* step_name(Step step) {
  switch (step) {
    case Step::dup: return "place fds for";
    case Step::setpgid: return "setpgid/setsid for";
    case Step::chdir: return "chdir for";
    case Step::setgroups: return "setgroups for";
    case Step::setgid: return "setgid for";
    case Step::setuid: return "setuid for";
    case Step::pdeathsig: return "prctl PR_SET_PDEATHSIG for";
    case Step::exec: return "exec";
    case Step::exec_helper: return "exec the inetd acceptor for";
    case Step::rlimit: return "setrlimit (limits:) for";
    case Step::cgroup: return "move into the slot's cgroup (cgroup:) for";
  }
  return "spawn";
}

using ChildReport = corral_spawn_report;

// Everything the child touches, laid out before fork so the child allocates nothing.
struct Prepared {
  const SpawnPlan* plan = nullptr;
  std::vector<char*> argv;
  std::vector<std::string> env_storage;
  std::vector<char*> envp;
  char* listen_pid_slot = nullptr;  // points into env_storage: "LISTEN_PID=" + digits
  int devnull = -1;
  const std::vector<int>* reset_signals = nullptr;
};

[[noreturn]] void child_fail(int report_fd, Step step) {
  ChildReport r{static_cast<int>(step), errno};
  // A short write to a pipe of this size is atomic; nothing to do if it fails.
  [[maybe_unused]] auto n = ::write(report_fd, &r, sizeof r);
  _exit(127);
}

void format_pid(char* out, pid_t pid) {
  char digits[16];
  int n = 0;
  auto v = static_cast<unsigned>(pid);
  do {
    digits[n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v != 0);
  for (int i = 0; i < n; ++i) out[i] = digits[n - 1 - i];
  out[n] = '\0';
}

// Runs in the child between fork and exec: only async-signal-safe calls. Moves
// report_fd and exec_fd (when >= 0) out of the way of the inherited fds.
void prepare_child(const Prepared& p, int& report_fd, int& exec_fd) {
  const SpawnPlan& plan = *p.plan;
  // Dispositions first, then the mask: a signal pending in the supervisor's blocked set
  // must not reach a handler that does not exist here.
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int sig : *p.reset_signals) ::sigaction(sig, &dfl, nullptr);
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);

  // A new process group led by the child (its pid), in a new session when asked.
  if (plan.new_session ? ::setsid() < 0 : ::setpgid(0, 0) != 0)
    child_fail(report_fd, Step::setpgid);

  // Into the slot's cgroups before anything else (and before the fds are moved: these
  // numbers may lie where the inherited ones go). No path lookup: fds the parent opened.
  if (!plan.cgroup_procs.empty()) {
    char pid[16];
    format_pid(pid, ::getpid());
    const size_t len = std::strlen(pid);
    for (int fd : plan.cgroup_procs) {
      if (::write(fd, pid, len) != static_cast<ssize_t>(len)) child_fail(report_fd, Step::cgroup);
    }
  }

  // Move every source above the target range first, so a dup2 onto 3+i never
  // clobbers a source still to be placed (or the report pipe).
  const int n = static_cast<int>(plan.inherit.size());
  const int floor = 3 + n + (plan.pass_report ? 1 : 0);
  int moved_report = ::fcntl(report_fd, F_DUPFD_CLOEXEC, floor);
  if (moved_report < 0) child_fail(report_fd, Step::dup);
  report_fd = moved_report;
  if (exec_fd >= 0) {
    exec_fd = ::fcntl(exec_fd, F_DUPFD_CLOEXEC, floor);
    if (exec_fd < 0) child_fail(report_fd, Step::dup);
  }
  int tmp[64];
  if (n > 64) {
    errno = EMFILE;
    child_fail(report_fd, Step::dup);
  }
  for (int i = 0; i < n; ++i) {
    tmp[i] = ::fcntl(plan.inherit[static_cast<size_t>(i)], F_DUPFD_CLOEXEC, floor);
    if (tmp[i] < 0) child_fail(report_fd, Step::dup);
  }
  int in = plan.stdin_fd >= 0 ? plan.stdin_fd : p.devnull;
  int std_src[3] = {in, plan.stdout_fd, plan.stderr_fd};
  for (int& fd : std_src) {
    if (fd >= 0) {
      fd = ::fcntl(fd, F_DUPFD_CLOEXEC, floor);
      if (fd < 0) child_fail(report_fd, Step::dup);
    }
  }
  for (int i = 0; i < 3; ++i) {
    if (std_src[i] >= 0 && ::dup2(std_src[i], i) < 0) child_fail(report_fd, Step::dup);
  }
  // dup2 onto a different fd clears FD_CLOEXEC on the new one: exactly the inheritance wanted.
  for (int i = 0; i < n; ++i) {
    if (::dup2(tmp[i], 3 + i) < 0) child_fail(report_fd, Step::dup);
  }
  if (plan.pass_report && ::dup2(report_fd, 3 + n) < 0) child_fail(report_fd, Step::dup);
  // Anything else still open without CLOEXEC (leaked to corral by whoever started it)
  // must not reach the worker either.
  ::syscall(SYS_close_range, static_cast<unsigned>(floor), ~0U, CLOSE_RANGE_CLOEXEC);

  if (plan.nofile) ::setrlimit(RLIMIT_NOFILE, &*plan.nofile);
  // The job's limits: (before the uid change, so that root may raise hard limits).
  for (const auto& [resource, limit] : plan.rlimits) {
    if (::setrlimit(static_cast<__rlimit_resource>(resource), &limit) != 0)
      child_fail(report_fd, Step::rlimit);
  }
  if (!plan.cwd.empty() && ::chdir(plan.cwd.c_str()) != 0) child_fail(report_fd, Step::chdir);

  if (plan.credentials) {
    // Raw system calls: glibc's wrappers may try to synchronise the credentials of every
    // thread of the process (setxid), and this child shares the parent's memory.
    const auto& c = *plan.credentials;
    if (::syscall(SYS_setgroups, c.groups.size(), c.groups.data()) != 0)
      child_fail(report_fd, Step::setgroups);
    if (::syscall(SYS_setgid, c.gid) != 0) child_fail(report_fd, Step::setgid);
    if (::syscall(SYS_setuid, c.uid) != 0) child_fail(report_fd, Step::setuid);
    // setuid() to a non-root uid empties the permitted and effective sets but keeps the
    // inheritable one (and an ambient set the kernel did not clear with them); a program
    // with file capabilities would pick those up at exec. Clear both. No
    // PR_SET_NO_NEW_PRIVS: setuid helpers of legacy programs must keep working. A
    // failure is reported as a failed setuid (report.h has no step of its own for it).
    if (::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL)
      child_fail(report_fd, Step::setuid);
    __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct caps[_LINUX_CAPABILITY_U32S_3] = {};
    if (::syscall(SYS_capget, &header, caps) != 0) child_fail(report_fd, Step::setuid);
    for (auto& cap : caps) cap.inheritable = 0;
    if (::syscall(SYS_capset, &header, caps) != 0) child_fail(report_fd, Step::setuid);
  }
  // After the uid change, which clears it (prctl(2)); then close the race with a
  // supervisor that died before this point.
  if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) child_fail(report_fd, Step::pdeathsig);
  if (plan.parent != 0 && ::getppid() != plan.parent) _exit(1);

  if (p.listen_pid_slot != nullptr) format_pid(p.listen_pid_slot, ::getpid());
}

// The child of clone(CLONE_VM | CLONE_VFORK): prepares and execs, or reports and exits.
// It must not return into the parent's frames nor change the parent's memory.
struct ExecChild {
  const Prepared* p;
  int report_fd;
};

int exec_child_main(void* arg) {
  auto* c = static_cast<ExecChild*>(arg);
  int report_fd = c->report_fd;
  const SpawnPlan& plan = *c->p->plan;
  int exec_fd = plan.exec_fd;
  prepare_child(*c->p, report_fd, exec_fd);
  if (exec_fd >= 0) {
    // A CLOEXEC fd can be exec'd this way as long as it is not a script (execveat(2)).
    ::syscall(SYS_execveat, exec_fd, "", c->p->argv.data(), c->p->envp.data(), AT_EMPTY_PATH);
    child_fail(report_fd, Step::exec_helper);
  }
  ::execve(plan.path.c_str(), c->p->argv.data(), c->p->envp.data());
  child_fail(report_fd, Step::exec);
}

// One stack for every clone child: the parent is suspended until the child has exec'd
// or exited, so two children never use it at once.
void* child_stack_top() {
  constexpr size_t kSize = 256 * 1024;
  static void* stack = [] {
    void* s = ::mmap(nullptr, kSize, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    return s == MAP_FAILED ? nullptr : s;
  }();
  if (stack == nullptr) return nullptr;
  return static_cast<char*>(stack) + kSize;  // stacks grow down on x86-64 and arm64
}

// The signals whose disposition the child must set back to SIG_DFL before it unblocks
// them: every one not at SIG_DFL when first asked (ignored by whoever started corral,
// or a sanitizer's handler), plus the two corral changes later (SIGPIPE ignored, the
// scoreboard's SIGBUS guard). Resetting only these saves some 60 system calls a spawn.
const std::vector<int>& signals_to_reset() {
  static const std::vector<int> list = [] {
    std::vector<int> out{SIGPIPE, SIGBUS};
    for (int sig = 1; sig < NSIG; ++sig) {
      if (sig == SIGKILL || sig == SIGSTOP || sig == SIGPIPE || sig == SIGBUS) continue;
      struct sigaction old {};
      if (::sigaction(sig, nullptr, &old) == 0 && old.sa_handler != SIG_DFL) out.push_back(sig);
    }
    return out;
  }();
  return list;
}

void prepare_vectors(const SpawnPlan& plan, Prepared& p) {
  p.plan = &plan;
  for (const auto& a : plan.argv) p.argv.push_back(const_cast<char*>(a.c_str()));
  p.argv.push_back(nullptr);
  p.env_storage = plan.env;
  if (plan.listen_pid) p.env_storage.emplace_back("LISTEN_PID=" + std::string(20, '\0'));
  for (auto& e : p.env_storage) p.envp.push_back(e.data());
  p.envp.push_back(nullptr);
  if (plan.listen_pid) p.listen_pid_slot = p.env_storage.back().data() + std::strlen("LISTEN_PID=");
}

Result<pid_t> do_spawn(const SpawnPlan& plan, UniqueFd* report_out) noexcept {
  try {
    Prepared p;
    prepare_vectors(plan, p);
    // Opened once: a spawn per inetd connection should not also cost an open().
    static UniqueFd devnull;
    if (!devnull) devnull.reset(::open("/dev/null", O_RDWR | O_CLOEXEC));
    if (!devnull) return errno_error("open /dev/null");
    p.devnull = devnull.get();
    p.reset_signals = &signals_to_reset();
    int pipefd[2];
    if (::pipe2(pipefd, O_CLOEXEC) != 0) return errno_error("pipe2");
    UniqueFd report_r(pipefd[0]);
    UniqueFd report_w(pipefd[1]);

    // Share the address space until the exec (CLONE_VM | CLONE_VFORK, as posix_spawn
    // does), so that no page table is copied; on a VM with many mappings fork() costs
    // milliseconds. The child touches only its own stack and the kernel.
    ExecChild child{&p, report_w.get()};
    pid_t pid =
        ::clone(exec_child_main, child_stack_top(), CLONE_VM | CLONE_VFORK | SIGCHLD, &child);
    if (pid < 0) return errno_error("clone for " + plan.path);
    // With pass_report our write end stays open until the look below (see there).
    if (!plan.pass_report) report_w.reset();
    ChildReport report{};
    ssize_t got;
    if (report_out != nullptr) {
      // CLONE_VFORK: the child has exec'd or exited by now. A failure before or at the
      // exec was written before it exited, so it is in the pipe already: report it now,
      // and the caller's loop stops at the first failed start instead of starting a
      // whole burst of them. Otherwise (the exec succeeded or is still closing fds, or
      // the program keeps the pipe, as the inetd acceptor does) the caller reads it at
      // reap time (read_spawn_report).
      ::fcntl(report_r.get(), F_SETFL, O_NONBLOCK);
      got = ::read(report_r.get(), &report, sizeof report);
      if (got == static_cast<ssize_t>(sizeof report) && plan.pass_report &&
          report.step == CORRAL_SPAWN_EXEC) {
        // Not the start's failure: the program already ran, accepted a connection and
        // failed to exec its own program before this look (an inetd acceptor, when this
        // process was slow to get the CPU back). Put it back for the reap.
        [[maybe_unused]] auto n = ::write(report_w.get(), &report, sizeof report);
        got = -1;
        errno = EAGAIN;
      }
      // Kept even at EOF: until its worker is up, a start holds its pipe (an fd budget
      // the same under any timing; test_supervision's EMFILE test relies on it).
      const bool failed = got == static_cast<ssize_t>(sizeof report);
      const bool pending = !failed && (got >= 0 || errno == EAGAIN || errno == EINTR);
      report_w.reset();
      if (pending) *report_out = std::move(report_r);
      if (!failed) return pid;
    } else {
      report_w.reset();
      do {
        got = ::read(report_r.get(), &report, sizeof report);
      } while (got < 0 && errno == EINTR);
    }
    if (got == static_cast<ssize_t>(sizeof report)) {
      int status = 0;
      while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
      auto step = static_cast<Step>(report.step);
      return Error{report.err, std::string(step_name(step)) + " " + plan.path};
    }
    return pid;
  } catch (const std::exception& e) {
    return Error{ENOMEM, std::string("spawn ") + plan.path + ": " + e.what()};
  }
}

}  // namespace

Result<pid_t> spawn_process(const SpawnPlan& plan, UniqueFd* report) noexcept {
  return do_spawn(plan, report);
}

std::optional<Error> read_spawn_report(int fd, const std::string& path) noexcept {
  ChildReport report{};
  if (fd < 0 || ::read(fd, &report, sizeof report) != static_cast<ssize_t>(sizeof report))
    return std::nullopt;
  try {
    return Error{report.err, std::string(step_name(static_cast<Step>(report.step))) + " " + path};
  } catch (...) {
    return Error{report.err, "exec"};
  }
}

Credentials resolve_credentials(const std::string& user, const std::string& group_name) {
  Credentials c;
  std::vector<char> buf(16384);
  passwd pw{};
  passwd* pwr = nullptr;
  if (getpwnam_r(user.c_str(), &pw, buf.data(), buf.size(), &pwr) != 0 || pwr == nullptr)
    throw SetupError("user \"" + user + "\" does not exist");
  c.uid = pw.pw_uid;
  c.gid = pw.pw_gid;
  c.home = pw.pw_dir != nullptr ? pw.pw_dir : "/";
  c.user = user;
  if (!group_name.empty()) {
    group gr{};
    group* grr = nullptr;
    std::vector<char> gbuf(16384);
    if (getgrnam_r(group_name.c_str(), &gr, gbuf.data(), gbuf.size(), &grr) != 0 || grr == nullptr)
      throw SetupError("group \"" + group_name + "\" does not exist");
    c.gid = gr.gr_gid;
  }
  int count = 64;
  std::vector<gid_t> groups(static_cast<size_t>(count));
  if (getgrouplist(user.c_str(), c.gid, groups.data(), &count) < 0) {
    groups.resize(static_cast<size_t>(count));
    getgrouplist(user.c_str(), c.gid, groups.data(), &count);
  }
  groups.resize(static_cast<size_t>(count));
  c.groups = groups;
  return c;
}

void set_env(std::vector<std::string>& env, const std::string& key, const std::string& value) {
  std::string prefix = key + "=";
  for (auto& e : env) {
    if (e.starts_with(prefix)) {
      e = prefix + value;
      return;
    }
  }
  env.push_back(prefix + value);
}

}  // namespace corral
