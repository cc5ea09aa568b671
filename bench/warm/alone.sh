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
CP=""
CG=""
stop() {
  [[ -n $CP ]] && { kill "$CP" 2>/dev/null || true; wait "$CP" 2>/dev/null || true; }
  if [[ -n $CG ]]; then
    for p in $(cat "$CG/cgroup.procs" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    for _ in $(seq 50); do [[ -z $(cat "$CG/cgroup.procs" 2>/dev/null) ]] && break; sleep 0.1; done
    rmdir "$CG" 2>/dev/null || true
  fi
  CP=""
  CG=""
}
trap 'stop; rm -rf "$W"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
echo "| round | contender | conn/s | CPU ms/conn | of which the supervisor |"
echo "|---|---|---|---|---|"
for r in $(seq "$ROUNDS"); do
  order="warm inetd"; ((r % 2 == 0)) && order="inetd warm"
  for kind in $order; do
    w=false; [[ $kind == warm ]] && w=true
    P=$(port)
    CG=/sys/fs/cgroup/cpuacct/corral-warm-alone-$$-$kind
    mkdir -p "$CG"
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
    ( echo $BASHPID > "$CG/cgroup.procs"; exec "$CORRAL" run "$W/$kind.yaml" ) >"$W/$kind-$r.log" 2>&1 &
    CP=$!
    for _ in $(seq 100); do
      "$CORRAL" status "$W/$kind.yaml" --json 2>/dev/null | grep -q '"idle": *[1-9]' && break
      sleep 0.1
    done
    sleep 2 # the pool settles: warm programs finish their start-up
    k0=$(awk '{print $14+$15}' /proc/$CP/stat)
    u0=$(cat "$CG/cpuacct.usage")
    out=$(wrk -t2 -c16 -d"${SECS}s" -H "Connection: close" "http://127.0.0.1:$P/" 2>&1)
    k1=$(awk '{print $14+$15}' /proc/$CP/stat)
    u1=$(cat "$CG/cpuacct.usage")
    n=$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' <<<"$out")
    printf '| %s | %s | %.1f | %.1f | %.2f |\n' "$r" "$kind" "$(echo "$n / $SECS" | bc -l)" \
      "$(echo "($u1 - $u0) / 1000000 / $n" | bc -l)" "$(echo "($k1 - $k0) * 10 / $n" | bc -l)"
    stop
  done
done
