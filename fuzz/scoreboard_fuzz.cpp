// libFuzzer target: the scoreboard reader on arbitrary bytes.
//
// A scoreboard file is shared with workers, which may be hostile or broken and can
// write every byte of it (issue 7, "Hostile input"). Whatever it holds, the readers
// must not crash, read out of bounds, hang, leak or throw:
//   1. validate_header and decode_slot on the raw bytes (pure functions);
//   2. Scoreboard::open_read_only on a file holding the bytes, then every slot read,
//      as `corral status` does;
//   3. print_status (table or JSON) on a directory with one <job>.scoreboard holding
//      the bytes. print_status only reads files a supervisor holds an exclusive flock
//      on, so this harness holds one on its own descriptor while it calls it.
// Each input is tried twice: as it is, and with a valid header prefix (magic, version,
// sizes, a slot count that fits) patched over it, so that the mutations reach the
// slot and header fields behind the validation.
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <unistd.h>

#include <corral/protocol.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "scoreboard/scoreboard.h"
#include "status/status.h"

namespace {

[[noreturn]] void broken(const char* what) {
  std::fprintf(stderr, "scoreboard_fuzz: invariant broken: %s\n", what);
  std::abort();
}

void check_view(const corral::SlotView& v) {
  if (v.pid < 0) broken("decode_slot handed out a negative pid");
  if (static_cast<std::uint32_t>(v.state) > CORRAL_SLOT_RUNNING) broken("slot state out of range");
  if (static_cast<std::uint32_t>(v.lock) > CORRAL_LOCK_HELD) broken("lock state out of range");
  if (!v.state_valid && v.state != CORRAL_SLOT_EMPTY) broken("invalid state not mapped to EMPTY");
  if (!v.lock_valid && v.lock != CORRAL_LOCK_NONE) broken("invalid lock not mapped to NONE");
  if (!v.pid_valid && v.pid != 0) broken("invalid pid not mapped to 0");
}

// Writes `bytes` as the whole content of `fd`.
void fill(int fd, const std::vector<std::uint8_t>& bytes) {
  if (::ftruncate(fd, 0) != 0) broken("ftruncate");
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::pwrite(fd, bytes.data() + done, bytes.size() - done, static_cast<off_t>(done));
    if (n <= 0) broken("pwrite");
    done += static_cast<size_t>(n);
  }
}

struct Fixture {
  int memfd = -1;
  std::string memfd_path;
  std::string dir;
  std::string status_file;
  int status_fd = -1;  // holds LOCK_EX, as a running supervisor would
};

Fixture* fixture = nullptr;

void cleanup() {
  if (fixture == nullptr) return;
  std::error_code ec;
  std::filesystem::remove_all(fixture->dir, ec);
}

void pure_checks(const std::vector<std::uint8_t>& bytes) {
  if (bytes.size() >= sizeof(corral_sb_header)) {
    corral_sb_header h{};
    std::memcpy(&h, bytes.data(), sizeof h);
    (void)corral::validate_header(h, bytes.size());
    (void)corral::validate_header(h, UINT64_MAX);
    (void)corral::validate_header(h, 0);
  }
  for (size_t off = 0; off + sizeof(corral_sb_slot) <= bytes.size();
       off += sizeof(corral_sb_slot)) {
    corral_sb_slot raw{};
    std::memcpy(&raw, bytes.data() + off, sizeof raw);
    check_view(corral::decode_slot(raw));
  }
}

void read_only_checks(const std::vector<std::uint8_t>& bytes) {
  fill(fixture->memfd, bytes);
  auto sb = corral::Scoreboard::open_read_only(fixture->memfd_path);
  if (!sb) {
    if (sb.error().what.empty()) broken("an open error without a message");
    return;
  }
  if (sb->slot_count() > CORRAL_SB_MAX_SLOTS) broken("slot count above the maximum");
  auto h = sb->header();
  if (h.header_size + std::uint64_t{sb->slot_count()} * h.slot_size > bytes.size())
    broken("slots beyond the end of the file");
  if (std::strlen(h.job_name) >= sizeof h.job_name) broken("job name not terminated");
  if (std::strlen(h.listeners) >= sizeof h.listeners) broken("listeners not terminated");
  (void)sb->idle_hint();
  for (unsigned i = 0; i < sb->slot_count(); ++i) check_view(sb->read_slot(i));
  if (auto t = sb->totals(); t && !sb->extended_header()) broken("totals of a first-layout header");
  // Out of range: an empty view, never a read past the mapping.
  auto past = sb->read_slot(sb->slot_count());
  if (past.state != CORRAL_SLOT_EMPTY || past.pid != 0) broken("slot past the end not empty");
}

// One print_status per pass keeps the harness fast (each maps the file anew); which
// output and which way of naming the file depend on the input, so both are explored.
void status_checks(const std::vector<std::uint8_t>& bytes, bool json, bool by_name) {
  fill(fixture->status_fd, bytes);
  std::ostringstream out;
  std::ostringstream err;
  std::vector<std::string> jobs;
  if (by_name) jobs.emplace_back("fuzz");
  int rc = corral::print_status(fixture->dir, jobs, json, out, err);
  if (rc != 0 && rc != corral::kExitNotRunning) broken("print_status: unexpected exit code");
}

// The input with a header that passes validate_header, keeping every other byte: the
// grown layout (2048, 256) when the input's length is even, else the first (1024, 64).
std::vector<std::uint8_t> repaired(const std::uint8_t* data, size_t size) {
  const bool grown = size % 2 == 0;
  const std::uint32_t header_size = grown ? CORRAL_SB_EXT_HEADER_SIZE : CORRAL_SB_HEADER_SIZE;
  const std::uint32_t slot_size = grown ? CORRAL_SB_EXT_SLOT_SIZE : CORRAL_SB_SLOT_SIZE;
  std::vector<std::uint8_t> bytes(data, data + size);
  if (bytes.size() < header_size) bytes.resize(header_size, 0);
  auto* h = reinterpret_cast<corral_sb_header*>(bytes.data());
  std::memcpy(h->magic, CORRAL_SB_MAGIC, 8);
  h->version = CORRAL_SB_VERSION;
  h->header_size = header_size;
  h->slot_size = slot_size;
  auto room = static_cast<std::uint32_t>((bytes.size() - header_size) / slot_size);
  if (h->slot_count > room) h->slot_count = room;
  return bytes;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  fixture = new Fixture;
  fixture->memfd = ::memfd_create("corral-scoreboard-fuzz", MFD_CLOEXEC);
  if (fixture->memfd < 0) broken("memfd_create");
  fixture->memfd_path = "/proc/self/fd/" + std::to_string(fixture->memfd);
  // A memory-backed directory when there is one: every run rewrites the file twice.
  const char* tmp = std::getenv("TMPDIR");
  std::string base = "/tmp";
  if (tmp != nullptr && *tmp != '\0')
    base = tmp;
  else if (std::filesystem::is_directory("/dev/shm"))
    base = "/dev/shm";
  std::string templ = base + "/corral-scoreboard-fuzz.XXXXXX";
  if (::mkdtemp(templ.data()) == nullptr) broken("mkdtemp");
  fixture->dir = templ;
  fixture->status_file = fixture->dir + "/fuzz.scoreboard";
  fixture->status_fd = ::open(fixture->status_file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fixture->status_fd < 0) broken("open status file");
  // flock locks belong to the open file description: print_status's own open() of the
  // file sees this one as a supervisor holding it.
  if (::flock(fixture->status_fd, LOCK_EX | LOCK_NB) != 0) broken("flock");
  std::atexit(cleanup);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<std::uint8_t> raw(data, data + size);
  pure_checks(raw);
  read_only_checks(raw);
  bool json = size > 0 && (data[size - 1] & 1) != 0;
  status_checks(raw, json, false);
  auto fixed = repaired(data, size);
  pure_checks(fixed);
  read_only_checks(fixed);
  status_checks(fixed, !json, true);
  return 0;
}
