#include "common/safe_fs.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <string_view>
#include <vector>

#include "common/error.h"

namespace corral {
namespace {

std::string octal(mode_t mode) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(mode & 07777));
  return buf;
}

std::vector<std::string> components(const std::string& path) {
  std::vector<std::string> out;
  size_t at = 0;
  while (at <= path.size()) {
    size_t end = path.find('/', at);
    if (end == std::string::npos) end = path.size();
    std::string part = path.substr(at, end - at);
    if (!part.empty() && part != ".") out.push_back(std::move(part));
    at = end + 1;
  }
  return out;
}

std::string fix_for(uid_t euid) {
  return "remove it (corral then creates it), or point scoreboard_dir (--scoreboard-dir) at a "
         "directory that only root or uid " +
         std::to_string(euid) + " can write";
}

// The mode a missing directory gets: private when others can write its parent, as in
// /tmp, so that nobody else can even list what corral keeps there.
mode_t mode_for_new_directory(int parent) {
  struct stat st {};
  if (::fstat(parent, &st) == 0 && (st.st_mode & S_IWOTH) != 0) return 0700;
  return 0755;
}

}  // namespace

std::string why_not_private(mode_t mode, uid_t owner, uid_t euid) {
  if (S_ISLNK(mode)) return "is a symbolic link";
  if (!S_ISDIR(mode)) return "is not a directory";
  if (owner != 0 && owner != euid)
    return "is owned by uid " + std::to_string(owner) + ", neither root nor uid " +
           std::to_string(euid) + " (this supervisor)";
  if ((mode & (S_IWGRP | S_IWOTH)) != 0)
    return "is writable by its group or by others (mode " + octal(mode) + ")";
  return "";
}

UniqueFd open_private_directory(const std::string& path) {
  const uid_t euid = ::geteuid();
  auto parts = components(path);
  UniqueFd cur(::open(path.starts_with('/') ? "/" : ".", O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!cur) throw SetupError("open", path, errno);
  if (parts.empty()) parts.emplace_back(".");  // "/" itself: checked like any other
  for (size_t i = 0; i < parts.size(); ++i) {
    const bool last = i + 1 == parts.size();
    const auto& name = parts[i];
    // Parents are the administrator's choice and may be links (/var/run -> /run); the
    // directory itself never is followed.
    const int flags = O_PATH | O_DIRECTORY | O_CLOEXEC | (last ? O_NOFOLLOW : 0);
    UniqueFd next(::openat(cur.get(), name.c_str(), flags));
    if (!next && errno == ENOENT) {
      if (::mkdirat(cur.get(), name.c_str(), mode_for_new_directory(cur.get())) != 0 &&
          errno != EEXIST)
        throw SetupError("create scoreboard directory", path, errno);
      // What we find now may be what another user raced into place: checked below.
      next = UniqueFd(::openat(cur.get(), name.c_str(), flags | O_NOFOLLOW));
    }
    if (!next) {
      int err = errno;
      struct stat st {};
      if ((err == ELOOP || err == ENOTDIR) &&
          ::fstatat(cur.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && last)
        throw SetupError("scoreboard directory " + path + " " +
                         why_not_private(st.st_mode, st.st_uid, euid) + "; " + fix_for(euid));
      throw SetupError("open scoreboard directory", path, err);
    }
    cur = std::move(next);
  }
  struct stat st {};
  if (::fstat(cur.get(), &st) != 0) throw SetupError("stat", path, errno);
  if (auto why = why_not_private(st.st_mode, st.st_uid, euid); !why.empty())
    throw SetupError("scoreboard directory " + path + " " + why + "; " + fix_for(euid));
  return cur;
}

}  // namespace corral
