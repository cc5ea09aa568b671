#!/usr/bin/env bash
# CPU per connection of one corral inetd job under paced arrivals, warm or cold, with the
# spawns and accepts counted from its own metrics (so that a pool that starts programs
# it does not use shows it).
#
#   bench/warm/paced_cpu.sh WARM(true|false) RATE SECONDS [PROGRAM]
#
# bclient paced (open loop; built by bench/run.sh into bench/results/bin) to PROGRAM
# (default bench/inetd/hello1, built here); CPU from a cpuacct cgroup around corral's
# tree, the supervisor's from /proc/PID/stat (10 ms ticks). Run as root.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
CORRAL="${CORRAL_BIN:-$ROOT/build/corral}"
BCLIENT="$ROOT/bench/results/bin/bclient"
WARM="$1"
RATE="$2"
SECS="$3"
[[ -x $BCLIENT ]] || { echo "build bclient first: bench/run.sh builds it" >&2; exit 2; }
W="$(mktemp -d /tmp/corral-paced-cpu.XXXXXX)"
# shellcheck source=bench/warm/corral_cg.sh
. "$HERE/corral_cg.sh"
trap 'corral_cg_stop; rm -rf "$W"' EXIT
PROGRAM="${4:-}"
if [[ -z $PROGRAM ]]; then
  gcc -O2 -o "$W/hello1" "$ROOT/bench/inetd/hello1.c"
  PROGRAM="$W/hello1"
fi
P=$(free_port)
M=$(free_port)
cat >"$W/c.yaml" <<YAML
scoreboard_dir: $W/sb
metrics: { listen: "127.0.0.1:$M" }
jobs:
  bench:
    command: ["$PROGRAM"]
    mode: inetd
    inetd: { warm: $WARM }
    listen: ["127.0.0.1:$P"]
    workers: { start: 8, min_spare: 8, max_spare: 16, max: 64 }
YAML
corral_cg_start paced "$W/c.yaml" "$W/log"
corral_cg_wait_idle "$W/c.yaml"
metric() { curl -s "http://127.0.0.1:$M/metrics" | awk -v k="$1" '$1 ~ "^"k {s += $2} END {print s + 0}'; }
ticks() { awk '{print $14 + $15}' "/proc/$CP/stat"; }
s0=$(metric corral_worker_spawns_total); a0=$(metric corral_pool_connections_accepted_total)
k0=$(ticks); u0=$(cat "$CG/cpuacct.usage")
res=$("$BCLIENT" paced -p "$P" -r "$RATE" -d "$SECS" -t 5000 | grep -E '^(ok|errors)=' | tr '\n' ' ')
sleep 2 # the programs of the last connections exit and are replaced
s1=$(metric corral_worker_spawns_total); a1=$(metric corral_pool_connections_accepted_total)
k1=$(ticks); u1=$(cat "$CG/cpuacct.usage")
n=$((a1 - a0))
printf 'warm=%s rate=%s %sspawns=%d accepted=%d cpu_ms_per_conn=%.2f supervisor_ms_per_conn=%.2f\n' \
  "$WARM" "$RATE" "$res" $((s1 - s0)) "$n" "$(echo "($u1 - $u0) / 1000000 / $n" | bc -l)" \
  "$(echo "($k1 - $k0) * 10 / $n" | bc -l)"
