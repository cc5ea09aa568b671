#!/usr/bin/env bash
# The two joins of warm inetd mode side by side (docs/INETD.md): corral's relay
# (`inetd: { warm: true }`), the seccomp user-notification prototype
# (bench/warm/seccomp_join.c), and plain inetd mode (the program on the socket itself) as
# the reference for throughput.
#
#   bench/warm/compare.sh [CONNECTIONS] [MB]
#
# Latency: bclient seq, one connection at a time with 200 ms gaps, to bench/inetd/hello1
# (C, one read, one answer): connect to EOF (wait_port's probe takes one of the prototype's connections). CPU per connection: the cpuacct cgroup of each
# server's tree. Throughput: bench/warm/transfer.py, MB through /bin/cat both ways at once.
# Run as root (cgroups); builds into /tmp.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
CORRAL="${CORRAL_BIN:-$ROOT/build/corral}"
N="${1:-100}"
MB="${2:-100}"
W="$(mktemp -d /tmp/corral-warm-compare.XXXXXX)"
CG=/sys/fs/cgroup/cpuacct/corral-warm-compare-$$
mkdir -p "$CG"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in $(cat "$CG/cgroup.procs" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
  sleep 0.2
  rmdir "$CG" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
gcc -O2 -Wall -o "$W/seccomp_join" "$HERE/seccomp_join.c"
gcc -O2 -Wall -o "$W/hello1" "$ROOT/bench/inetd/hello1.c"
gcc -O2 -Wall -o "$W/bclient" "$ROOT/bench/clients/bclient.c" -lm
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
usage() { cat "$CG/cpuacct.usage"; }
start() { # name cmd...: started inside the cgroup
  local name=$1; shift
  ( echo $BASHPID > "$CG/cgroup.procs"; exec "$@" ) >"$W/$name.log" 2>&1 &
  pids+=($!)
}
corral_job() { # name port program warm
  cat >"$W/$1.yaml" <<YAML
scoreboard_dir: $W/sb-$1
jobs:
  bench:
    command: ["$3"]
    mode: inetd
    inetd: { warm: $4 }
    listen: ["127.0.0.1:$2"]
    workers: { start: 4, min_spare: 4, max_spare: 8, max: 16 }
YAML
  start "$1" "$CORRAL" run "$W/$1.yaml"
}
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; return 1; }
measure_latency() { # name port count
  local u0 u1 out
  sleep 1
  u0=$(usage)
  out=$("$W/bclient" seq -p "$2" -n "$3" -g 200000 -t 5000)
  u1=$(usage)
  local ok p50 p99
  ok=$(sed -n 's/^ok=//p' <<<"$out"); p50=$(sed -n 's/^lat_p50_ms=//p' <<<"$out"); p99=$(sed -n 's/^lat_p99_ms=//p' <<<"$out")
  printf '| %s | %s | %s / %s | %.0f |\n' "$1" "$ok" "$p50" "$p99" "$(echo "($u1 - $u0) / 1000 / ${ok:-1}" | bc -l)"
}
stop_all() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done; pids=(); }

echo "| join | connections | p50 / p99 ms (connect to EOF) | server CPU µs/conn |"
echo "|---|---|---|---|"
P=$(port); corral_job relay "$P" "$W/hello1" true; wait_port "$P"; measure_latency "corral warm (relay)" "$P" "$N"; stop_all
P=$(port); corral_job cold "$P" "$W/hello1" false; wait_port "$P"; measure_latency "corral inetd (cold)" "$P" "$N"; stop_all
P=$(port); start seccomp "$W/seccomp_join" "$P" "$N" "$W/hello1"; wait_port "$P" || true
measure_latency "seccomp prototype" "$P" "$((N - 1))"; stop_all
echo
echo "| join | ${MB} MB both ways through /bin/cat, MB/s (median of 3) | server CPU s |"
echo "|---|---|---|"
for kind in relay cold seccomp; do
  P=$(port)
  case $kind in
    relay) corral_job relay "$P" /bin/cat true; name="corral warm (relay, splice)" ;;
    cold) corral_job cold "$P" /bin/cat false; name="corral inetd (the socket itself)" ;;
    seccomp) start seccomp "$W/seccomp_join" "$P" 4 /bin/cat; name="seccomp prototype (every read traps)" ;;
  esac
  wait_port "$P" || true
  sleep 1
  u0=$(usage)
  out=$(python3 "$HERE/transfer.py" "$P" "$MB" 3)
  u1=$(usage)
  printf '| %s | %s | %.2f |\n' "$name" "$out" "$(echo "($u1 - $u0) / 1000000000" | bc -l)"
  [[ $kind == seccomp ]] && { sleep 0.5; stop_all; cat "$W/seccomp.log"; } || stop_all
done
