#!/bin/sh
# Checks units/ with `systemd-analyze verify`: the units are templates (units/*.in) that
# `cmake --install` writes with the installed bindir in them, so this installs ./build
# into a temporary prefix (verify wants every Exec*= binary to exist: it does there),
# verifies the units installed under it, and fails on any complaint about them. The
# live system is not touched.
#
# `systemd-analyze verify` exits 0 on warnings such as an unknown key or a bad value
# ("..., ignoring"), and in a container without systemd as PID 1 it may also complain
# about the host's own units. So its exit code alone proves little either way: this
# script fails when any line of its output names one of our units (or their temporary
# copies), and reports, without failing, a non-zero exit whose output names none.
# Usage: scripts/verify-units.sh            (uses ./build, configured with a relative
#                                           CORRAL_SYSTEMD_UNITDIR: the default)
set -eu
cd "$(dirname "$0")/.."

if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "verify-units: systemd-analyze not found (apt-get install systemd)" >&2
  exit 1
fi
unitdir=$(sed -n 's/^CORRAL_SYSTEMD_UNITDIR:[A-Z]*=//p' build/CMakeCache.txt)
case "$unitdir" in
  /*) echo "verify-units: build/ installs its units to $unitdir (absolute): not into a temporary prefix" >&2
      exit 1 ;;
esac
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
prefix="$tmp/prefix"
cmake --install build --prefix "$prefix" >/dev/null
test -x "$prefix/bin/corral" || { echo "verify-units: $prefix/bin/corral missing after install" >&2; exit 1; }

units=""
expected=0
for template in units/*.service.in units/*.socket; do
  expected=$((expected + 1))
  name=$(basename "$template" .in)
  unit="$prefix/$unitdir/$name"
  test -f "$unit" || { echo "verify-units: $template was not installed as $unit" >&2; exit 1; }
  if grep -v '^#' "$unit" | grep -n '@[A-Z_]*@\|/usr/local' >&2; then
    echo "verify-units: $unit: a placeholder left, or a hard-coded /usr/local" >&2
    exit 1
  fi
  grep -q "^Exec.*=$prefix/bin/corral " "$unit" || case "$name" in
    *.service) echo "verify-units: $unit does not run $prefix/bin/corral" >&2; exit 1 ;;
  esac
  cp "$unit" "$tmp/"
  units="$units $tmp/$name"
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
