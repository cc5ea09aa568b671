#!/bin/sh
# Installs everything corral needs to build and test, from Debian 12's packages.
# musl-tools: the inetd acceptor is linked statically against musl (CMakeLists.txt).
# prometheus: its promtool checks the metrics output, and tests/integration/test_metrics.py
# runs its server (on 127.0.0.1, own config and data dir). Its system daemon must not
# start at install: a policy-rc.d that refuses every start is in place while apt runs
# (as bench/run.sh does for apache2), and the old one (if any) is put back after.
# starman, libfcgi-dev, libfcgi-bin, lighttpd, uvicorn: the real programs of
# tests/integration/test_compat.py (drop-in compatibility; it skips what is missing).
# lighttpd, like prometheus, is a daemon: installed behind the same policy-rc.d.
# pandoc: the man pages (docs/man/*.md); bash-completion: tests/integration/test_completion.py
# loads the completion as bash-completion does.
set -eu
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
  build-essential cmake ninja-build pkg-config \
  libsystemd-dev libyaml-cpp-dev libspdlog-dev libfmt-dev doctest-dev libcli11-dev nlohmann-json3-dev \
  python3 systemd clang-format clang-tidy musl-tools pandoc bash-completion man-db \
  starman libfcgi-dev libfcgi-bin uvicorn >/dev/null
if ! dpkg-query -W -f='${Status}' prometheus 2>/dev/null | grep -q 'install ok installed' ||
  ! dpkg-query -W -f='${Status}' lighttpd 2>/dev/null | grep -q 'install ok installed'; then
  saved=""
  if [ -e /usr/sbin/policy-rc.d ]; then
    saved=/usr/sbin/policy-rc.d.corral-deps-saved
    $SUDO cp -p /usr/sbin/policy-rc.d "$saved"
  fi
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod 755 /usr/sbin/policy-rc.d
  rc=0
  $SUDO apt-get install -y -qq --no-install-recommends prometheus lighttpd >/dev/null || rc=$?
  if [ -n "$saved" ]; then $SUDO mv "$saved" /usr/sbin/policy-rc.d; else $SUDO rm -f /usr/sbin/policy-rc.d; fi
  [ "$rc" -eq 0 ] || { echo "deps.sh: apt-get install prometheus lighttpd failed ($rc)" >&2; exit "$rc"; }
fi
