#!/usr/bin/env bash
# A real cgroup v2 run on a hybrid host (docs/LIMITS.md, "A real cgroup v2 run").
#
#   sudo scripts/cgroup-v2-run.sh [BUILD_DIR]
#
# Debian 12 hosts booted with systemd.unified_cgroup_hierarchy=0, and this project's CI
# machine, have memory, cpu and pids on cgroup v1 and an empty cgroup2 at
# /sys/fs/cgroup/unified. A v1 controller whose hierarchy has no cgroup but its root can
# be given back to cgroup2 by unmounting that hierarchy. This script does that for pids
# only, runs the real corral binary with a job that sets `cgroup: { pids_max: 8 }` (so
# that its slot cgroups are v2 for pids and v1 for memory: "decide per controller"),
# checks what a user would, and puts the v1 pids hierarchy back, whatever happens.
# It changes the whole machine for a few seconds: run it alone, not beside the test suite.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
BUILD="${1:-$ROOT/build}"
CORRAL="$BUILD/corral"
V2=/sys/fs/cgroup/unified
V1=/sys/fs/cgroup/pids
say() { printf '[cgroup-v2-run] %s\n' "$*"; }
fail() { say "FAIL: $*"; exit 1; }
[[ $EUID -eq 0 ]] || fail "run as root"
[[ -x $CORRAL ]] || fail "no $CORRAL (build first)"
[[ "$(stat -f -c %T "$V2" 2>/dev/null)" == cgroup2fs ]] || fail "$V2 is not a cgroup2 mount"
if ! mountpoint -q "$V1"; then fail "$V1 is not mounted (pids already on v2? nothing to give back)"; fi
if find "$V1" -mindepth 1 -type d | grep -q .; then fail "$V1 has child cgroups: its controller cannot move"; fi

W="$(mktemp -d /tmp/corral-cgroup-v2.XXXXXX)"
pid=""
restore() {
  set +e
  [[ -n $pid ]] && kill "$pid" 2>/dev/null && for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  [[ -n $pid ]] && kill -9 "$pid" 2>/dev/null
  # Whatever the run left: back to the root, then gone.
  for d in $(find "$V2" -mindepth 1 -depth -type d -path "$V2/corral-*"); do
    for p in $(cat "$d/cgroup.procs" 2>/dev/null); do echo "$p" > "$V2/cgroup.procs" 2>/dev/null; done
    rmdir "$d" 2>/dev/null
  done
  grep -qw pids "$V2/cgroup.subtree_control" && echo "-pids" > "$V2/cgroup.subtree_control"
  for _ in $(seq 50); do
    mountpoint -q "$V1" && break
    mount -t cgroup -o pids cgroup "$V1" 2>/dev/null && break
    sleep 0.1
  done
  mountpoint -q "$V1" && say "restored: $V1 is a v1 pids hierarchy again" || say "WARNING: could not remount $V1"
  rm -rf "$W"
}
trap restore EXIT

umount "$V1"
for _ in $(seq 50); do grep -qw pids "$V2/cgroup.controllers" && break; sleep 0.1; done
grep -qw pids "$V2/cgroup.controllers" || fail "pids did not appear in $V2/cgroup.controllers"
say "pids is now a cgroup v2 controller: $(cat "$V2/cgroup.controllers")"
root_procs_before=$(wc -l < "$V2/cgroup.procs")

cat > "$W/job.yaml" <<YAML
scoreboard_dir: $W/sb
jobs:
  bomb:
    command: ["/usr/bin/python3", "$ROOT/tests/integration/fork_bomb.py"]
    mode: plain
    listen: ["127.0.0.1:0"]
    env: { BOMB_OUT: $W/bomb.out }
    cgroup: { pids_max: 8, memory_max: 256MiB }
YAML
"$CORRAL" check "$W/job.yaml"
"$CORRAL" run "$W/job.yaml" > "$W/corral.log" 2>&1 &
pid=$!
for _ in $(seq 200); do [[ -s $W/bomb.out ]] && break; sleep 0.05; done
[[ -s $W/bomb.out ]] || { cat "$W/corral.log"; fail "the worker never reported"; }
worker=$("$CORRAL" status --scoreboard-dir "$W/sb" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["jobs"][0]["workers"][0]["pid"])')
say "worker $worker: $(cat "$W/bomb.out")"
say "its /proc/PID/cgroup:"; sed 's/^/    /' "/proc/$worker/cgroup"
slot=$(awk -F: '$1=="0"{print $3}' "/proc/$worker/cgroup")
[[ $slot == /corral-bomb/slot-* ]] || fail "the worker's v2 cgroup is '$slot', not /corral-bomb/slot-N"
[[ "$(cat "$V2$slot/pids.max")" == 8 ]] || fail "pids.max is $(cat "$V2$slot/pids.max")"
grep -q "^[0-9]*:memory:/corral-bomb/slot-" "/proc/$worker/cgroup" || fail "memory is not in a v1 slot cgroup"
read -r children _ err <<<"$(cat "$W/bomb.out")"
((children <= 7)) || fail "$children children under pids.max 8"
[[ $err == 11 ]] || fail "fork failed with errno $err, not EAGAIN"
[[ ! -e $V2/supervisor ]] || fail "corral made $V2/supervisor (it must move nothing out of the root cgroup)"
root_procs_after=$(wc -l < "$V2/cgroup.procs")
say "root cgroup.procs: $root_procs_before lines before, $root_procs_after during the run (nothing moved out)"
say "subtree_control of the root: $(cat "$V2/cgroup.subtree_control"); of corral-bomb: $(cat "$V2/corral-bomb/cgroup.subtree_control")"
kill -TERM "$pid"
for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
wait "$pid" || fail "corral exited with $?"
pid=""
[[ ! -e $V2/corral-bomb ]] || fail "$V2/corral-bomb is left after the stop"
say "corral stopped; $V2/corral-bomb removed"
say "PASS"
