#include "scoreboard/scoreboard.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

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

size_t file_size_for(unsigned slots) {
  return CORRAL_SB_HEADER_SIZE + static_cast<size_t>(slots) * CORRAL_SB_SLOT_SIZE;
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
  if (h.header_size != CORRAL_SB_HEADER_SIZE) return "unexpected header size";
  if (h.slot_size != CORRAL_SB_SLOT_SIZE) return "unexpected slot size";
  if (h.slot_count > CORRAL_SB_MAX_SLOTS) return "slot count out of range";
  if (file_size < file_size_for(h.slot_count)) return "file shorter than its slots";
  return "";
}

SlotView decode_slot(const corral_sb_slot& raw) {
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
  return v;
}

Scoreboard::Scoreboard(Scoreboard&& other) noexcept
    : fd_(std::move(other.fd_)),
      path_(std::move(other.path_)),
      base_(std::exchange(other.base_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      slot_count_(std::exchange(other.slot_count_, 0)),
      writable_(other.writable_) {}

Scoreboard& Scoreboard::operator=(Scoreboard&& other) noexcept {
  if (this != &other) {
    unmap();
    fd_ = std::move(other.fd_);
    path_ = std::move(other.path_);
    base_ = std::exchange(other.base_, nullptr);
    size_ = std::exchange(other.size_, 0);
    slot_count_ = std::exchange(other.slot_count_, 0);
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

Scoreboard Scoreboard::create(const std::string& dir, const std::string& job, unsigned slot_count) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw SetupError("create scoreboard directory", dir, ec.value());
  Scoreboard sb;
  sb.path_ = dir + "/" + scoreboard_file_name(job);
  sb.fd_ = UniqueFd(::open(sb.path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644));
  if (!sb.fd_) throw SetupError("open scoreboard", sb.path_, errno);
  if (::flock(sb.fd_.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) {
      corral_sb_header old{};
      std::string who;
      if (::pread(sb.fd_.get(), &old, sizeof old, 0) == static_cast<ssize_t>(sizeof old) &&
          std::memcmp(old.magic, CORRAL_SB_MAGIC, 8) == 0)
        who = " (pid " + std::to_string(old.supervisor_pid) + ")";
      throw SetupError("scoreboard " + sb.path_ + " is in use by another corral" + who +
                       "; stop it, or give this one another scoreboard_dir");
    }
    throw SetupError("flock", sb.path_, errno);
  }
  ::fchmod(sb.fd_.get(), 0644);
  sb.size_ = file_size_for(slot_count);
  // Start from zeroes: a stale file from a crashed supervisor must not leak slots.
  if (::ftruncate(sb.fd_.get(), 0) != 0 ||
      ::ftruncate(sb.fd_.get(), static_cast<off_t>(sb.size_)) != 0)
    throw SetupError("resize scoreboard", sb.path_, errno);
  // Reserve the blocks now: on a full filesystem a sparse mapping would SIGBUS at the
  // first write to a new page, in the supervisor or a worker. Fail here instead.
  if (int err = ::posix_fallocate(sb.fd_.get(), 0, static_cast<off_t>(sb.size_));
      err != 0 && err != EOPNOTSUPP && err != EINVAL)
    throw SetupError("allocate scoreboard", sb.path_, err);
  void* base = ::mmap(nullptr, sb.size_, PROT_READ | PROT_WRITE, MAP_SHARED, sb.fd_.get(), 0);
  if (base == MAP_FAILED) throw SetupError("mmap", sb.path_, errno);
  sb.base_ = base;
  sb.slot_count_ = slot_count;
  sb.writable_ = true;
  guard(sb.fd_.get(), sb.size_);
  auto* h = static_cast<corral_sb_header*>(base);
  std::memcpy(h->magic, CORRAL_SB_MAGIC, 8);
  h->version = CORRAL_SB_VERSION;
  h->header_size = CORRAL_SB_HEADER_SIZE;
  h->slot_size = CORRAL_SB_SLOT_SIZE;
  store(&h->slot_count, slot_count);
  return sb;
}

bool Scoreboard::grow(unsigned slot_count) {
  if (slot_count <= slot_count_ || !writable_) return true;
  size_t new_size = file_size_for(slot_count);
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
  return sb;
}

Result<Scoreboard> Scoreboard::open_read_only(const std::string& path) {
  Scoreboard sb;
  sb.path_ = path;
  // O_NONBLOCK: opening a FIFO put in the file's place must not hang the reader.
  sb.fd_ = UniqueFd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
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
  h->header_size = CORRAL_SB_HEADER_SIZE;
  h->slot_size = CORRAL_SB_SLOT_SIZE;
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
  return reinterpret_cast<corral_sb_slot*>(static_cast<char*>(base_) + CORRAL_SB_HEADER_SIZE +
                                           static_cast<size_t>(slot) * CORRAL_SB_SLOT_SIZE);
}

void Scoreboard::claim_slot(unsigned slot, pid_t pid, std::uint32_t generation,
                            std::uint64_t now_ns) {
  auto* s = slot_ptr(slot);
  if (s == nullptr || !writable_) return;
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
  return decode_slot(*s);
}

}  // namespace corral
