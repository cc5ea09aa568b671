#include "listen/listener.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <doctest/doctest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "common/error.h"

namespace {

// A fresh directory under /tmp, removed with everything in it at scope exit.
struct TempDir {
  TempDir() {
    char tmpl[] = "/tmp/corral-listener-test.XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string path;
};

corral::ListenerSpec unix_spec(const std::string& path) {
  corral::ListenerSpec spec;
  spec.address = corral::UnixAddress{path};
  return spec;
}

struct stat lstat_of(const std::string& path) {
  struct stat st {};
  REQUIRE(::lstat(path.c_str(), &st) == 0);
  return st;
}

}  // namespace

TEST_CASE("fd store names are the address behind a prefix, without ':'") {
  CHECK(corral::fd_store_name("127.0.0.1:8080") == "corral-bound.127.0.0.1_8080");
  CHECK(corral::fd_store_name("[::]:8080") == "corral-bound.[__]_8080");
  CHECK(corral::fd_store_name("unix:/run/web.sock") == "corral-bound.unix_/run/web.sock");
}

TEST_CASE("fd store names hold only what LISTEN_FDNAMES allows, at most 255 bytes") {
  auto name =
      corral::fd_store_name(std::string("unix:/tmp/a\nb\x7f\xc3\xa9") + std::string(300, 'x'));
  CHECK(name.size() == 255);
  CHECK(name.starts_with("corral-bound.unix_/tmp/a_b___"));
  for (char c : name) {
    auto u = static_cast<unsigned char>(c);
    CHECK((u >= 0x20 && u < 0x7f && c != ':'));
  }
}

TEST_CASE("a unix listener gets exactly its mode, whatever the umask") {
  TempDir tmp;
  auto spec = unix_spec(tmp.path + "/a.sock");
  spec.unix_mode = 0660;
  mode_t saved = ::umask(077);
  auto fd = corral::bind_listener(spec);
  CHECK(::umask(saved) == 077);  // restored
  auto st = lstat_of(tmp.path + "/a.sock");
  CHECK(S_ISSOCK(st.st_mode));
  CHECK((st.st_mode & 07777) == 0660);
  CHECK(st.st_uid == ::geteuid());

  auto open_spec = unix_spec(tmp.path + "/b.sock");  // default 0666 through umask 022
  saved = ::umask(022);
  auto fd2 = corral::bind_listener(open_spec);
  ::umask(saved);
  CHECK((lstat_of(tmp.path + "/b.sock").st_mode & 07777) == 0666);
}

TEST_CASE("a unix listener's owner: and group: apply to the socket file") {
  if (::geteuid() != 0) return;  // needs chown
  TempDir tmp;
  auto spec = unix_spec(tmp.path + "/a.sock");
  spec.owner = "nobody";
  spec.group = "nogroup";
  spec.unix_mode = 0600;
  auto fd = corral::bind_listener(spec);
  auto st = lstat_of(tmp.path + "/a.sock");
  CHECK(S_ISSOCK(st.st_mode));
  CHECK(st.st_uid == 65534);
  CHECK(st.st_gid == 65534);
  CHECK((st.st_mode & 07777) == 0600);
}

TEST_CASE("a stale unix socket is replaced; a link or a live socket in its place is not") {
  TempDir tmp;
  auto path = tmp.path + "/a.sock";
  {
    auto first = corral::bind_listener(unix_spec(path));
    // Live: refused, and left alone.
    CHECK_THROWS_AS((void)corral::bind_listener(unix_spec(path)), corral::SetupError);
    CHECK(S_ISSOCK(lstat_of(path).st_mode));
  }
  // Closed but still on disk: stale, replaced.
  CHECK_NOTHROW((void)corral::bind_listener(unix_spec(path)));
  // A link to a live socket elsewhere is a link, not a socket: refused, not followed.
  auto other = tmp.path + "/other.sock";
  auto live = corral::bind_listener(unix_spec(other));
  REQUIRE(::unlink(path.c_str()) == 0);
  REQUIRE(::symlink(other.c_str(), path.c_str()) == 0);
  std::string message;
  try {
    (void)corral::bind_listener(unix_spec(path));
  } catch (const corral::SetupError& e) {
    message = e.what();
  }
  CHECK(message.find("exists and is not a socket") != std::string::npos);
  CHECK(S_ISLNK(lstat_of(path).st_mode));
}
