#!/bin/sh
# Builds corral's Debian packages with debhelper (debian/) and checks them with lintian.
# Installs what it needs from Debian 12's repositories (scripts/deps.sh, plus debhelper,
# dpkg-dev, fakeroot, lintian), builds from a copy of the checkout's files in
# build-deb/src (dpkg-buildpackage writes its output into the parent directory, which
# is build-deb/ then), and fails when lintian reports an error. Output:
#   build-deb/corral_<version>_amd64.deb            the supervisor (what apt-get installs)
#   build-deb/libcorral-worker0_<version>_amd64.deb  the worker library
#   build-deb/libcorral-worker-dev_<version>_amd64.deb  headers, .a, pkg-config, CMake package
#   build-deb/*-dbgsym_*.deb, build-deb/corral_<version>_amd64.changes, build-deb/lintian.txt
# Usage: scripts/package.sh            (as root, or with sudo for the installs)
set -eu
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
scripts/deps.sh
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -qq --no-install-recommends debhelper dpkg-dev fakeroot lintian >/dev/null

version=$(sed -n 's/^project(corral VERSION \([0-9.]*\).*/\1/p' CMakeLists.txt)
deb_version=$(dpkg-parsechangelog -l debian/changelog -S Version)
if [ "$version" != "$deb_version" ]; then
  echo "package: CMakeLists.txt says $version, debian/changelog $deb_version: add a changelog entry (dch -v $version)" >&2
  exit 1
fi
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then commit="$commit-dirty"; fi

out=build-deb
rm -rf "$out"
mkdir -p "$out/src"
# The tracked files as they are in the work tree, and new ones not yet ignored.
git ls-files -z --cached --others --exclude-standard |
  xargs -0 sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh |
  tar --null -T - -cf - | tar -xf - -C "$out/src"

echo "== dpkg-buildpackage ($version, commit $commit)"
(cd "$out/src" &&
  CORRAL_GIT_COMMIT="$commit" DEB_BUILD_OPTIONS="parallel=$(nproc) ${DEB_BUILD_OPTIONS:-}" \
    dpkg-buildpackage -us -uc -b) >"$out/build.log" 2>&1 || {
  tail -n 80 "$out/build.log"
  echo "package: dpkg-buildpackage failed; log: $out/build.log" >&2
  exit 1
}
ls -l "$out"/*.deb

echo "== lintian"
status=0
lintian --fail-on error --display-info --tag-display-limit 0 "$out"/corral_*.changes >"$out/lintian.txt" 2>&1 || status=$?
cat "$out/lintian.txt"
if [ "$status" -ne 0 ]; then
  echo "package: lintian reports errors (exit $status)" >&2
  exit 1
fi
echo "package: OK ($(grep -c '^E:' "$out/lintian.txt" || true) errors, $(grep -c '^W:' "$out/lintian.txt" || true) warnings; docs/PACKAGING.md explains the warnings)"
