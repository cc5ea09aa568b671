#!/bin/sh
# Installs the packages, builds from scratch with warnings as errors, and runs the whole
# test suite (unit and integration) through CTest.
set -eu
cd "$(dirname "$0")/.."
scripts/deps.sh
rm -rf build
scripts/build.sh -DCORRAL_WERROR=ON
ctest --test-dir build --output-on-failure --timeout 600 -j2
