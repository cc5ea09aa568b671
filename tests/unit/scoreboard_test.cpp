// lib/scoreboard: header validation and slot decoding against garbage (a worker's
// bytes are untrusted), and the file's lifecycle in a temporary directory.
#include "scoreboard/scoreboard.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <doctest/doctest.h>

#include <climits>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

namespace {

// A fresh directory under /tmp, removed with everything in it at scope exit.
class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/corral-sb-test.XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  [[nodiscard]] const std::string& path() const { return path_; }

 private:
  std::string path_;
};

corral_sb_header good_header(std::uint32_t slots) {
  corral_sb_header h{};
  std::memcpy(h.magic, CORRAL_SB_MAGIC, 8);
  h.version = CORRAL_SB_VERSION;
  h.header_size = CORRAL_SB_HEADER_SIZE;
  h.slot_size = CORRAL_SB_SLOT_SIZE;
  h.slot_count = slots;
  return h;
}

std::uint64_t size_for(std::uint64_t slots) {
  return CORRAL_SB_HEADER_SIZE + slots * CORRAL_SB_SLOT_SIZE;
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

// The layout corral creates: header 2048, slots 256.
corral_sb_header grown_header(std::uint32_t slots) {
  auto h = good_header(slots);
  h.header_size = CORRAL_SB_EXT_HEADER_SIZE;
  h.slot_size = CORRAL_SB_EXT_SLOT_SIZE;
  return h;
}

std::uint64_t grown_size_for(std::uint64_t slots) {
  return CORRAL_SB_EXT_HEADER_SIZE + slots * CORRAL_SB_EXT_SLOT_SIZE;
}

// A first-layout file (1024 + 64 per slot), as an older corral made it.
void write_first_layout(const std::string& path, std::uint32_t slots) {
  auto h = good_header(slots);
  h.supervisor_pid = ::getpid();
  std::string bytes(reinterpret_cast<const char*>(&h), sizeof h);
  bytes += std::string(static_cast<std::size_t>(slots) * CORRAL_SB_SLOT_SIZE, '\0');
  write_file(path, bytes);
}

}  // namespace

TEST_CASE("validate_header accepts a well-formed header") {
  CHECK(corral::validate_header(good_header(4), size_for(4)) == "");
  CHECK(corral::validate_header(good_header(0), size_for(0)) == "");
  CHECK(corral::validate_header(good_header(4), size_for(4) + 100) ==
        "");  // grown, not yet re-read
}

TEST_CASE("validate_header refuses a bad magic") {
  auto h = good_header(4);
  std::memcpy(h.magic, "NOTCORRL", 8);
  CHECK(corral::validate_header(h, size_for(4)) == "not a corral scoreboard (bad magic)");
  corral_sb_header zero{};
  CHECK(corral::validate_header(zero, size_for(4)) == "not a corral scoreboard (bad magic)");
}

TEST_CASE("validate_header refuses another version") {
  auto h = good_header(4);
  h.version = CORRAL_SB_VERSION + 1;
  CHECK(corral::validate_header(h, size_for(4)) ==
        "scoreboard version " + std::to_string(CORRAL_SB_VERSION + 1) + ", expected " +
            std::to_string(CORRAL_SB_VERSION));
  h.version = 0xffffffffU;
  CHECK_FALSE(corral::validate_header(h, size_for(4)).empty());
}

TEST_CASE("validate_header accepts both layouts, and sizes a later version may grow to") {
  CHECK(corral::validate_header(grown_header(4), grown_size_for(4)) == "");
  CHECK(corral::validate_header(grown_header(4), grown_size_for(4) - 1) ==
        "file shorter than its slots");
  // The first layout's sizes in a file of the grown size: fine (it is long enough).
  CHECK(corral::validate_header(good_header(4), grown_size_for(4)) == "");
  auto h = good_header(4);
  h.header_size = 2048;  // grown header, first-layout slots
  CHECK(corral::validate_header(h, 2048 + 4 * 64) == "");
  h = good_header(4);
  h.slot_size = 128;
  CHECK(corral::validate_header(h, 1024 + 4 * 128) == "");
}

TEST_CASE("validate_header refuses header and slot sizes that are too small, unaligned or huge") {
  auto h = good_header(4);
  h.header_size = 512;
  CHECK(corral::validate_header(h, size_for(4)) == "unexpected header size 512");
  h.header_size = 1024 + 8;  // not a multiple of 64: fields would be unaligned
  CHECK(corral::validate_header(h, UINT64_MAX) == "unexpected header size 1032");
  h.header_size = 0xffffffc0U;  // aligned, but absurd
  CHECK(corral::validate_header(h, UINT64_MAX) == "unexpected header size 4294967232");
  h = good_header(4);
  h.slot_size = 0;
  CHECK(corral::validate_header(h, size_for(4)) == "unexpected slot size 0");
  h.slot_size = 32;
  CHECK(corral::validate_header(h, size_for(4)) == "unexpected slot size 32");
  h.slot_size = 65;
  CHECK(corral::validate_header(h, UINT64_MAX) == "unexpected slot size 65");
  h.slot_size = 1U << 31;
  CHECK(corral::validate_header(h, UINT64_MAX) == "unexpected slot size 2147483648");
  // The largest sizes, with the most slots, cannot overflow the size computation.
  h = good_header(CORRAL_SB_MAX_SLOTS);
  h.header_size = corral::kMaxHeaderSize;
  h.slot_size = corral::kMaxSlotSize;
  CHECK(corral::validate_header(h, 1ULL << 28) == "file shorter than its slots");
  CHECK(corral::validate_header(h, (1ULL << 28) + (1ULL << 20)) == "");
}

TEST_CASE("validate_header survives random headers") {
  std::uint32_t x = 12345;
  for (int round = 0; round < 20000; ++round) {
    corral_sb_header h = good_header(4);
    auto* words = reinterpret_cast<std::uint32_t*>(&h);
    for (int i = 2; i < 6; ++i) {  // version, header_size, slot_size, slot_count
      x = x * 1103515245U + 12345U;
      if ((x >> 28) < 8) words[i] = x;
    }
    auto why = corral::validate_header(h, x % 3 == 0 ? UINT64_MAX : grown_size_for(4));
    if (why.empty()) {
      CHECK(h.header_size >= CORRAL_SB_HEADER_SIZE);
      CHECK(h.header_size % 64 == 0);
      CHECK(h.slot_size >= CORRAL_SB_SLOT_SIZE);
      CHECK(h.slot_size % 64 == 0);
      CHECK(h.slot_count <= CORRAL_SB_MAX_SLOTS);
    }
  }
}

TEST_CASE("validate_header refuses a slot count out of range") {
  auto h = good_header(CORRAL_SB_MAX_SLOTS + 1);
  CHECK(corral::validate_header(h, size_for(CORRAL_SB_MAX_SLOTS + 1)) == "slot count out of range");
  h.slot_count = 0xffffffffU;  // would overflow a 32-bit size computation
  CHECK(corral::validate_header(h, UINT64_MAX) == "slot count out of range");
  CHECK(corral::validate_header(good_header(CORRAL_SB_MAX_SLOTS), size_for(CORRAL_SB_MAX_SLOTS)) ==
        "");
}

TEST_CASE("validate_header refuses a file shorter than its slots") {
  CHECK(corral::validate_header(good_header(4), size_for(4) - 1) == "file shorter than its slots");
  CHECK(corral::validate_header(good_header(0), CORRAL_SB_HEADER_SIZE - 1) ==
        "file shorter than its slots");
  CHECK(corral::validate_header(good_header(4), 0) == "file shorter than its slots");
}

TEST_CASE("decode_slot passes valid values through") {
  corral_sb_slot raw{};
  raw.state = CORRAL_SLOT_BUSY;
  raw.pid = 1234;
  raw.generation = 3;
  raw.lock = CORRAL_LOCK_HELD;
  raw.requests = 17;
  raw.state_since_ns = 111;
  raw.lock_since_ns = 222;
  auto v = corral::decode_slot(raw);
  CHECK(v.state == CORRAL_SLOT_BUSY);
  CHECK(v.state_valid);
  CHECK(v.pid == 1234);
  CHECK(v.pid_valid);
  CHECK(v.generation == 3);
  CHECK(v.lock == CORRAL_LOCK_HELD);
  CHECK(v.lock_valid);
  CHECK(v.requests == 17);
  CHECK(v.state_since_ns == 111);
  CHECK(v.lock_since_ns == 222);
}

TEST_CASE("decode_slot flags a garbage state and reads it as empty") {
  for (std::uint32_t garbage : {6U, 99U, 0x80000000U, 0xffffffffU}) {
    CAPTURE(garbage);
    corral_sb_slot raw{};
    raw.state = garbage;
    raw.pid = 42;
    auto v = corral::decode_slot(raw);
    CHECK(v.state == CORRAL_SLOT_EMPTY);
    CHECK_FALSE(v.state_valid);
    CHECK(v.pid == 42);
  }
  corral_sb_slot raw{};
  raw.state = CORRAL_SLOT_RUNNING;  // the largest valid state
  CHECK(corral::decode_slot(raw).state_valid);
}

TEST_CASE("decode_slot flags a garbage lock value and reads it as none") {
  for (std::uint32_t garbage : {3U, 1000U, 0xffffffffU}) {
    CAPTURE(garbage);
    corral_sb_slot raw{};
    raw.state = CORRAL_SLOT_IDLE;
    raw.lock = garbage;
    auto v = corral::decode_slot(raw);
    CHECK(v.lock == CORRAL_LOCK_NONE);
    CHECK_FALSE(v.lock_valid);
    CHECK(v.state == CORRAL_SLOT_IDLE);
    CHECK(v.state_valid);
  }
}

TEST_CASE("decode_slot flags a negative pid and never yields one") {
  for (std::int32_t garbage : {-1, -12345, INT32_MIN}) {
    CAPTURE(garbage);
    corral_sb_slot raw{};
    raw.state = CORRAL_SLOT_IDLE;
    raw.pid = garbage;
    auto v = corral::decode_slot(raw);
    CHECK(v.pid == 0);  // never a pid that kill() would read as a process group
    CHECK_FALSE(v.pid_valid);
  }
}

TEST_CASE("decode_slot survives a slot full of random bytes") {
  corral_sb_slot raw{};
  auto* bytes = reinterpret_cast<unsigned char*>(&raw);
  unsigned x = 12345;
  for (int round = 0; round < 1000; ++round) {
    for (size_t i = 0; i < sizeof raw; ++i) {
      x = x * 1103515245U + 12345U;
      bytes[i] = static_cast<unsigned char>(x >> 16);
    }
    auto v = corral::decode_slot(raw);
    CHECK(static_cast<unsigned>(v.state) <= CORRAL_SLOT_RUNNING);
    CHECK(static_cast<unsigned>(v.lock) <= CORRAL_LOCK_HELD);
    CHECK(v.pid >= 0);
  }
}

TEST_CASE("create makes the directory and a file sized for its slots, mode 0644") {
  TempDir tmp;
  std::string dir = tmp.path() + "/nested/sb";
  auto sb = corral::Scoreboard::create(dir, "web", 4);
  CHECK(sb.valid());
  CHECK(sb.slot_count() == 4);
  CHECK(sb.path() == dir + "/web.scoreboard");
  struct stat st {};
  REQUIRE(::stat(sb.path().c_str(), &st) == 0);
  CHECK(static_cast<std::uint64_t>(st.st_size) == grown_size_for(4));
  CHECK((st.st_mode & 07777) == 0644);
  // The fd workers inherit is close-on-exec until the supervisor clears it in the child.
  CHECK((::fcntl(sb.fd(), F_GETFD) & FD_CLOEXEC) != 0);
  auto h = sb.header();
  CHECK(std::memcmp(h.magic, CORRAL_SB_MAGIC, 8) == 0);
  CHECK(h.slot_count == 4);
  CHECK(h.version == 1);  // the grown layout is compatible: version 1 readers still read it
  CHECK(h.header_size == CORRAL_SB_EXT_HEADER_SIZE);
  CHECK(h.slot_size == CORRAL_SB_EXT_SLOT_SIZE);
  CHECK(sb.extended_header());
  CHECK(sb.extended_slots());
  CHECK(corral::validate_header(h, static_cast<std::uint64_t>(st.st_size)) == "");
}

TEST_CASE("grown slots: claim zeroes the worker's counters and writes the supervisor's") {
  TempDir tmp;
  auto sb = corral::Scoreboard::create(tmp.path(), "web", 3);
  // A previous worker's counters, raw, as a worker writes them.
  int fd = ::open(sb.path().c_str(), O_RDWR | O_CLOEXEC);
  REQUIRE(fd >= 0);
  corral_sb_slot_ext ext{};
  ext.refused = 5;
  ext.reports = CORRAL_SB_REPORTS_LISTENERS;
  ext.accepted[0] = 7;
  ext.accepted[15] = 9;
  const off_t at = CORRAL_SB_EXT_HEADER_SIZE + 1 * CORRAL_SB_EXT_SLOT_SIZE + CORRAL_SB_SLOT_SIZE;
  REQUIRE(::pwrite(fd, &ext, sizeof ext, at) == static_cast<ssize_t>(sizeof ext));
  auto before = sb.read_slot(1);
  CHECK(before.extended);
  CHECK(before.reports_listeners);
  CHECK(before.refused == 5);
  CHECK(before.accepted[0] == 7);
  CHECK(before.accepted[15] == 9);

  sb.claim_slot(1, 4242, 1, 10, 3);
  auto s = sb.read_slot(1);
  CHECK_FALSE(s.reports_listeners);
  CHECK(s.refused == 0);
  CHECK(s.accepted[0] == 0);
  CHECK(s.accepted[15] == 0);
  CHECK(s.oom_kills == 3);
  sb.set_slot_oom_kills(1, 4);
  CHECK(sb.read_slot(1).oom_kills == 4);
  // Its neighbours are untouched.
  CHECK(sb.read_slot(0).oom_kills == 0);
  CHECK(sb.read_slot(2).state == CORRAL_SLOT_EMPTY);
  ::close(fd);
}

TEST_CASE("grown header: the totals the supervisor publishes, as a reader sees them") {
  TempDir tmp;
  auto sb = corral::Scoreboard::create(tmp.path(), "web", 2);
  corral::SbTotals t;
  t.exits[CORRAL_EXIT_REASON_SIGNAL] = 2;
  t.exits[CORRAL_EXIT_REASON_MAX_REQUESTS] = 11;
  t.refused = 4;
  t.accepted = 30;
  t.listeners_reported = 0b11;
  t.listener_accepted[0] = 10;
  t.listener_accepted[1] = 20;
  sb.publish_totals(t);
  sb.write_header(::getpid(), 1, 1, CORRAL_MODE_PREFORK, CORRAL_JOB_RUNNING, 0, 1, 2, 4, 0, "web",
                  "a\nb");  // the header rewrite leaves the totals alone
  auto ro = corral::Scoreboard::open_read_only(sb.path());
  REQUIRE(ro.ok());
  auto back = ro->totals();
  REQUIRE(back.has_value());
  CHECK(back->exits == t.exits);
  CHECK(back->refused == 4);
  CHECK(back->accepted == 30);
  CHECK(back->listeners_reported == 0b11);
  CHECK(back->listener_accepted == t.listener_accepted);
  ro->publish_totals(corral::SbTotals{});  // read-only: nothing written
  CHECK(sb.totals()->accepted == 30);
}

TEST_CASE("a first-layout file (an older corral's) is read and adopted with its own sizes") {
  TempDir tmp;
  const std::string path = tmp.path() + "/old.scoreboard";
  write_first_layout(path, 3);
  auto ro = corral::Scoreboard::open_read_only(path);
  REQUIRE(ro.ok());
  CHECK_FALSE(ro->extended_header());
  CHECK_FALSE(ro->extended_slots());
  CHECK_FALSE(ro->totals().has_value());
  CHECK_FALSE(ro->read_slot(2).extended);

  int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  REQUIRE(fd >= 0);
  auto sb = corral::Scoreboard::adopt(fd, path);
  REQUIRE(sb.ok());
  sb->claim_slot(1, 4242, 1, 10, 5);  // no room for oom_kills: not written
  sb->set_slot_oom_kills(2, 9);
  sb->publish_totals(corral::SbTotals{});
  sb->write_header(::getpid(), 1, 1, CORRAL_MODE_PREFORK, CORRAL_JOB_RUNNING, 0, 1, 2, 4, 0, "web",
                   "");
  auto h = sb->header();
  CHECK(h.header_size == CORRAL_SB_HEADER_SIZE);  // kept: its workers map by it
  CHECK(h.slot_size == CORRAL_SB_SLOT_SIZE);
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  CHECK(static_cast<std::uint64_t>(st.st_size) == size_for(3));
  auto s1 = sb->read_slot(1);
  CHECK(s1.pid == 4242);
  CHECK(s1.state == CORRAL_SLOT_STARTING);
  auto s2 = sb->read_slot(2);  // slot 1's 64 bytes did not spill into slot 2
  CHECK(s2.state == CORRAL_SLOT_EMPTY);
  CHECK(s2.pid == 0);
  CHECK(s2.requests == 0);
  REQUIRE(sb->grow(5));
  struct stat grown {};
  REQUIRE(::stat(path.c_str(), &grown) == 0);
  CHECK(static_cast<std::uint64_t>(grown.st_size) == size_for(5));
}

TEST_CASE("a second create of the same job's scoreboard fails: it is in use") {
  TempDir tmp;
  auto first = corral::Scoreboard::create(tmp.path(), "web", 2);
  first.write_header(::getpid(), 1, corral::realtime_ns(), CORRAL_MODE_PREFORK, CORRAL_JOB_RUNNING,
                     0, 2, 8, 64, 0, "web", "127.0.0.1:8080");
  first.claim_slot(0, 4242, 1, corral::monotonic_ns());

  std::string message;
  try {
    (void)corral::Scoreboard::create(tmp.path(), "web", 2);
  } catch (const corral::SetupError& e) {
    message = e.what();
  }
  CHECK(message.find("in use") != std::string::npos);
  CHECK(message.find(tmp.path() + "/web.scoreboard") != std::string::npos);
  CHECK(message.find("(pid " + std::to_string(::getpid()) + ")") != std::string::npos);

  // The failed attempt must not have wiped the running supervisor's slots.
  CHECK(first.read_slot(0).pid == 4242);
  CHECK(first.read_slot(0).state == CORRAL_SLOT_STARTING);

  // Another job in the same directory is fine.
  CHECK_NOTHROW((void)corral::Scoreboard::create(tmp.path(), "api", 2));
}

TEST_CASE("once the first supervisor is gone, its scoreboard can be created again, from zero") {
  TempDir tmp;
  {
    auto first = corral::Scoreboard::create(tmp.path(), "web", 2);
    first.claim_slot(1, 4242, 1, 5);
  }
  auto second = corral::Scoreboard::create(tmp.path(), "web", 2);
  CHECK(second.read_slot(1).state == CORRAL_SLOT_EMPTY);
  CHECK(second.read_slot(1).pid == 0);
}

TEST_CASE("claim, set and free a slot; read_slot sees each step") {
  TempDir tmp;
  auto sb = corral::Scoreboard::create(tmp.path(), "web", 3);
  auto empty = sb.read_slot(1);
  CHECK(empty.state == CORRAL_SLOT_EMPTY);
  CHECK(empty.pid == 0);

  sb.claim_slot(1, 4242, 7, 1000);
  auto s = sb.read_slot(1);
  CHECK(s.state == CORRAL_SLOT_STARTING);
  CHECK(s.state_valid);
  CHECK(s.pid == 4242);
  CHECK(s.generation == 7);
  CHECK(s.lock == CORRAL_LOCK_NONE);
  CHECK(s.requests == 0);
  CHECK(s.state_since_ns == 1000);

  sb.set_slot_state(1, CORRAL_SLOT_STOPPING, 2000);
  s = sb.read_slot(1);
  CHECK(s.state == CORRAL_SLOT_STOPPING);
  CHECK(s.state_since_ns == 2000);
  CHECK(s.pid == 4242);

  sb.free_slot(1, 3000);
  s = sb.read_slot(1);
  CHECK(s.state == CORRAL_SLOT_EMPTY);
  CHECK(s.pid == 0);
  CHECK(s.state_since_ns == 3000);

  // Neighbours are untouched.
  CHECK(sb.read_slot(0).state == CORRAL_SLOT_EMPTY);
  CHECK(sb.read_slot(2).state == CORRAL_SLOT_EMPTY);
}

TEST_CASE("slot indexes out of range are ignored, not written past the map") {
  TempDir tmp;
  auto sb = corral::Scoreboard::create(tmp.path(), "web", 2);
  sb.claim_slot(2, 4242, 1, 1);
  sb.set_slot_state(99, CORRAL_SLOT_BUSY, 1);
  sb.free_slot(UINT_MAX, 1);
  auto s = sb.read_slot(2);
  CHECK(s.state == CORRAL_SLOT_EMPTY);
  CHECK(s.pid == 0);
}

TEST_CASE("open_read_only sees what the supervisor writes") {
  TempDir tmp;
  auto sb = corral::Scoreboard::create(tmp.path(), "web", 4);
  sb.write_header(1234, 2, 99, CORRAL_MODE_INETD, CORRAL_JOB_BACKING_OFF, 77, 2, 8, 64, 0, "web",
                  "127.0.0.1:8080\nunix:/run/web.sock");
  sb.claim_slot(3, 4242, 2, 1000);
  sb.set_slot_state(3, CORRAL_SLOT_IDLE, 1500);

  auto ro = corral::Scoreboard::open_read_only(sb.path());
  REQUIRE(ro.ok());
  CHECK(ro->valid());
  CHECK(ro->slot_count() == 4);
  auto h = ro->header();
  CHECK(h.supervisor_pid == 1234);
  CHECK(h.generation == 2);
  CHECK(h.mode == CORRAL_MODE_INETD);
  CHECK(h.job_state == CORRAL_JOB_BACKING_OFF);
  CHECK(std::string(h.job_name) == "web");
  CHECK(std::string(h.listeners) == "127.0.0.1:8080\nunix:/run/web.sock");
  auto s = ro->read_slot(3);
  CHECK(s.state == CORRAL_SLOT_IDLE);
  CHECK(s.pid == 4242);
  CHECK(s.generation == 2);

  // Later writes show through the shared mapping.
  sb.free_slot(3, 2000);
  CHECK(ro->read_slot(3).state == CORRAL_SLOT_EMPTY);

  // A read-only map never writes.
  ro->claim_slot(0, 1, 1, 1);
  CHECK(sb.read_slot(0).pid == 0);
}

TEST_CASE("grow adds slots that readers opening afterwards see") {
  TempDir tmp;
  auto sb = corral::Scoreboard::create(tmp.path(), "web", 2);
  sb.claim_slot(1, 4242, 1, 1);
  REQUIRE(sb.grow(8));
  CHECK(sb.slot_count() == 8);
  CHECK(sb.read_slot(1).pid == 4242);
  sb.claim_slot(7, 4343, 1, 1);
  auto ro = corral::Scoreboard::open_read_only(sb.path());
  REQUIRE(ro.ok());
  CHECK(ro->slot_count() == 8);
  CHECK(ro->read_slot(7).pid == 4343);
  CHECK(sb.grow(4));  // never shrinks
  CHECK(sb.slot_count() == 8);
}

TEST_CASE("open_read_only refuses files that are not scoreboards") {
  TempDir tmp;
  auto missing = corral::Scoreboard::open_read_only(tmp.path() + "/nope.scoreboard");
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.error().code == ENOENT);
  CHECK(missing.error().to_string().find("nope.scoreboard") != std::string::npos);

  std::string short_file = tmp.path() + "/short.scoreboard";
  write_file(short_file, "CORRALSB");
  auto too_short = corral::Scoreboard::open_read_only(short_file);
  REQUIRE_FALSE(too_short.ok());
  CHECK(too_short.error().to_string() == short_file + ": not a corral scoreboard (too short)");

  std::string garbage_file = tmp.path() + "/garbage.scoreboard";
  write_file(garbage_file, std::string(4096, 'x'));
  auto garbage = corral::Scoreboard::open_read_only(garbage_file);
  REQUIRE_FALSE(garbage.ok());
  CHECK(garbage.error().to_string() == garbage_file + ": not a corral scoreboard (bad magic)");

  // A valid header that claims more slots than the file holds.
  auto h = good_header(100);
  std::string truncated(reinterpret_cast<const char*>(&h), sizeof h);
  truncated += std::string(CORRAL_SB_SLOT_SIZE, '\0');
  std::string truncated_file = tmp.path() + "/truncated.scoreboard";
  write_file(truncated_file, truncated);
  auto t = corral::Scoreboard::open_read_only(truncated_file);
  REQUIRE_FALSE(t.ok());
  CHECK(t.error().to_string() == truncated_file + ": file shorter than its slots");
}

// The directory and the file are opened so that another user cannot steer them
// (docs/SECURITY.md, "Paths corral creates as root").
namespace {

std::string create_error(const std::string& dir) {
  try {
    (void)corral::Scoreboard::create(dir, "web", 2);
  } catch (const corral::SetupError& e) {
    return e.what();
  }
  return "";
}

ino_t inode_of(const std::string& path) {
  struct stat st {};
  REQUIRE(::lstat(path.c_str(), &st) == 0);
  return st.st_ino;
}

}  // namespace

TEST_CASE("a scoreboard directory writable by others is refused, naming it and the fix") {
  TempDir tmp;
  std::string dir = tmp.path() + "/sb";
  REQUIRE(::mkdir(dir.c_str(), 0755) == 0);
  REQUIRE(::chmod(dir.c_str(), 0777) == 0);
  auto message = create_error(dir);
  CHECK(message.find("scoreboard directory " + dir) != std::string::npos);
  CHECK(message.find("writable by its group or by others (mode 0777)") != std::string::npos);
  CHECK(message.find("--scoreboard-dir") != std::string::npos);
  CHECK(!std::filesystem::exists(dir + "/web.scoreboard"));
}

TEST_CASE("a scoreboard directory that is a symbolic link is refused, not followed") {
  TempDir tmp;
  std::string real = tmp.path() + "/real";
  std::string dir = tmp.path() + "/sb";
  REQUIRE(::mkdir(real.c_str(), 0755) == 0);
  REQUIRE(::symlink(real.c_str(), dir.c_str()) == 0);
  auto message = create_error(dir);
  CHECK(message.find("scoreboard directory " + dir + " is a symbolic link") != std::string::npos);
  CHECK(std::filesystem::is_empty(real));
}

TEST_CASE("a scoreboard directory owned by another user is refused") {
  if (::geteuid() != 0) return;  // needs chown
  TempDir tmp;
  std::string dir = tmp.path() + "/sb";
  REQUIRE(::mkdir(dir.c_str(), 0755) == 0);
  REQUIRE(::chown(dir.c_str(), 65534, 65534) == 0);
  auto message = create_error(dir);
  CHECK(message.find("is owned by uid 65534, neither root nor uid 0") != std::string::npos);
}

TEST_CASE("a missing scoreboard directory is made 0700 under a world-writable parent") {
  TempDir tmp;
  REQUIRE(::chmod(tmp.path().c_str(), 01777) == 0);
  std::string dir = tmp.path() + "/sb";
  mode_t saved = ::umask(0);  // the mode is corral's choice, not the umask's
  (void)corral::Scoreboard::create(dir, "web", 2);
  ::umask(saved);
  struct stat st {};
  REQUIRE(::lstat(dir.c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0700);
}

TEST_CASE("a stale 0666 scoreboard is replaced by a new 0644 file, not reused") {
  TempDir tmp;
  std::string path = tmp.path() + "/web.scoreboard";
  write_file(path, std::string(8192, 'x'));
  REQUIRE(::chmod(path.c_str(), 0666) == 0);
  auto before = inode_of(path);
  // Someone who opened it while it was 0666 keeps a writable fd: it must go nowhere.
  int kept = ::open(path.c_str(), O_RDWR);
  REQUIRE(kept >= 0);
  auto sb = corral::Scoreboard::create(tmp.path(), "web", 2);
  CHECK(inode_of(path) != before);
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0644);
  REQUIRE(::pwrite(kept, "garbage!", 8, 0) == 8);
  CHECK(std::memcmp(sb.header().magic, CORRAL_SB_MAGIC, 8) == 0);
  ::close(kept);
  // No temporary file is left behind.
  int entries = 0;
  for (const auto& e : std::filesystem::directory_iterator(tmp.path())) entries += e.exists();
  CHECK(entries == 1);
}

TEST_CASE("a symbolic link in place of the scoreboard is refused and its target untouched") {
  TempDir tmp;
  std::string target = tmp.path() + "/target";
  write_file(target, "secret");
  REQUIRE(::chmod(target.c_str(), 0600) == 0);
  REQUIRE(::symlink(target.c_str(), (tmp.path() + "/web.scoreboard").c_str()) == 0);
  auto message = create_error(tmp.path());
  CHECK(message.find("is a symbolic link") != std::string::npos);
  struct stat st {};
  REQUIRE(::stat(target.c_str(), &st) == 0);
  CHECK(st.st_size == 6);
  CHECK((st.st_mode & 07777) == 0600);
}

TEST_CASE("a reader's flock on a scoreboard whose supervisor is gone does not block a start") {
  TempDir tmp;
  {
    auto first = corral::Scoreboard::create(tmp.path(), "web", 2);
    // A pid that no process has: the supervisor that wrote it is gone.
    first.write_header(INT_MAX - 1, 1, 0, CORRAL_MODE_PREFORK, CORRAL_JOB_RUNNING, 0, 2, 8, 64, 0,
                       "web", "");
  }
  std::string path = tmp.path() + "/web.scoreboard";
  int reader = ::open(path.c_str(), O_RDONLY);
  REQUIRE(reader >= 0);
  REQUIRE(::flock(reader, LOCK_EX | LOCK_NB) == 0);
  std::string message;
  try {
    auto sb = corral::Scoreboard::create(tmp.path(), "web", 2);
    CHECK(sb.valid());
  } catch (const corral::SetupError& e) {
    message = e.what();
  }
  CHECK(message == "");
  ::close(reader);
}
