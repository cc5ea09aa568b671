#include "scoreboard/scoreboard.h"

#include <fcntl.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "common/safe_fs.h"

namespace corral {
namespace {

template <typename T>
T load(const T* p) {
  return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
template <typename T>
void store(T* p, T v) {
  __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

std::uint64_t file_size_for(std::uint32_t header_size, std::uint32_t slot_size, unsigned slots) {
  return header_size + static_cast<std::uint64_t>(slots) * slot_size;
}

// Copies text into a fixed NUL-padded field (always NUL-terminated).
void copy_text(char* dst, size_t size, const std::string& text) {
  size_t n = std::min(size - 1, text.size());
  std::memset(dst, 0, size);
  text.copy(dst, n);
}

// A worker holds a writable fd on its job's scoreboard, so it can ftruncate() the file;
// the supervisor's next read of a slot past the new end would then fault with SIGBUS.
// The guard remembers the size each scoreboard must have; its SIGBUS handler restores
// the sizes (ftruncate is async-signal-safe) and returns, and the faulting access is
// retried on a file that is whole again. A SIGBUS with nothing to restore is a real one:
// the default action is put back and the fault recurs.
constexpr int kGuardSlots = 256;
struct Guarded {
  int fd;
  off_t size;
};
Guarded g_guarded[kGuardSlots];
volatile sig_atomic_t g_restored = 0;

void on_sigbus(int sig, siginfo_t*, void*) {
  int saved = errno;
  bool restored = false;
  for (auto& g : g_guarded) {
    if (g.fd <= 0) continue;
    struct stat st {};
    if (::fstat(g.fd, &st) == 0 && st.st_size < g.size && ::ftruncate(g.fd, g.size) == 0)
      restored = true;
  }
  if (restored) {
    g_restored = g_restored + 1;
  } else {
    ::signal(sig, SIG_DFL);
  }
  errno = saved;
}

void guard(int fd, size_t size) {
  static bool installed = false;
  if (!installed) {
    struct sigaction sa {};
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGBUS, &sa, nullptr);
    installed = true;
  }
  for (auto& g : g_guarded) {
    if (g.fd == fd) {
      g.size = static_cast<off_t>(size);
      return;
    }
  }
  for (auto& g : g_guarded) {
    if (g.fd <= 0) {
      g.size = static_cast<off_t>(size);
      g.fd = fd;
      return;
    }
  }
}

void unguard(int fd) {
  for (auto& g : g_guarded) {
    if (g.fd == fd) g.fd = 0;
  }
}

}  // namespace

int scoreboard_truncations_repaired() {
  return g_restored;
}

std::uint64_t monotonic_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000ULL +
         static_cast<std::uint64_t>(ts.tv_nsec);
}

std::uint64_t realtime_ns() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000ULL +
         static_cast<std::uint64_t>(ts.tv_nsec);
}

std::string scoreboard_file_name(const std::string& job) {
  return job + ".scoreboard";
}

std::string validate_header(const corral_sb_header& h, std::uint64_t file_size) {
  if (std::memcmp(h.magic, CORRAL_SB_MAGIC, 8) != 0) return "not a corral scoreboard (bad magic)";
  if (h.version != CORRAL_SB_VERSION)
    return "scoreboard version " + std::to_string(h.version) + ", expected " +
           std::to_string(CORRAL_SB_VERSION);
  // Both layouts (protocol.h): the first (1024, 64) and the grown one (2048, 256), or
  // anything a later version may grow to, as long as every field stays aligned.
  if (h.header_size < CORRAL_SB_HEADER_SIZE || h.header_size % 64 != 0 ||
      h.header_size > kMaxHeaderSize)
    return "unexpected header size " + std::to_string(h.header_size);
  if (h.slot_size < CORRAL_SB_SLOT_SIZE || h.slot_size % 64 != 0 || h.slot_size > kMaxSlotSize)
    return "unexpected slot size " + std::to_string(h.slot_size);
  if (h.slot_count > CORRAL_SB_MAX_SLOTS) return "slot count out of range";
  if (file_size < file_size_for(h.header_size, h.slot_size, h.slot_count))
    return "file shorter than its slots";
  return "";
}

SlotView decode_slot(const corral_sb_slot& raw, const corral_sb_slot_ext* ext) {
  SlotView v;
  auto state = load(&raw.state);
  if (state <= CORRAL_SLOT_RUNNING) {
    v.state = static_cast<corral_slot_state>(state);
  } else {
    v.state = CORRAL_SLOT_EMPTY;
    v.state_valid = false;
  }
  v.pid = load(&raw.pid);
  if (v.pid < 0) {
    // Never hand out a negative pid: kill() would read it as a process group.
    v.pid = 0;
    v.pid_valid = false;
  }
  v.generation = load(&raw.generation);
  auto lock = load(&raw.lock);
  if (lock <= CORRAL_LOCK_HELD) {
    v.lock = static_cast<corral_lock_state>(lock);
  } else {
    v.lock = CORRAL_LOCK_NONE;
    v.lock_valid = false;
  }
  v.requests = load(&raw.requests);
  v.state_since_ns = load(&raw.state_since_ns);
  v.lock_since_ns = load(&raw.lock_since_ns);
  if (ext != nullptr) {
    v.extended = true;
    v.reports_listeners = (load(&ext->reports) & CORRAL_SB_REPORTS_LISTENERS) != 0;
    v.refused = load(&ext->refused);
    v.oom_kills = load(&ext->oom_kills);
    for (std::size_t i = 0; i < CORRAL_SB_LISTENER_COUNTERS; ++i)
      v.accepted[i] = load(&ext->accepted[i]);
  }
  return v;
}

Scoreboard::Scoreboard(Scoreboard&& other) noexcept
    : fd_(std::move(other.fd_)),
      path_(std::move(other.path_)),
      base_(std::exchange(other.base_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      slot_count_(std::exchange(other.slot_count_, 0)),
      header_size_(other.header_size_),
      slot_size_(other.slot_size_),
      writable_(other.writable_) {}

Scoreboard& Scoreboard::operator=(Scoreboard&& other) noexcept {
  if (this != &other) {
    unmap();
    fd_ = std::move(other.fd_);
    path_ = std::move(other.path_);
    base_ = std::exchange(other.base_, nullptr);
    size_ = std::exchange(other.size_, 0);
    slot_count_ = std::exchange(other.slot_count_, 0);
    header_size_ = other.header_size_;
    slot_size_ = other.slot_size_;
    writable_ = other.writable_;
  }
  return *this;
}

Scoreboard::~Scoreboard() {
  unmap();
}

void Scoreboard::unmap() {
  if (base_ != nullptr) {
    if (writable_) unguard(fd_.get());
    ::munmap(base_, size_);
  }
  base_ = nullptr;
}

namespace {

// Whether `pid` is a live process of this user: the supervisor that wrote a header.
// (/proc/PID belongs to the process's effective uid.)
bool live_process_of_ours(pid_t pid) {
  if (pid <= 0) return false;
  struct stat st {};
  if (::stat(("/proc/" + std::to_string(pid)).c_str(), &st) != 0) return false;
  return st.st_uid == ::geteuid();
}

pid_t header_pid(int fd) {
  corral_sb_header h{};
  if (::pread(fd, &h, sizeof h, 0) != static_cast<ssize_t>(sizeof h) ||
      std::memcmp(h.magic, CORRAL_SB_MAGIC, 8) != 0)
    return 0;
  return h.supervisor_pid;
}

pid_t header_pid_at(int dir, const std::string& name) {
  UniqueFd fd(::openat(dir, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
  return fd ? header_pid(fd.get()) : 0;
}

bool same_inode(int fd, int dir, const std::string& name) {
  struct stat a {};
  struct stat b {};
  return ::fstat(fd, &a) == 0 && ::fstatat(dir, name.c_str(), &b, AT_SYMLINK_NOFOLLOW) == 0 &&
         a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

// Where a new scoreboard is prepared: hidden, and not "*.scoreboard", which status lists.
std::string temp_name(const std::string& name) {
  return "." + name + "." + std::to_string(::getpid()) + ".new";
}

std::string in_use_message(const std::string& path, pid_t pid) {
  return "scoreboard " + path + " is in use by another corral" +
         (pid > 0 ? " (pid " + std::to_string(pid) + ")" : std::string()) +
         "; stop it, or give this one another scoreboard_dir";
}

}  // namespace

Scoreboard Scoreboard::create(const std::string& dir, const std::string& job, unsigned slot_count) {
  UniqueFd dirfd = open_private_directory(dir);
  const std::string name = scoreboard_file_name(job);
  const std::string path = dir + "/" + name;
  const uid_t euid = ::geteuid();
  // An existing file is only ever replaced, never reused: a reader or a worker of a
  // dead supervisor may still hold it open (and an old one may have had another mode).
  // The new file is prepared under a temporary name, mode 0600 until it is locked, so
  // that nobody else can open and flock it first, then renamed into place.
  for (int attempt = 0; attempt < 8; ++attempt) {
    UniqueFd old(
        ::openat(dirfd.get(), name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
    if (!old && errno != ENOENT) {
      if (errno == ELOOP)
        throw SetupError("scoreboard " + path +
                         " is a symbolic link; corral does not follow it (remove it)");
      throw SetupError("open scoreboard", path, errno);
    }
    bool replaced_hostile_lock = false;
    if (old) {
      struct stat st {};
      if (::fstat(old.get(), &st) != 0) throw SetupError("stat", path, errno);
      if (!S_ISREG(st.st_mode) || st.st_uid != euid)
        throw SetupError("scoreboard " + path + " is not a regular file owned by uid " +
                         std::to_string(euid) + "; refusing to use or replace it (remove it)");
      if (::flock(old.get(), LOCK_EX | LOCK_NB) != 0) {
        if (errno != EWOULDBLOCK) throw SetupError("flock", path, errno);
        // Only a supervisor of this user writes the header (the directory is private,
        // the file ours and 0644), but anyone who can read the file can flock it. A lock
        // whose supervisor is gone is someone else's: replace the file under it.
        // A header others could write (a 0666 leftover) names nobody.
        pid_t pid = (st.st_mode & (S_IWGRP | S_IWOTH)) == 0 ? header_pid(old.get()) : 0;
        if (live_process_of_ours(pid)) throw SetupError(in_use_message(path, pid));
        replaced_hostile_lock = true;
      }
      // Locked (or held by nobody we trust), and still the file at that name?
      if (!same_inode(old.get(), dirfd.get(), name)) continue;
    }
    Scoreboard sb = create_file(dirfd.get(), dir, name, slot_count);
    // Keep `old`'s lock until the new file is in place: a second supervisor that opened
    // the old file then finds it locked, or no longer at that name, and looks again.
    unsigned flags = old ? 0 : RENAME_NOREPLACE;
    const std::string tmp = temp_name(name);
    if (::renameat2(dirfd.get(), tmp.c_str(), dirfd.get(), name.c_str(), flags) != 0) {
      int err = errno;
      ::unlinkat(dirfd.get(), tmp.c_str(), 0);
      if (err == EEXIST) continue;  // created meanwhile: look at it
      throw SetupError("rename scoreboard into place", path, err);
    }
    if (!same_inode(sb.fd(), dirfd.get(), name))
      throw SetupError(in_use_message(path, header_pid_at(dirfd.get(), name)));
    if (replaced_hostile_lock)
      spdlog::warn(
          "scoreboard {} was locked by a process that is not a running corral of uid {} "
          "(a reader, or a leftover); replaced it",
          path, euid);
    return sb;
  }
  throw SetupError("scoreboard " + path +
                   " keeps changing under corral; is another corral "
                   "starting with the same scoreboard_dir?");
}

Scoreboard Scoreboard::create_file(int dirfd, const std::string& dir, const std::string& name,
                                   unsigned slot_count) {
  Scoreboard sb;
  sb.path_ = dir + "/" + name;
  const std::string tmp = temp_name(name);
  // Left by a crash of a process that had our pid: the directory is ours alone.
  ::unlinkat(dirfd, tmp.c_str(), 0);
  sb.fd_ = UniqueFd(
      ::openat(dirfd, tmp.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!sb.fd_) throw SetupError("create scoreboard", dir + "/" + tmp, errno);
  if (::flock(sb.fd_.get(), LOCK_EX | LOCK_NB) != 0) {
    int err = errno;
    ::unlinkat(dirfd, tmp.c_str(), 0);
    throw SetupError("flock", dir + "/" + tmp, err);
  }
  // Workers write through the inherited fd; `corral status` reads as any user.
  ::fchmod(sb.fd_.get(), 0644);
  sb.header_size_ = CORRAL_SB_EXT_HEADER_SIZE;
  sb.slot_size_ = CORRAL_SB_EXT_SLOT_SIZE;
  sb.size_ = file_size_for(sb.header_size_, sb.slot_size_, slot_count);
  auto fail = [&](const char* call, int err) {
    ::unlinkat(dirfd, tmp.c_str(), 0);
    return SetupError(call, sb.path_, err);
  };
  if (::ftruncate(sb.fd_.get(), static_cast<off_t>(sb.size_)) != 0)
    throw fail("resize scoreboard", errno);
  // Reserve the blocks now: on a full filesystem a sparse mapping would SIGBUS at the
  // first write to a new page, in the supervisor or a worker. Fail here instead.
  if (int err = ::posix_fallocate(sb.fd_.get(), 0, static_cast<off_t>(sb.size_));
      err != 0 && err != EOPNOTSUPP && err != EINVAL)
    throw fail("allocate scoreboard", err);
  void* base = ::mmap(nullptr, sb.size_, PROT_READ | PROT_WRITE, MAP_SHARED, sb.fd_.get(), 0);
  if (base == MAP_FAILED) throw fail("mmap", errno);
  sb.base_ = base;
  sb.slot_count_ = slot_count;
  sb.writable_ = true;
  guard(sb.fd_.get(), sb.size_);
  auto* h = static_cast<corral_sb_header*>(base);
  std::memcpy(h->magic, CORRAL_SB_MAGIC, 8);
  h->version = CORRAL_SB_VERSION;
  h->header_size = sb.header_size_;
  h->slot_size = sb.slot_size_;
  store(&h->slot_count, slot_count);
  // Before the file is visible: a second supervisor that finds it locked sees a live pid.
  store(&h->supervisor_pid, static_cast<std::int32_t>(::getpid()));
  return sb;
}

bool Scoreboard::grow(unsigned slot_count) {
  if (slot_count <= slot_count_ || !writable_) return true;
  auto new_size = static_cast<size_t>(file_size_for(header_size_, slot_size_, slot_count));
  if (::ftruncate(fd_.get(), static_cast<off_t>(new_size)) != 0) return false;
  if (int err = ::posix_fallocate(fd_.get(), 0, static_cast<off_t>(new_size));
      err != 0 && err != EOPNOTSUPP && err != EINVAL) {
    errno = err;
    return false;
  }
  void* base = ::mremap(base_, size_, new_size, MREMAP_MAYMOVE);
  if (base == MAP_FAILED) return false;
  base_ = base;
  size_ = new_size;
  slot_count_ = slot_count;
  guard(fd_.get(), size_);
  store(&static_cast<corral_sb_header*>(base_)->slot_count, slot_count);
  return true;
}

Result<Scoreboard> Scoreboard::adopt(int fd, const std::string& path) {
  Scoreboard sb;
  sb.path_ = path;
  sb.fd_ = UniqueFd(fd);
  struct stat st {};
  if (::fstat(fd, &st) != 0) return errno_error("stat " + path);
  sb.size_ = static_cast<size_t>(st.st_size);
  if (sb.size_ < CORRAL_SB_HEADER_SIZE) return Error{0, path + ": too short"};
  void* base = ::mmap(nullptr, sb.size_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (base == MAP_FAILED) return errno_error("mmap " + path);
  sb.base_ = base;
  sb.writable_ = true;
  guard(fd, sb.size_);
  auto h = sb.header();
  auto why = validate_header(h, sb.size_);
  if (!why.empty()) return Error{0, path + ": " + why};
  sb.slot_count_ = h.slot_count;
  sb.header_size_ = h.header_size;
  sb.slot_size_ = h.slot_size;
  return sb;
}

Result<Scoreboard> Scoreboard::open_read_only(const std::string& path) {
  Scoreboard sb;
  sb.path_ = path;
  // O_NONBLOCK: opening a FIFO put in the file's place must not hang the reader.
  // O_NOFOLLOW: a reader never follows a link left in a directory it was pointed at.
  sb.fd_ = UniqueFd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOFOLLOW));
  if (!sb.fd_) return errno_error("open " + path);
  struct stat st {};
  if (::fstat(sb.fd_.get(), &st) != 0) return errno_error("stat " + path);
  if (!S_ISREG(st.st_mode)) return Error{0, path + ": not a regular file"};
  if (static_cast<std::uint64_t>(st.st_size) < CORRAL_SB_HEADER_SIZE)
    return Error{0, path + ": not a corral scoreboard (too short)"};
  sb.size_ = static_cast<size_t>(st.st_size);
  void* base = ::mmap(nullptr, sb.size_, PROT_READ, MAP_SHARED, sb.fd_.get(), 0);
  if (base == MAP_FAILED) return errno_error("mmap " + path);
  sb.base_ = base;
  auto h = sb.header();
  auto why = validate_header(h, sb.size_);
  if (!why.empty()) return Error{0, path + ": " + why};
  sb.slot_count_ = h.slot_count;
  sb.header_size_ = h.header_size;
  sb.slot_size_ = h.slot_size;
  return sb;
}

corral_sb_header Scoreboard::header() const {
  corral_sb_header h{};
  if (base_ != nullptr) std::memcpy(&h, base_, sizeof h);
  h.job_name[sizeof h.job_name - 1] = '\0';
  h.listeners[sizeof h.listeners - 1] = '\0';
  return h;
}

void Scoreboard::write_header(pid_t supervisor_pid, std::uint32_t generation,
                              std::uint64_t started_realtime_ns, corral_job_mode mode,
                              corral_job_state state, std::uint64_t retry_at_mono_ns,
                              unsigned min_spare, unsigned max_spare, unsigned max,
                              std::uint64_t max_requests, const std::string& job,
                              const std::string& listeners) {
  if (!writable_) return;
  auto* h = static_cast<corral_sb_header*>(base_);
  // Rewritten in full each time: a worker that scribbled over it is corrected.
  std::memcpy(h->magic, CORRAL_SB_MAGIC, 8);
  h->version = CORRAL_SB_VERSION;
  h->header_size = header_size_;  // the layout the file was made with (an adopted one keeps it)
  h->slot_size = slot_size_;
  store(&h->slot_count, slot_count_);
  store(&h->supervisor_pid, static_cast<std::int32_t>(supervisor_pid));
  store(&h->generation, generation);
  store(&h->started_realtime_ns, started_realtime_ns);
  store(&h->mode, static_cast<std::uint32_t>(mode));
  store(&h->job_state, static_cast<std::uint32_t>(state));
  store(&h->retry_at_mono_ns, retry_at_mono_ns);
  store(&h->min_spare, min_spare);
  store(&h->max_spare, max_spare);
  store(&h->max_workers, max);
  store(&h->max_requests, max_requests);
  store(&h->updated_mono_ns, monotonic_ns());
  copy_text(h->job_name, sizeof h->job_name, job);
  copy_text(h->listeners, sizeof h->listeners, listeners);
}

corral_sb_slot* Scoreboard::slot_ptr(unsigned slot) const {
  if (base_ == nullptr || slot >= slot_count_) return nullptr;
  return reinterpret_cast<corral_sb_slot*>(static_cast<char*>(base_) + header_size_ +
                                           static_cast<size_t>(slot) * slot_size_);
}

corral_sb_slot_ext* Scoreboard::slot_ext_ptr(unsigned slot) const {
  if (!extended_slots()) return nullptr;
  auto* s = slot_ptr(slot);
  return s == nullptr ? nullptr
                      : reinterpret_cast<corral_sb_slot_ext*>(reinterpret_cast<char*>(s) +
                                                              CORRAL_SB_SLOT_SIZE);
}

corral_sb_header_ext* Scoreboard::header_ext_ptr() const {
  if (base_ == nullptr || !extended_header()) return nullptr;
  return reinterpret_cast<corral_sb_header_ext*>(static_cast<char*>(base_) + CORRAL_SB_HEADER_SIZE);
}

std::optional<SbTotals> Scoreboard::totals() const {
  auto* x = header_ext_ptr();
  if (x == nullptr) return std::nullopt;
  SbTotals t;
  for (std::size_t i = 0; i < CORRAL_SB_EXIT_REASONS; ++i) t.exits[i] = load(&x->exits[i]);
  t.refused = load(&x->refused);
  t.accepted = load(&x->accepted);
  t.listeners_reported = load(&x->listeners_reported);
  for (std::size_t i = 0; i < CORRAL_SB_LISTENER_COUNTERS; ++i)
    t.listener_accepted[i] = load(&x->listener_accepted[i]);
  return t;
}

void Scoreboard::publish_totals(const SbTotals& t) {
  auto* x = header_ext_ptr();
  if (x == nullptr || !writable_) return;
  for (std::size_t i = 0; i < CORRAL_SB_EXIT_REASONS; ++i) store(&x->exits[i], t.exits[i]);
  store(&x->refused, t.refused);
  store(&x->accepted, t.accepted);
  for (std::size_t i = 0; i < CORRAL_SB_LISTENER_COUNTERS; ++i)
    store(&x->listener_accepted[i], t.listener_accepted[i]);
  store(&x->listeners_reported, t.listeners_reported);
  store(&x->published_mono_ns, monotonic_ns());
}

void Scoreboard::set_slot_oom_kills(unsigned slot, std::uint64_t oom_kills) {
  auto* x = slot_ext_ptr(slot);
  if (x == nullptr || !writable_) return;
  store(&x->oom_kills, oom_kills);
}

void Scoreboard::claim_slot(unsigned slot, pid_t pid, std::uint32_t generation,
                            std::uint64_t now_ns, std::uint64_t oom_kills) {
  auto* s = slot_ptr(slot);
  if (s == nullptr || !writable_) return;
  if (auto* x = slot_ext_ptr(slot)) {
    // The new worker's counters start at zero (its predecessor's were folded at reap).
    store(&x->refused, std::uint64_t{0});
    store(&x->reports, 0U);
    for (auto& a : x->accepted) store(&a, std::uint64_t{0});
    store(&x->oom_kills, oom_kills);
  }
  store(&s->pid, static_cast<std::int32_t>(pid));
  store(&s->generation, generation);
  store(&s->lock, static_cast<std::uint32_t>(CORRAL_LOCK_NONE));
  store(&s->requests, std::uint64_t{0});
  store(&s->lock_since_ns, now_ns);
  store(&s->spawned_ns, now_ns);
  store(&s->state_since_ns, now_ns);
  store(&s->state, static_cast<std::uint32_t>(CORRAL_SLOT_STARTING));
}

void Scoreboard::set_slot_state(unsigned slot, corral_slot_state state, std::uint64_t now_ns) {
  auto* s = slot_ptr(slot);
  if (s == nullptr || !writable_) return;
  store(&s->state_since_ns, now_ns);
  store(&s->state, static_cast<std::uint32_t>(state));
}

void Scoreboard::set_slot_pid(unsigned slot, pid_t pid) {
  auto* s = slot_ptr(slot);
  if (s == nullptr || !writable_) return;
  store(&s->pid, static_cast<std::int32_t>(pid));
}

void Scoreboard::free_slot(unsigned slot, std::uint64_t now_ns) {
  auto* s = slot_ptr(slot);
  if (s == nullptr || !writable_) return;
  store(&s->state, static_cast<std::uint32_t>(CORRAL_SLOT_EMPTY));
  store(&s->pid, 0);
  store(&s->lock, static_cast<std::uint32_t>(CORRAL_LOCK_NONE));
  store(&s->state_since_ns, now_ns);
}

void Scoreboard::set_at_max(bool at_max) {
  if (base_ == nullptr || !writable_) return;
  store(&static_cast<corral_sb_header*>(base_)->at_max, at_max ? 1U : 0U);
}

void Scoreboard::set_limits(unsigned cpus, std::uint64_t memory_bytes) {
  if (base_ == nullptr || !writable_) return;
  auto* h = static_cast<corral_sb_header*>(base_);
  store(&h->limit_cpus, static_cast<std::uint32_t>(cpus));
  store(&h->limit_memory_bytes, memory_bytes);
}

void Scoreboard::set_flags(std::uint32_t flags) {
  if (base_ == nullptr || !writable_) return;
  store(&static_cast<corral_sb_header*>(base_)->flags, flags);
}

int Scoreboard::idle_hint() const {
  if (base_ == nullptr) return 0;
  return __atomic_load_n(&static_cast<corral_sb_header*>(base_)->idle_hint, __ATOMIC_ACQUIRE);
}

void Scoreboard::add_idle_hint(int delta) {
  if (base_ == nullptr || !writable_) return;
  __atomic_fetch_add(&static_cast<corral_sb_header*>(base_)->idle_hint, delta, __ATOMIC_ACQ_REL);
}

SlotView Scoreboard::read_slot(unsigned slot) const {
  auto* s = slot_ptr(slot);
  if (s == nullptr) return SlotView{};
  return decode_slot(*s, slot_ext_ptr(slot));
}

}  // namespace corral
