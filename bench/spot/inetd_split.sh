#!/bin/sh
# Where the CPU of an inetd connection goes (docs/BENCHMARKS.md, section 6): the server
# process itself (corral's supervisor, or tcpserver) against what it reaped (corral's
# acceptors and the programs, or tcpserver's forks and the programs), per connection,
# from /proc/PID/stat, under paced arrivals from bclient. Run it on a quiet machine.
#   bench/spot/inetd_split.sh [RATE] [SECONDS] [PROGRAM] [BUILD_DIR]
# PROGRAM defaults to bench/inetd/hello1.c compiled here; tcpserver: ucspi-tcp.
set -eu
HERE="$(cd "$(dirname "$0")" && pwd)"
RATE="${1:-150}"
SECS="${2:-6}"
PROGRAM="${3:-}"
BUILD="${4:-$HERE/../../build}"
T="$(mktemp -d)"
pids=""
cleanup() {
  for p in $pids; do kill "$p" 2>/dev/null || true; done
  rm -rf "$T"
}
trap cleanup EXIT
gcc -O2 -o "$T/bclient" "$HERE/../clients/bclient.c" -lm
if [ -z "$PROGRAM" ]; then
  gcc -O2 -o "$T/hello1" "$HERE/../inetd/hello1.c"
  PROGRAM="$T/hello1"
fi
ticks() { awk '{print $14 + $15, $16 + $17}' "/proc/$1/stat"; }
wait_port() {
  i=0
  until "$T/bclient" seq -p "$1" -n 1 -t 200 >/dev/null 2>&1 || [ $i -ge 50 ]; do
    i=$((i + 1))
    sleep 0.1
  done
}
measure() { # NAME PID PORT
  set -- "$1" "$2" "$3" "$(ticks "$2")"
  out="$("$T/bclient" paced -p "$3" -r "$RATE" -d "$SECS" -t 5000)"
  after="$(ticks "$2")"
  n=$(echo "$out" | sed -n 's/^ok=//p')
  p50=$(echo "$out" | sed -n 's/^lat_p50_ms=//p')
  echo "$4 $after" | awk -v name="$1" -v n="$n" -v p50="$p50" -v hz="$(getconf CLK_TCK)" '{
    self = ($3 - $1) * 1e6 / hz / n; kids = ($4 - $2) * 1e6 / hz / n;
    printf "%-10s %5d conns  p50 %5.2f ms  server process %5.0f us/conn  reaped children %5.0f us/conn  total %5.0f\n",
      name, n, p50, self, kids, self + kids }'
}
"$BUILD/corral" run --inetd --listen 127.0.0.1:18996 --workers 16 --min-spare 16 --max-spare 32 \
  --max 64 --scoreboard-dir "$T/sb" -- "$PROGRAM" >"$T/corral.log" 2>&1 &
pids="$pids $!"
corral_pid=$!
tcpserver -c 64 -H -R -l0 127.0.0.1 18995 "$PROGRAM" >/dev/null 2>&1 &
pids="$pids $!"
tcp_pid=$!
wait_port 18996
wait_port 18995
measure corral "$corral_pid" 18996
measure tcpserver "$tcp_pid" 18995
