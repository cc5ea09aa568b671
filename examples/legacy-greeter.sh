#!/bin/sh
# A legacy inetd-style program for examples/inetd.yaml: the connection is on
# stdin/stdout. It reads one line, greets it, tells the client's address
# (REMOTE_ADDR, set by corral as systemd's Accept=yes does) and exits.
#   $ echo world | nc 127.0.0.1 7072
#   hello, world
#   REMOTE_ADDR=127.0.0.1
IFS= read -r line || [ -n "$line" ] || exit 0
line=$(printf '%s' "$line" | tr -d '\r')   # telnet-style clients send CRLF
printf 'hello, %s\n' "$line"
printf 'REMOTE_ADDR=%s\n' "${REMOTE_ADDR:-unknown}"
