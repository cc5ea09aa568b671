#!/bin/sh
# Fuzzes the YAML configuration loader, the scoreboard reader and the command-line
# parser with libFuzzer (docs/FUZZING.md). Installs Debian's clang and its libFuzzer
# runtime, builds the three targets in build-fuzz/ and runs each for SECONDS (default
# 60) on a copy of its seed corpus, so the committed corpus does not grow. Exits non-zero when a target finds a
# crash, a sanitizer report, a leak, a timeout or an out-of-memory; the input that did
# it is left in build-fuzz/fuzz/artifacts/.
#   scripts/fuzz.sh [SECONDS]
set -eu
cd "$(dirname "$0")/.."
SECONDS_EACH="${1:-60}"

if ! command -v clang++ >/dev/null 2>&1 ||
  ! ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # clang-14 is Debian 12's clang; libclang-rt-14-dev holds libFuzzer and the sanitizers.
  $SUDO apt-get install -y -qq --no-install-recommends clang clang-14 libclang-rt-14-dev >/dev/null
fi

CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCORRAL_FUZZ=ON >/dev/null
cmake --build build-fuzz --target config_fuzz scoreboard_fuzz cli_fuzz

work="build-fuzz/fuzz/run"
artifacts="build-fuzz/fuzz/artifacts"
rm -rf "$work"
mkdir -p "$work" "$artifacts"
# scoreboard_fuzz keeps its scratch directory under TMPDIR (memory-backed when possible);
# removed here even when a crash skipped the target's own clean-up.
scratch=$(mktemp -d /dev/shm/corral-fuzz.XXXXXX 2>/dev/null || mktemp -d)
trap 'rm -rf "$scratch"' EXIT
export TMPDIR="$scratch"
status=0
# name, max input length, dictionary
for spec in "config 4096 fuzz/config.dict" "scoreboard 8192 fuzz/scoreboard.dict" \
  "cli 1024 fuzz/cli.dict"; do
  set -- $spec
  name="$1" max_len="$2" dict="$3"
  cp -r "fuzz/corpus/$name" "$work/$name"
  echo "== ${name}_fuzz: ${SECONDS_EACH}s"
  # -timeout: an input slower than 10 s is a hang; -rss_limit_mb: a blow-up, not a
  # legitimate configuration. Leak detection is on (libFuzzer's default with ASan).
  if ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    "build-fuzz/fuzz/${name}_fuzz" "$work/$name" \
    -dict="$dict" -max_len="$max_len" -max_total_time="$SECONDS_EACH" -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$artifacts/${name}-" \
    >"$work/$name.log" 2>&1; then
    grep -E '^(stat::|#[0-9]+[[:space:]]+DONE)' "$work/$name.log" || true
  else
    echo "${name}_fuzz FAILED; log: $work/$name.log; input: $(ls -t "$artifacts" | grep "^$name-" | head -n 1)"
    tail -n 60 "$work/$name.log"
    status=1
  fi
done
exit $status
