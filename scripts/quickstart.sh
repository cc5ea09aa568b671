#!/bin/sh
# Quick start: install the packages, build, and run the hello-http example job in the
# foreground (http://127.0.0.1:8080/ answers "hello"; Ctrl-C stops it).
set -eu
cd "$(dirname "$0")/.."
scripts/deps.sh
scripts/build.sh
echo "corral: try  curl http://127.0.0.1:8080/  and  build/corral status examples/hello-http.yaml"
exec build/corral run examples/hello-http.yaml
