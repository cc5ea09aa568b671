#include "metrics/textfile.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>

#include "common/unique_fd.h"

namespace corral {

std::string textfile_temp_path(const std::string& path, int pid) {
  auto slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? "" : path.substr(0, slash + 1);
  std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
  return dir + "." + name + "." + std::to_string(pid) + ".tmp";
}

Status write_textfile(const std::string& path, std::string_view content) noexcept {
  try {
    const std::string temp = textfile_temp_path(path, static_cast<int>(::getpid()));
    const int flags = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC;
    UniqueFd fd(::open(temp.c_str(), flags, 0644));
    if (!fd && errno == EEXIST) {
      // Left by an earlier image of this pid that died mid-write (or planted): unlink()
      // removes the name itself, never what a link points to.
      if (::unlink(temp.c_str()) != 0 && errno != ENOENT) return errno_error("unlink " + temp);
      fd = UniqueFd(::open(temp.c_str(), flags, 0644));
    }
    if (!fd) return errno_error("create " + temp);
    // The umask may have narrowed 0644: node_exporter often runs as another user.
    ::fchmod(fd.get(), 0644);
    std::size_t done = 0;
    while (done < content.size()) {
      ssize_t n = ::write(fd.get(), content.data() + done, content.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        Error e = errno_error("write " + temp);
        if (n == 0) e.code = ENOSPC;
        ::unlink(temp.c_str());
        return e;
      }
      done += static_cast<size_t>(n);
    }
    if (::close(fd.release()) != 0) {
      Error e = errno_error("close " + temp);
      ::unlink(temp.c_str());
      return e;
    }
    if (::rename(temp.c_str(), path.c_str()) != 0) {
      Error e = errno_error("rename " + temp + " to " + path);
      ::unlink(temp.c_str());
      return e;
    }
    return Ok{};
  } catch (...) {
    return Error{ENOMEM, "write " + path};
  }
}

}  // namespace corral
