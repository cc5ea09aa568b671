#!/usr/bin/env bash
# corral benchmarks: corral against Apache 2.4 prefork, a hand-written C prefork
# ceiling, tcpserver, xinetd and systemd-socket-activate, side by side in one run.
#
#   bench/run.sh [--quick] [--rounds N] [--no-pin] [--no-install] [--no-perf] [--wait-quiet S] [SCENARIO...]
#
# SCENARIO: close keepalive herd fairness scale inetd burst churn accept warm (default: all,
# in that order). --quick runs a short version of everything (a few minutes); the full run
# takes about half an hour. Results (Markdown tables, CSV/data, PNG plots, logs) go
# to bench/results/ (git-ignored): results.md is the report of the last run.
#
# Run as root (it installs packages and uses a cgroup for CPU accounting). Every
# server runs on 127.0.0.1 with its own config in a temp dir, and is stopped by pid.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
BUILD="${CORRAL_BUILD:-$ROOT/build}"
RESULTS="${BENCH_RESULTS:-$HERE/results}"

install=1
args=()
for a in "$@"; do
  case "$a" in
    --no-install) install=0 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) args+=("$a") ;;
  esac
done

log() { printf '[run.sh] %s\n' "$*" >&2; }

# --- peers from Debian's packages, without letting their daemons start ---------
install_peers() {
  local pkgs=(apache2 apache2-utils wrk ucspi-tcp xinetd systemd gnuplot-nox gcc bc)
  local missing=()
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if ((${#missing[@]})); then
    [[ $EUID -eq 0 ]] || { log "need root to install: ${missing[*]}"; exit 1; }
    log "installing ${missing[*]} (daemons kept from starting by policy-rc.d)"
    local had_policy=0
    [[ -e /usr/sbin/policy-rc.d ]] && { had_policy=1; cp -p /usr/sbin/policy-rc.d /usr/sbin/policy-rc.d.bench-saved; }
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    local rc=0
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } >&2 || rc=$?
    if ((had_policy)); then mv /usr/sbin/policy-rc.d.bench-saved /usr/sbin/policy-rc.d; else rm -f /usr/sbin/policy-rc.d; fi
    ((rc == 0)) || { log "apt-get failed ($rc)"; exit 1; }
  fi
  # linux-perf is optional (profiles only); try it, never fail on it.
  if ! command -v perf >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >&2 || log "linux-perf not installed (optional)"
  fi
  # If a system daemon runs anyway (installed earlier without policy-rc.d), stop it:
  # only the system instances, by the pid in their own pid files.
  local pf
  for pf in /var/run/apache2/apache2.pid /run/apache2/apache2.pid /run/xinetd.pid /var/run/xinetd.pid; do
    if [[ -s "$pf" ]]; then
      local pid; pid="$(cat "$pf")"
      if [[ -d /proc/$pid ]]; then log "stopping system daemon pid $pid ($pf)"; kill "$pid" || true; fi
    fi
  done
}

if ((install)); then install_peers; fi

for b in corral examples/hello-http examples/echo; do
  [[ -x "$BUILD/$b" ]] || { log "missing $BUILD/$b: build first (cmake --build $BUILD)"; exit 1; }
done

# --- the results dir: emptied for a run of every scenario (the previous run's files
# would mix with this one's); kept when scenarios are named (their report is then
# results-NAME....md, next to the full run's results.md) -------------------------------
named=0
for a in "${args[@]}"; do
  case "$a" in -*|[0-9]*) ;; *) named=1 ;; esac
done
mkdir -p "$RESULTS"
if [[ "$RESULTS" != "$HERE/results" && ! -e "$RESULTS/.corral-bench" && -n "$(ls -A "$RESULTS")" ]]; then
  log "$RESULTS is not empty and not a corral bench results dir; refusing to write into it"; exit 1
fi
if ((named == 0)); then
  find "$RESULTS" -mindepth 1 -maxdepth 1 ! -name bin ! -name .corral-bench -exec rm -rf {} +
fi
touch "$RESULTS/.corral-bench"

# --- our own small C programs (compiled each run, into the results dir) --------
mkdir -p "$RESULTS/bin"
CFLAGS=(-O2 -Wall -Wextra -std=gnu11)
gcc "${CFLAGS[@]}" -o "$RESULTS/bin/prefork_ceiling" "$HERE/ceiling/prefork_ceiling.c"
gcc "${CFLAGS[@]}" -o "$RESULTS/bin/hello1" "$HERE/inetd/hello1.c"
gcc "${CFLAGS[@]}" -o "$RESULTS/bin/bclient" "$HERE/clients/bclient.c" -lm

# --- a snapshot of corral's binaries: others may rebuild build/ during the run ------
SNAP="$RESULTS/build"
((named)) && SNAP="$RESULTS/build-partial"
rm -rf "$SNAP"
mkdir -p "$SNAP/examples"
cp -p "$BUILD/corral" "$SNAP/corral"
cp -p "$BUILD/examples/hello-http" "$BUILD/examples/echo" "$SNAP/examples/"
git -C "$ROOT" rev-parse HEAD >"$SNAP/GIT_REV" 2>/dev/null || true
git -C "$ROOT" status --porcelain --untracked-files=no >"$SNAP/GIT_DIRTY" 2>/dev/null || true
grep -E '^CMAKE_BUILD_TYPE' "$BUILD/CMakeCache.txt" >"$SNAP/BUILD_TYPE" 2>/dev/null || true

exec python3 "$HERE/py/bench.py" --root "$ROOT" --build "$SNAP" --results "$RESULTS" "${args[@]}"
