// lib/metrics/textfile: node_exporter's textfile, by atomic rename, never through a link.
#include "metrics/textfile.h"

#include <doctest/doctest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace {
std::string slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/corral-textfile-XXXXXX";
    path = ::mkdtemp(tmpl);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
};
}  // namespace

TEST_CASE("the temporary name is hidden, beside the file, and does not end in .prom") {
  auto t = corral::textfile_temp_path("/var/lib/node_exporter/corral.prom", 42);
  CHECK(t == "/var/lib/node_exporter/.corral.prom.42.tmp");
  CHECK_FALSE(t.ends_with(".prom"));
  CHECK(corral::textfile_temp_path("x.prom", 1) == ".x.prom.1.tmp");
}

TEST_CASE("the file is replaced whole, world-readable, and no temporary file is left") {
  TempDir d;
  const std::string path = d.path + "/corral.prom";
  REQUIRE(corral::write_textfile(path, "a 1\n").ok());
  CHECK(slurp(path) == "a 1\n");
  struct stat before {};
  REQUIRE(::stat(path.c_str(), &before) == 0);
  CHECK((before.st_mode & 0777) == 0644);
  REQUIRE(corral::write_textfile(path, "a 2\n").ok());
  CHECK(slurp(path) == "a 2\n");
  struct stat after {};
  REQUIRE(::stat(path.c_str(), &after) == 0);
  CHECK(after.st_ino != before.st_ino);  // a rename, not a rewrite in place
  int entries = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(d.path)) ++entries;
  CHECK(entries == 1);
}

TEST_CASE("a link planted at the temporary name is removed, never followed") {
  TempDir d;
  const std::string path = d.path + "/corral.prom";
  const std::string victim = d.path + "/victim";
  { std::ofstream(victim) << "precious\n"; }
  const auto temp = corral::textfile_temp_path(path, static_cast<int>(::getpid()));
  REQUIRE(::symlink(victim.c_str(), temp.c_str()) == 0);
  REQUIRE(corral::write_textfile(path, "a 1\n").ok());
  CHECK(slurp(victim) == "precious\n");
  CHECK(slurp(path) == "a 1\n");
  struct stat st {};
  CHECK(::lstat(temp.c_str(), &st) != 0);
}

TEST_CASE("a directory that is not there is an error naming the file, and nothing is left") {
  auto status = corral::write_textfile("/nonexistent-corral-dir/corral.prom", "a 1\n");
  REQUIRE_FALSE(status.ok());
  CHECK(status.error().to_string().find("/nonexistent-corral-dir/.corral.prom.") !=
        std::string::npos);
}
