#!/usr/bin/env bash
# GPTQ-int4 vs round-to-nearest int4 (both asymmetric, group size 128) perplexity (`ferrotune eval`), results
# into BENCHMARKS.md `## quant` by hand, with machine and date:
#  1. stories260K (fixtures; dim 64 / hidden 172, so every projection has one group of all its ≤172 columns
#     at group size 128, except down_proj: 128 + 44): calibration = 48 stories sampled from the fp32 model
#     (seed 1, temperature 1), held-out = 24 other sampled stories (seed 2), plus the fixture-based held-out
#     text of bench-quant.sh (DialogSum + alpaca answers);
#  2. the demo base model (`configs/demo/pt.toml`, trained here unless DEMO_BASE points at one): calibration
#     = the `demo_corpus` registry dataset, held-out = 40 continuations sampled from the fp32 model.
# Run through tools/with-torch: CARGO_TARGET_DIR=target/gptq tools/with-torch tools/bench/bench-gptq.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
py=${FERROTUNE_PYTHON:-python}
work=${BENCH_GPTQ_DIR:-$root/target/bench-gptq}
fixtures=${FERROTUNE_FIXTURES:-$root/../shared/fixtures}
mkdir -p "$work"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
cargo build --release -q -p ferrotune-cli
ft=$CARGO_TARGET_DIR/release/ferrotune
echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(date -u +%F)"

# Sampled continuations of the prompts in $2 by model $1 (seed $3, $4 new tokens), one text per line.
sample() {
    "$ft" -q generate --model "$1" --prompt-file "$2" --temperature 1.0 --max-new-tokens "$4" --seed "$3" \
        --json --device cpu |
        "$py" -c 'import json,sys; [print((d["prompt"]+" "+d["text"]).replace("\n"," ").strip()) for d in map(json.loads, sys.stdin)]'
}
ppl() { "$ft" -q eval --model "$1" --text-file "$2" --device cpu | tail -1 | sed 's/.*perplexity //'; }
# Quantizes $1 with rtn, gptq, gptq --act-order into $2-{rtn,gptq,gptq-ao}; extra args go to gptq.
quantize_all() {
    local m=$1 out=$2
    shift 2
    "$ft" quantize --method rtn --group-size 128 --model "$m" --out "$out-rtn"
    "$ft" quantize --method gptq --group-size 128 --model "$m" --out "$out-gptq" "$@"
    "$ft" quantize --method gptq --group-size 128 --act-order --model "$m" --out "$out-gptq-ao" "$@"
}
report() {
    local m=$1 out=$2 text=$3
    printf '%-28s fp32 %s | rtn %s | gptq %s | gptq act-order %s\n' "$(basename "$text")" \
        "$(ppl "$m" "$text")" "$(ppl "$out-rtn" "$text")" "$(ppl "$out-gptq" "$text")" "$(ppl "$out-gptq-ao" "$text")"
}

# 1: stories260K.
if [ -f "$fixtures/models/stories260K/stories260K.gguf" ]; then
    s=$work/stories260K
    [ -f "$s/config.json" ] || "$ft" -q convert --from gguf --input "$fixtures/models/stories260K/stories260K.gguf" --out "$s"
    starts=("Once upon a time" "One day" "There was a little" "Lily and Tom" "The sun was" "A big dog" "Sam wanted to" "In a small town")
    for i in $(seq 0 47); do echo "${starts[$((i % 8))]}"; done > "$work/s_calib_prompts.txt"
    for i in $(seq 0 23); do echo "${starts[$(((i + 3) % 8))]}"; done > "$work/s_eval_prompts.txt"
    [ -s "$work/s_calib.txt" ] || sample "$s" "$work/s_calib_prompts.txt" 1 200 > "$work/s_calib.txt"
    [ -s "$work/s_eval.txt" ] || sample "$s" "$work/s_eval_prompts.txt" 2 200 > "$work/s_eval.txt"
    "$py" - "$fixtures" > "$work/s_heldout_fixtures.txt" <<'PY'
import json, sys
f = sys.argv[1] + "/datasets/"
for d in json.load(open(f + "dialogsum_examples.json")):
    print(d["summary"].replace("\n", " "))
    for turn in d["dialogue"].split("\n")[:6]:
        print(turn.split(":", 1)[-1].strip())
for r in json.load(open(f + "alpaca_en_demo.json"))[:40]:
    print(r["output"].replace("\n", " ")[:400])
PY
    quantize_all "$s" "$work/s260k" --calib-dataset "$work/s_calib.txt" --seq-len 512
    echo "== stories260K perplexity"
    report "$s" "$work/s260k" "$work/s_eval.txt"
    report "$s" "$work/s260k" "$work/s_heldout_fixtures.txt"
else
    echo "skipped: stories260K: fixtures absent ($fixtures)"
fi

# 2: the demo base model.
base=${DEMO_BASE:-$work/demo/base}
if [ ! -f "$base/model.safetensors" ]; then
    mkdir -p "$work/demo/init"
    "$ft" -q train-tokenizer --input datasets/demo_corpus.txt datasets/demo_en.json datasets/demo_zh.json \
        --vocab-size 1200 --out "$work/demo/init/tokenizer.model"
    cat > "$work/demo/init/config.json" <<JSON
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 1200, "hidden_size": 192,
 "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 6, "num_key_value_heads": 6,
 "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "bos_token_id": 1,
 "eos_token_id": 2, "tie_word_embeddings": false}
JSON
    "$ft" train configs/demo/pt.toml --set model_name_or_path="$work/demo/init" --set output_dir="$base"
fi
"$py" - > "$work/d_prompts.txt" <<'PY'
import random
lines = [l for l in open("datasets/demo_corpus.txt", encoding="utf-8").read().split("\n") if l.strip()]
random.seed(5)
for l in random.sample(lines, 40):
    print(" ".join(l.split(" ")[:2]))
PY
[ -s "$work/d_eval.txt" ] || sample "$base" "$work/d_prompts.txt" 3 60 > "$work/d_eval.txt"
quantize_all "$base" "$work/demo" --calib-dataset demo_corpus
echo "== demo base perplexity"
report "$base" "$work/demo" "$work/d_eval.txt"
