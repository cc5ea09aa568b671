#!/usr/bin/env bash
# corral warm against corral inetd at 16 clients, each corral ALONE on the machine (one is
# stopped before the other starts), with the supervisor's own CPU split out. Where
# bench/warm/saturated.sh keeps both corrals alive for the whole run, this one shows
# the run-to-run spread of a warm pool on its own.
#
#   bench/warm/alone.sh [SECONDS] [ROUNDS] [PROGRAM]
#
# wrk -c16 -t2 `Connection: close` to PROGRAM (default bench/inetd/hello_py.py); CPU per
# connection from a cpuacct cgroup around each corral's tree; the supervisor's from
# /proc/PID/stat (10 ms ticks). Run as root.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
CORRAL="${CORRAL_BIN:-$ROOT/build/corral}"
SECS="${1:-20}"
ROUNDS="${2:-2}"
PROGRAM="${3:-$ROOT/bench/inetd/hello_py.py}"
W="$(mktemp -d /tmp/corral-warm-alone.XXXXXX)"
# shellcheck source=bench/warm/corral_cg.sh
. "$HERE/corral_cg.sh"
trap 'corral_cg_stop; rm -rf "$W"' EXIT
echo "| round | contender | conn/s | CPU ms/conn | of which the supervisor |"
echo "|---|---|---|---|---|"
for r in $(seq "$ROUNDS"); do
  order="warm inetd"; ((r % 2 == 0)) && order="inetd warm"
  for kind in $order; do
    w=false; [[ $kind == warm ]] && w=true
    P=$(free_port)
    cat >"$W/$kind.yaml" <<YAML
scoreboard_dir: $W/sb-$kind-$r
jobs:
  bench:
    command: ["$PROGRAM"]
    mode: inetd
    inetd: { warm: $w }
    listen: ["127.0.0.1:$P"]
    workers: { start: 8, min_spare: 8, max_spare: 16, max: 64 }
YAML
    corral_cg_start "$kind" "$W/$kind.yaml" "$W/$kind-$r.log"
    corral_cg_wait_idle "$W/$kind.yaml"
    k0=$(awk '{print $14+$15}' /proc/$CP/stat)
    u0=$(cat "$CG/cpuacct.usage")
    out=$(wrk -t2 -c16 -d"${SECS}s" -H "Connection: close" "http://127.0.0.1:$P/" 2>&1)
    k1=$(awk '{print $14+$15}' /proc/$CP/stat)
    u1=$(cat "$CG/cpuacct.usage")
    n=$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' <<<"$out")
    printf '| %s | %s | %.1f | %.1f | %.2f |\n' "$r" "$kind" "$(echo "$n / $SECS" | bc -l)" \
      "$(echo "($u1 - $u0) / 1000000 / $n" | bc -l)" "$(echo "($k1 - $k0) * 10 / $n" | bc -l)"
    corral_cg_stop
  done
done
