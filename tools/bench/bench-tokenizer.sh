#!/usr/bin/env bash
# Tokenizer encode speed: ferrotune vs Google sentencepiece (Python) vs HF tokenizers (Python, fast) on the
# 1,999 alpaca demo texts (instruction + "\n" + output, zh + en), with the Llama-2 tokenizer and with the
# merged Llama-2 + chinese_sp tokenizer (49,953 pieces), all in the same run. Prints one JSON line per
# tokenizer and thread setting, then a summary with ratios (peer time / ferrotune time; > 1 = ferrotune faster).
#   tools/bench/bench-tokenizer.sh [RUNS]     (needs ../shared/fixtures or $FERROTUNE_FIXTURES)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
runs=${1:-7}
fixtures=${FERROTUNE_FIXTURES:-$root/../shared/fixtures}
if [[ ! -d $fixtures/tokenizers ]]; then
  echo "skipped: bench-tokenizer: fixtures absent ($fixtures)" >&2
  exit 0
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
eval "$(tools/setup-torch.sh)"
cargo build --release -q -p ferrotune-tokenizer --example bench_encode
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bin=$CARGO_TARGET_DIR/release/examples/bench_encode
python=${FERROTUNE_PYTHON:-python}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%F)"
"$bin" "$fixtures" "$work" "$runs" | tee "$work/ft.jsonl"
RAYON_NUM_THREADS=1 "$bin" "$fixtures" "$work/one" "$runs" | tee "$work/ft1.jsonl"
"$python" tools/bench/tokenizer_peer.py "$work" "$runs" | tee "$work/py.jsonl"
RAYON_NUM_THREADS=1 "$python" tools/bench/tokenizer_peer.py "$work" "$runs" | tee "$work/py1.jsonl"

"$python" - "$work" <<'PY'
import json, sys, os
w = sys.argv[1]
rd = lambda f: {r["tokenizer"]: r for r in map(json.loads, open(os.path.join(w, f)))}
ft, ft1, py, py1 = rd("ft.jsonl"), rd("ft1.jsonl"), rd("py.jsonl"), rd("py1.jsonl")
print("\n| tokenizer | threads | ferrotune ms | sentencepiece ms | HF tokenizers ms | vs faster peer |")
print("|---|---|---|---|---|---|")
for name in ["llama2", "merged"]:
    for label, f, p, sp_key in [("all", ft, py, "sp_batch_ms"), ("1", ft1, py1, "sp_1thread_ms")]:
        ours = f[name]["batch_ms"]
        sp, hf = p[name][sp_key], p[name]["hf_batch_ms"]
        print(f"| {name} | {label} | {ours:.1f} | {sp:.1f} | {hf:.1f} | {min(sp, hf) / ours:.2f}x |")
    assert ft[name]["tokens"] == py[name]["sp_tokens"], "token counts differ from sentencepiece"
print(f"\nferrotune via the C++ library (one thread, for reference): "
      + ", ".join(f"{n} {ft[n]['cxx_loop_ms']:.1f} ms" for n in ["llama2", "merged"]))
PY
