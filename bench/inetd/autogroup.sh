#!/usr/bin/env bash
# Why xinetd leads every other launcher when the machine is busy (docs/BENCHMARKS.md §13).
#
#   bench/inetd/autogroup.sh [SECONDS] [ROUNDS] [HOGS]
#
# xinetd calls setsid() in each child, so with kernel.sched_autogroup_enabled=1 (Debian's
# default) every program it starts is its own autogroup, and CFS gives each autogroup an
# equal share against the other sessions' work. corral, tcpserver and
# systemd-socket-activate keep their programs in their own session: the 16 programs
# share one autogroup's share. This runs wrk -c16 `Connection: close` on the Python
# legacy program (bench/inetd/hello_py.py) under corral inetd, tcpserver and xinetd,
# interleaved, with HOGS busy loops in a session of their own (bounded: they end with the
# script), once with autogrouping on and once off, and puts it back as it was.
# Run as root; needs wrk, xinetd, ucspi-tcp, bc.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
CORRAL="${CORRAL_BIN:-$ROOT/build/corral}"
SECS="${1:-10}"
ROUNDS="${2:-2}"
HOGS="${3:-2}"
PROG="$ROOT/bench/inetd/hello_py.py"
KNOB=/proc/sys/kernel/sched_autogroup_enabled
SAVED=$(cat "$KNOB")
W="$(mktemp -d /tmp/corral-autogroup.XXXXXX)"
pids=()
hogs=()
cleanup() {
  for p in "${hogs[@]}" "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  echo "$SAVED" > "$KNOB"
  rm -rf "$W"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 100); do
    python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "port $1 never answered" >&2; return 1
}
declare -A PORT
for k in corral tcpserver xinetd; do PORT[$k]=$(port); done
cat > "$W/corral.yaml" <<YAML
scoreboard_dir: $W/sb
jobs:
  bench:
    command: ["$PROG"]
    mode: inetd
    listen: ["127.0.0.1:${PORT[corral]}"]
    workers: { start: 8, min_spare: 8, max_spare: 16, max: 64 }
YAML
"$CORRAL" run "$W/corral.yaml" > "$W/corral.log" 2>&1 & pids+=($!)
tcpserver -c 64 -H -R -l 0 127.0.0.1 "${PORT[tcpserver]}" "$PROG" 2> "$W/tcpserver.log" & pids+=($!)
cat > "$W/xinetd.conf" <<CONF
defaults
{
    instances = 64
    cps = 100000 1
    per_source = UNLIMITED
}
service bench
{
    type = UNLISTED
    socket_type = stream
    protocol = tcp
    wait = no
    user = root
    server = $PROG
    port = ${PORT[xinetd]}
    bind = 127.0.0.1
    flags = NOLIBWRAP REUSE
    log_on_success =
    log_on_failure =
}
CONF
xinetd -dontfork -f "$W/xinetd.conf" -pidfile "$W/xinetd.pid" -filelog "$W/xinetd.log" & pids+=($!)
for k in corral tcpserver xinetd; do wait_port "${PORT[$k]}"; done
# The competing work: busy loops in a session of their own, ended by cleanup (and by
# their own bound of 30 minutes).
for _ in $(seq "$HOGS"); do
  setsid python3 -c 'import time
end = time.monotonic() + 1800
while time.monotonic() < end: pass' & hogs+=($!)
done
echo "| autogroup | round | contender | conn/s | p50 / p99 ms |"
echo "|---|---|---|---|---|"
for ag in 1 0; do
  echo "$ag" > "$KNOB"
  for r in $(seq "$ROUNDS"); do
    order="corral tcpserver xinetd"; ((r % 2 == 0)) && order="xinetd tcpserver corral"
    for k in $order; do
      sleep 1  # the same pause before every window
      out=$(wrk -t2 -c16 -d"${SECS}s" --latency -H "Connection: close" "http://127.0.0.1:${PORT[$k]}/" 2>&1)
      n=$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' <<<"$out")
      p50=$(awk '$1=="50%"{print $2}' <<<"$out"); p99=$(awk '$1=="99%"{print $2}' <<<"$out")
      printf '| %s | %s | %s | %.1f | %s / %s |\n' "$([[ $ag == 1 ]] && echo on || echo off)" "$r" "$k" \
        "$(echo "$n / $SECS" | bc -l)" "$p50" "$p99"
    done
  done
done
