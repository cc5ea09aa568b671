// lib/common/safe_fs: which directories count as private to the supervisor's user.
#include "common/safe_fs.h"

#include <sys/stat.h>

#include <doctest/doctest.h>

TEST_CASE("a directory is private when root or the user owns it and only the owner writes") {
  CHECK(corral::why_not_private(S_IFDIR | 0755, 0, 1000) == "");
  CHECK(corral::why_not_private(S_IFDIR | 0700, 1000, 1000) == "");
  CHECK(corral::why_not_private(S_IFDIR | 0555, 0, 0) == "");
}

TEST_CASE("links, other types, other owners and group or other write are not private") {
  CHECK(corral::why_not_private(S_IFLNK | 0777, 0, 0) == "is a symbolic link");
  CHECK(corral::why_not_private(S_IFREG | 0644, 0, 0) == "is not a directory");
  CHECK(corral::why_not_private(S_IFDIR | 0755, 1001, 1000) ==
        "is owned by uid 1001, neither root nor uid 1000 (this supervisor)");
  CHECK(corral::why_not_private(S_IFDIR | 0775, 0, 0) ==
        "is writable by its group or by others (mode 0775)");
  CHECK(corral::why_not_private(S_IFDIR | 01777, 0, 0) ==
        "is writable by its group or by others (mode 1777)");
}
