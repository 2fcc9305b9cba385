#!/usr/bin/env bash
# Runs every benchmark script in tools/bench/ (bench-*.sh), each printing ferrotune's number beside the
# Python peer's, measured in the same run on the same machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
shopt -s nullglob
for b in bench-*.sh; do
  echo "== $b"
  bash "$b"
done
