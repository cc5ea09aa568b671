#!/bin/sh
# Installs everything corral needs to build and test, from Debian 12's packages.
# musl-tools: the inetd acceptor is linked statically against musl (CMakeLists.txt).
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
  python3 systemd clang-format clang-tidy musl-tools pandoc bash-completion man-db >/dev/null
