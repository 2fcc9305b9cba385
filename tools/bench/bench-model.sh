#!/usr/bin/env bash
# Model-crate benchmarks (results go into BENCHMARKS.md `## model` by hand, with machine and date):
#  1. peak RSS while loading a generated ~1.1B-parameter bf16 checkpoint (TinyLlama shapes), ferrotune vs
#     transformers' from_pretrained, relative to the file size (target: ferrotune < 1.3x);
#  2. peak RSS growth of one LoRA training step with and without activation checkpointing, ferrotune vs
#     transformers + PEFT (gradient_checkpointing_enable, non-reentrant).
# Run through tools/with-torch (as `just bench` does): tools/with-torch tools/bench/bench-model.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
py=${FERROTUNE_PYTHON:-python}
work=${BENCH_MODEL_DIR:-$root/target/bench-model}
mkdir -p "$work"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
cargo build --release -q -p ferrotune-model --example load_rss --example ckpt_mem
bin=$CARGO_TARGET_DIR/release/examples

echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(date -u +%F)"
if [ ! -f "$work/1b/model.safetensors" ]; then
    echo "generating the 1.1B bf16 checkpoint in $work/1b ..."
    "$py" tools/bench/model_make_1b.py "$work/1b" > /dev/null
fi
echo "== load ~1.1B bf16 (drop page cache effects: each run reads the same file)"
echo "ferrotune:    $("$bin/load_rss" "$work/1b" bf16)"
echo "transformers: $("$py" tools/bench/model_peer.py load "$work/1b" 2>/dev/null)"
echo "== one LoRA step, 8 layers x 512 hidden, batch 4 x 512, fp32"
for mode in off on; do
    echo "ferrotune ckpt=$mode:    $("$bin/ckpt_mem" $mode)"
    echo "transformers ckpt=$mode: $("$py" tools/bench/model_peer.py ckpt $mode 2>/dev/null)"
done
