# shellcheck shell=bash
# Sourced by bench/warm/alone.sh and paced_cpu.sh: one corral at a time in a cpuacct
# cgroup of its own, so that its whole tree's CPU can be read.
#
#   corral_cg_start NAME CONFIG LOG   starts it; sets CP (its pid) and CG (the cgroup)
#   corral_cg_wait_idle CONFIG        until a worker is idle (10 s at most), then 2 s more
#   corral_cg_stop                    stops it, kills what is left in CG, removes CG
#   free_port                         a free TCP port on 127.0.0.1
# Needs CORRAL; run as root.
CP=""
CG=""
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
corral_cg_start() {
  CG=/sys/fs/cgroup/cpuacct/corral-bench-$$-$1
  mkdir -p "$CG"
  ( echo $BASHPID > "$CG/cgroup.procs"; exec "$CORRAL" run "$2" ) >"$3" 2>&1 &
  CP=$!
}
corral_cg_wait_idle() {
  for _ in $(seq 100); do
    "$CORRAL" status "$1" --json 2>/dev/null | grep -q '"idle": *[1-9]' && break
    sleep 0.1
  done
  sleep 2 # the pool settles: warm programs finish their start-up
}
corral_cg_stop() {
  [[ -n $CP ]] && { kill "$CP" 2>/dev/null || true; wait "$CP" 2>/dev/null || true; }
  if [[ -n $CG ]]; then
    for p in $(cat "$CG/cgroup.procs" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    for _ in $(seq 50); do [[ -z $(cat "$CG/cgroup.procs" 2>/dev/null) ]] && break; sleep 0.1; done
    rmdir "$CG" 2>/dev/null || true
  fi
  CP=""
  CG=""
}
