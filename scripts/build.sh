#!/bin/sh
# Configures and builds corral into ./build (the supervisor lands at build/corral).
# Extra arguments go to cmake's configure step (e.g. -DCORRAL_WERROR=ON).
set -eu
cd "$(dirname "$0")/.."
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
cmake --build build
