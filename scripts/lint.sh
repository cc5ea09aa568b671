#!/bin/sh
# Style and static checks: clang-format on every C/C++ file, clang-tidy on corral's own
# sources (configuration in .clang-format and .clang-tidy). Needs a configured build/.
set -eu
cd "$(dirname "$0")/.."
files=$(git ls-files '*.c' '*.cpp' '*.h' '*.hpp')
clang-format --dry-run --Werror $files
clang-tidy -p build --quiet $(git ls-files 'lib/*.cpp' 'cmd/*.cpp') 2>/dev/null
