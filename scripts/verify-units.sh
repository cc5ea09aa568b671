#!/bin/sh
# Checks units/ with `systemd-analyze verify`: installs corral first into the prefix
# the units name (/usr/local: verify wants every Exec*= binary to exist), verifies a
# copy of the units, and fails on any complaint about them.
#
# `systemd-analyze verify` exits 0 on warnings such as an unknown key or a bad value
# ("..., ignoring"), and in a container without systemd as PID 1 it may also complain
# about the host's own units. So its exit code alone proves little either way: this
# script fails when any line of its output names one of our units (or their temporary
# copies), and reports, without failing, a non-zero exit whose output names none.
# Usage: scripts/verify-units.sh            (needs root for the install; uses ./build)
set -eu
cd "$(dirname "$0")/.."

prefix=/usr/local
if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "verify-units: systemd-analyze not found (apt-get install systemd)" >&2
  exit 1
fi
cmake --install build --prefix "$prefix" >/dev/null
test -x "$prefix/bin/corral" || { echo "verify-units: $prefix/bin/corral missing after install" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
units=""
for unit in units/*.service units/*.socket; do
  cp "$unit" "$tmp/"
  units="$units $tmp/$(basename "$unit")"
done

status=0
# --man=no: Documentation= is not checked against installed man pages.
# shellcheck disable=SC2086  # word splitting of $units is intended
(cd "$tmp" && systemd-analyze verify --man=no $units) >"$tmp/out" 2>&1 || status=$?

# Unit names as systemd prints them (a template is verified as an instance, e.g.
# corral@i.service), plus the paths of the copies.
pattern="$tmp"
for unit in $units; do
  base=$(basename "$unit")
  case "$base" in
    *@.*) pattern="$pattern|${base%%@*}@" ;;
    *) pattern="$pattern|${base%.*}\\." ;;
  esac
done

if grep -E "$pattern" "$tmp/out" >"$tmp/ours"; then
  echo "verify-units: systemd-analyze verify complains about our units:" >&2
  cat "$tmp/ours" >&2
  exit 1
fi
if [ "$status" -ne 0 ]; then
  echo "verify-units: systemd-analyze verify exited $status, about other units only (ignored):" >&2
  cat "$tmp/out" >&2
fi
echo "verify-units: OK ($(echo "$units" | wc -w) units)"
