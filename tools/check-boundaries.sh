#!/usr/bin/env bash
# Crate boundary check: core, tokenizer and data must never depend on tch/torch-sys (they build in seconds
# and are reusable alone). Fails loudly, naming the offending path.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tree=$(cargo tree -p ferrotune-core -p ferrotune-tokenizer -p ferrotune-data -e normal --prefix depth)
if bad=$(grep -E '^[0-9]+(tch|torch-sys) ' <<<"$tree"); then
  echo "BOUNDARY VIOLATION: ferrotune-core/-tokenizer/-data must not depend on tch or torch-sys:" >&2
  echo "$bad" >&2
  cargo tree -p ferrotune-core -p ferrotune-tokenizer -p ferrotune-data -e normal -i tch 2>/dev/null >&2 || true
  exit 1
fi
echo "boundary check: core, tokenizer, data are free of tch/torch-sys"
