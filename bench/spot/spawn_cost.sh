#!/bin/sh
# Process-creation spot check (docs/BENCHMARKS.md, section 6): the CPU one new process
# costs on this machine, for the programs an inetd connection involves. Builds into a
# temp dir with gcc and, when Debian's musl-tools is there, musl-gcc.
#   bench/spot/spawn_cost.sh [N] [BUILD_DIR]     (N iterations each, default 500)
set -eu
HERE="$(cd "$(dirname "$0")" && pwd)"
N="${1:-500}"
BUILD="${2:-$HERE/../../build}"
T="$(mktemp -d)"
trap 'rm -rf "$T"' EXIT
printf 'int main(void) { return 0; }\n' >"$T/nop.c"
gcc -O2 -o "$T/spawn_cost" "$HERE/spawn_cost.c"
gcc -O2 -o "$T/nop-dynamic-glibc" "$T/nop.c"
gcc -O2 -static -o "$T/nop-static-glibc" "$T/nop.c"
gcc -O2 -o "$T/hello1" "$HERE/../inetd/hello1.c"
if command -v musl-gcc >/dev/null; then
  musl-gcc -O2 -static -o "$T/nop-static-musl" "$T/nop.c"
  musl-gcc -O2 -static -o "$T/spawn_cost_musl" "$HERE/spawn_cost.c"
fi
for p in "$T/nop-static-musl" "$T/nop-static-glibc" "$T/nop-dynamic-glibc" "$T/hello1" \
  "$BUILD/internal/corral-inetd" "$BUILD/examples/hello-http"; do
  [ -x "$p" ] && "$T/spawn_cost" spawn "$p" "$N" 2>/dev/null
done
"$T/spawn_cost" fork "$N"
[ -x "$T/spawn_cost_musl" ] && "$T/spawn_cost_musl" fork "$N" | sed 's/^fork     /fork-musl/'
exit 0
