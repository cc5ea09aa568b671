#!/bin/sh
# A byte-at-a-time reader for bench/warm/lines_client.py: the shell reads a pipe one byte per read(2).
n=0
while read line; do n=$((n+1)); done
echo "$n"
