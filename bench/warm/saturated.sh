#!/usr/bin/env bash
# 16 clients on the Python legacy program, corral warm against corral inetd, longer
# windows than bench/py/warm.py (so that the programs a warm pool has started but not yet
# used at the end of a window weigh less in its CPU per connection).
#
#   bench/warm/saturated.sh [SECONDS] [ROUNDS]
#
# wrk -c16 -t2 `Connection: close` to bench/inetd/hello_py.py; CPU from the cpuacct
# cgroup of each corral's process tree. Run as root.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
CORRAL="${CORRAL_BIN:-$ROOT/build/corral}"
SECS="${1:-30}"
ROUNDS="${2:-2}"
W="$(mktemp -d /tmp/corral-warm-saturated.XXXXXX)"
pids=()
cgs=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  for cg in "${cgs[@]}"; do
    for p in $(cat "$cg/cgroup.procs" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
  done
  sleep 0.3
  for cg in "${cgs[@]}"; do rmdir "$cg" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
declare -A PORT CG
for kind in warm inetd; do
  PORT[$kind]=$(port)
  CG[$kind]=/sys/fs/cgroup/cpuacct/corral-warm-sat-$kind-$$
  mkdir -p "${CG[$kind]}"
  cgs+=("${CG[$kind]}")
  w=false; [[ $kind == warm ]] && w=true
  cat >"$W/$kind.yaml" <<YAML
scoreboard_dir: $W/sb-$kind
jobs:
  bench:
    command: ["$ROOT/bench/inetd/hello_py.py"]
    mode: inetd
    inetd: { warm: $w }
    listen: ["127.0.0.1:${PORT[$kind]}"]
    workers: { start: 8, min_spare: 8, max_spare: 16, max: 64 }
YAML
  ( echo $BASHPID > "${CG[$kind]}/cgroup.procs"; exec "$CORRAL" run "$W/$kind.yaml" ) >"$W/$kind.log" 2>&1 &
  pids+=($!)
done
sleep 3
echo "| round | contender | conn/s | p50 / p99 ms | CPU ms/conn |"
echo "|---|---|---|---|---|"
for r in $(seq "$ROUNDS"); do
  order="warm inetd"; ((r % 2 == 0)) && order="inetd warm"
  for kind in $order; do
    sleep 2
    u0=$(cat "${CG[$kind]}/cpuacct.usage")
    out=$(wrk -t2 -c16 -d"${SECS}s" --latency -H "Connection: close" "http://127.0.0.1:${PORT[$kind]}/" 2>&1)
    u1=$(cat "${CG[$kind]}/cpuacct.usage")
    n=$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' <<<"$out")
    p50=$(awk '$1=="50%"{print $2}' <<<"$out"); p99=$(awk '$1=="99%"{print $2}' <<<"$out")
    printf '| %s | %s | %.1f | %s / %s | %.1f |\n' "$r" "$kind" "$(echo "$n / $SECS" | bc -l)" "$p50" "$p99" \
      "$(echo "($u1 - $u0) / 1000000 / $n" | bc -l)"
  done
done
