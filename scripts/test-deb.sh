#!/bin/sh
# Tests the .deb that scripts/package.sh built (build-deb/corral_*_amd64.deb) on this
# machine, as CI does on its fresh one: installs it with `apt-get install ./corral_*.deb`,
# runs `corral --version`, runs the example job from /etc/corral in the foreground and
# curls it (its workers run as the `corral` user), checks the man pages, completion,
# units and Python helper, reinstalls it under the running supervisor (postinst sends
# SIGUSR2: same pid, same sockets, new binary), stops it, removes the package and checks
# that nothing is left but conffiles, the `corral` user and /run/corral, then purges it.
# Needs root, port 8080 free, and corral not installed yet (it refuses otherwise).
set -eu
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "test-deb: needs root (it installs a package)" >&2; exit 1; }
out=$(pwd)/build-deb
ls "$out"/corral_*_amd64.deb >/dev/null 2>&1 || { echo "test-deb: no $out/corral_*_amd64.deb (scripts/package.sh)" >&2; exit 1; }
deb=$(ls "$out"/corral_*_amd64.deb)
if dpkg-query -W -f='${Status}' corral 2>/dev/null | grep -q "installed\|config-files"; then
  if [ "${CI:-}" = true ]; then
    # CI's machine: a run that was cut short may have left it; start from a clean slate.
    echo "test-deb: CI: purging the corral package a previous run left"
    apt-get purge -y corral >/dev/null
  else
    echo "test-deb: corral is already installed here; refusing to touch it (apt-get purge corral first)" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
command -v curl >/dev/null 2>&1 || apt-get install -y -qq --no-install-recommends curl >/dev/null

tmp=$(mktemp -d)
supervisor=""
cleanup() {
  [ -n "$supervisor" ] && kill -KILL "$supervisor" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT INT TERM
passed=0
ok() { passed=$((passed + 1)); echo "test-deb: ok   $*"; }
fail() {
  echo "test-deb: FAIL $*" >&2
  [ -f "$tmp/corral.log" ] && { echo "--- corral log:" >&2; cat "$tmp/corral.log" >&2; }
  exit 1
}

# The package's paths, and which of them exist before it is installed.
dpkg-deb -c "$deb" | awk '{print $6}' | sed 's|^\./|/|; s|/$||' | grep -v '^$' >"$tmp/paths"
while read -r p; do if [ -e "$p" ] || [ -L "$p" ]; then echo "$p"; fi; done <"$tmp/paths" >"$tmp/before"

echo "== apt-get install ./$(basename "$deb")"
(cd "$out" && apt-get install -y ./corral_*_amd64.deb) >"$tmp/apt.log" 2>&1 || { cat "$tmp/apt.log"; fail "apt-get install"; }
ok "installed: $(dpkg-query -W -f='${Package} ${Version} ${Status}' corral)"

version=$(corral --version) || fail "corral --version"
echo "$version" | grep -Eq '^corral [0-9]+\.[0-9]+\.[0-9]+' || fail "corral --version printed: $version"
[ "$(command -v corral)" = /usr/bin/corral ] || fail "corral is $(command -v corral), not /usr/bin/corral"
ok "corral --version: $version"

entry=$(getent passwd corral) || fail "no corral user"
uid=$(echo "$entry" | cut -d: -f3)
[ "$uid" -lt 1000 ] || fail "corral user is not a system user: $entry"
ok "system user: $entry"

[ -d /run/corral ] && [ "$(stat -c '%a %U %G' /run/corral)" = "755 root root" ] || fail "/run/corral: $(stat -c '%a %U %G' /run/corral 2>&1)"
grep -qx 'd /run/corral 0755 root root -' /usr/lib/tmpfiles.d/corral.conf || fail "tmpfiles.d/corral.conf"
ok "/run/corral 0755 root root (tmpfiles.d)"

dpkg-query -W -f='${Conffiles}\n' corral | grep -q '/etc/corral/hello-http.yaml' || fail "/etc/corral/hello-http.yaml is no conffile"
[ -x /usr/lib/corral/hello-http ] || fail "/usr/lib/corral/hello-http"
grep -q '^ExecStart=/usr/bin/corral run /etc/corral/%i.yaml$' /lib/systemd/system/corral@.service || fail "corral@.service ExecStart"
ok "conffile /etc/corral/hello-http.yaml, worker /usr/lib/corral/hello-http, units name /usr/bin/corral"

corral check /etc/corral/hello-http.yaml >"$tmp/check.out" 2>&1 || { cat "$tmp/check.out"; fail "corral check /etc/corral/hello-http.yaml"; }
ok "corral check /etc/corral/hello-http.yaml"

MANPAGER=cat MANWIDTH=80 man corral 2>/dev/null | grep -q -- "--scoreboard-dir" || fail "man corral"
MANPAGER=cat MANWIDTH=80 man 5 corral.yaml 2>/dev/null | grep -q "scoreboard_dir" || fail "man 5 corral.yaml"
ok "man corral, man 5 corral.yaml"

bash --norc -c '. /usr/share/bash-completion/bash_completion; __load_completion corral && complete -p corral' 2>&1 | grep -q '_corral corral' || fail "bash completion not loaded"
ok "bash completion loads on demand"

/usr/bin/python3 -c 'import corral_worker, sys; assert corral_worker.__file__ == "/usr/lib/python3/dist-packages/corral_worker.py", corral_worker.__file__' || fail "python3 -c 'import corral_worker'"
ok "python3: import corral_worker"

# The example job, in the foreground as `corral run` does it (no systemd as PID 1 here).
if curl -s -o /dev/null --max-time 2 http://127.0.0.1:8080/; then fail "something already answers on 127.0.0.1:8080"; fi
corral run /etc/corral/hello-http.yaml >"$tmp/corral.log" 2>&1 &
supervisor=$!
i=0
until [ "$(curl -s --max-time 2 http://127.0.0.1:8080/ 2>/dev/null)" = hello ]; do
  i=$((i + 1)); [ $i -lt 100 ] || fail "curl http://127.0.0.1:8080/ never answered hello"
  kill -0 "$supervisor" 2>/dev/null || fail "corral run exited"
  sleep 0.1
done
ok "corral run /etc/corral/hello-http.yaml: curl http://127.0.0.1:8080/ answers hello"
users=$(ps -o user= --ppid "$supervisor" | sort -u | tr '\n' ' ')
[ "$users" = "corral " ] || fail "workers run as: $users"
corral status /etc/corral/hello-http.yaml >"$tmp/status.out" 2>&1 || { cat "$tmp/status.out"; fail "corral status"; }
ok "workers run as corral; corral status finds them"

# Upgrade in place: the postinst of the (re)installed package sends SIGUSR2.
(cd "$out" && apt-get install -y --reinstall ./corral_*_amd64.deb) >"$tmp/apt.log" 2>&1 || { cat "$tmp/apt.log"; fail "apt-get install --reinstall"; }
grep -q "supervisor $supervisor re-executes" "$tmp/apt.log" || { cat "$tmp/apt.log"; fail "postinst did not signal $supervisor"; }
i=0
until grep -q "binary upgrade: took over" "$tmp/corral.log"; do
  i=$((i + 1)); [ $i -lt 150 ] || fail "no binary upgrade after SIGUSR2"
  sleep 0.1
done
kill -0 "$supervisor" 2>/dev/null || fail "the supervisor is gone after the upgrade"
[ "$(curl -s --max-time 5 http://127.0.0.1:8080/)" = hello ] || fail "no hello after the upgrade"
ok "reinstall: postinst sent SIGUSR2, pid $supervisor re-executed and still serves"

kill -TERM "$supervisor"
status=0
wait "$supervisor" || status=$?
supervisor=""
[ "$status" -eq 0 ] || fail "corral run exited $status on SIGTERM"
ok "SIGTERM: corral run exited 0"

echo "== apt-get remove corral"
apt-get remove -y corral >"$tmp/apt.log" 2>&1 || { cat "$tmp/apt.log"; fail "apt-get remove"; }
dpkg-query -W -f='${Status}\n' corral | grep -q "deinstall ok config-files" || fail "status after remove: $(dpkg-query -W -f='${Status}' corral)"
left=""
while read -r p; do
  if { [ -e "$p" ] || [ -L "$p" ]; } && ! grep -qxF "$p" "$tmp/before"; then
    case "$p" in
      /etc/corral | /etc/corral/hello-http.yaml) ;;  # conffiles stay until purge
      *) left="$left $p" ;;
    esac
  fi
done <"$tmp/paths"
[ -z "$left" ] || fail "left after remove:$left"
[ -f /etc/corral/hello-http.yaml ] || fail "the conffile went with remove"
getent passwd corral >/dev/null || fail "the corral user went with remove"
[ -d /run/corral ] || fail "/run/corral went with remove"
ok "removed: only the conffile, the corral user and /run/corral are left"

apt-get purge -y corral >"$tmp/apt.log" 2>&1 || { cat "$tmp/apt.log"; fail "apt-get purge"; }
[ ! -e /etc/corral ] || fail "/etc/corral left after purge: $(ls -A /etc/corral)"
dpkg-query -W -f='${Status}\n' corral 2>/dev/null | grep -q "installed\|config-files" && fail "still known to dpkg after purge"
ok "purged: /etc/corral gone"
echo "test-deb: $passed passed, 0 failed"
