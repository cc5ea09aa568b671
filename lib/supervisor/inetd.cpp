#include "supervisor/inetd.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>

#include "common/unique_fd.h"

// The static corral-inetd program, linked into this binary by acceptor_image.S.
extern "C" const unsigned char corral_acceptor_image[];
extern "C" const unsigned char corral_acceptor_image_end[];

namespace corral {
namespace {

#ifndef MFD_EXEC
#define MFD_EXEC 0x0010U  // Linux 6.3: say so explicitly, or vm.memfd_noexec may refuse
#endif

// A sealed, executable memfd holding the acceptor, made once per supervisor process.
// It is exec'd by fd, so it needs no path on disk, cannot be swapped under a running
// supervisor, and goes along with a binary upgrade (the new binary makes its own).
Result<int> acceptor_image_fd() {
  static UniqueFd image;
  if (image) return image.get();
  const unsigned flags = MFD_CLOEXEC | MFD_ALLOW_SEALING;
  UniqueFd fd(::memfd_create("corral-inetd", flags | MFD_EXEC));
  if (!fd && errno == EINVAL) fd.reset(::memfd_create("corral-inetd", flags));  // before 6.3
  if (!fd) return errno_error("memfd_create for the inetd acceptor");
  const auto* p = corral_acceptor_image;
  auto left = static_cast<size_t>(corral_acceptor_image_end - corral_acceptor_image);
  while (left > 0) {
    ssize_t n = ::write(fd.get(), p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return errno_error("write the inetd acceptor to its memfd");
    p += n;
    left -= static_cast<size_t>(n);
  }
  ::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL);
  image = std::move(fd);
  return image.get();
}

}  // namespace

Status make_inetd_plan(SpawnPlan& plan, const std::string& job, unsigned max_per_source) {
  auto image = acceptor_image_fd();
  if (!image) return image.error();
  // The report pipe lands right after the inherited fds (SpawnPlan::pass_report).
  std::vector<std::string> argv{"corral-inetd: " + job, job, std::to_string(max_per_source),
                                std::to_string(3 + plan.inherit.size()), plan.path};
  argv.insert(argv.end(), plan.argv.begin(), plan.argv.end());
  plan.argv = std::move(argv);
  plan.exec_fd = *image;
  plan.pass_report = true;
  return Ok{};
}

}  // namespace corral
