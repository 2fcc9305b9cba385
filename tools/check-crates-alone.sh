#!/usr/bin/env bash
# Every workspace member must build on its own (`cargo check -p ferrotune-X`), so that no crate silently
# relies on features another member turns on.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
for dir in crates/*/; do
  pkg=$(sed -n 's/^name = "\(ferrotune-[a-z]*\)"/\1/p' "$dir/Cargo.toml" | head -1)
  echo "cargo check -p $pkg"
  cargo check -q --release -p "$pkg" --all-targets
done
