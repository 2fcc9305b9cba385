#!/usr/bin/env bash
# `just finetune`: the whole pipeline on assets the project ships (datasets/demo_*), offline, on the CPU:
#   1. train a SentencePiece tokenizer on the demo corpus        (ferrotune train-tokenizer)
#   2. pre-train a tiny Llama from scratch on that corpus        (ferrotune train configs/demo/pt.toml)
#   3. answer the held-out prompts with the base model           (ferrotune answer)        -> "before"
#   4. LoRA instruction tuning, eval loss before and after       (ferrotune train configs/demo/sft_lora.toml)
#   5. answer the held-out prompts with base + adapter           (ferrotune answer)        -> "after"
# and prints eval loss and exact-match before/after. Everything goes to target/demo/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin=${FERROTUNE_BIN:-target/release/ferrotune}
work=target/demo
threads=${FERROTUNE_DEMO_THREADS:-2}
start=$(date +%s)
rm -rf "$work"
mkdir -p "$work/init"

echo "== 1/5 tokenizer: ferrotune train-tokenizer on datasets/demo_corpus.txt + the demo instructions"
"$bin" -q train-tokenizer --input datasets/demo_corpus.txt datasets/demo_sft_en.json datasets/demo_sft_zh.json \
  --vocab-size 1200 --out "$work/init/tokenizer.model"
cat > "$work/init/config.json" <<JSON
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 1200, "hidden_size": 192,
 "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 6, "num_key_value_heads": 6,
 "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "bos_token_id": 1,
 "eos_token_id": 2, "tie_word_embeddings": false}
JSON

echo "== 2/5 pre-training a tiny Llama (4 layers, dim 192) from scratch: configs/demo/pt.toml"
"$bin" train configs/demo/pt.toml --set num_threads="$threads"

echo "== 3/5 held-out prompts, base model"
"$bin" -q answer "$work/base" --questions datasets/demo_eval.json --template alpaca \
  --out "$work/answers_before.jsonl" --json > "$work/score_before.json"

echo "== 4/5 LoRA SFT: configs/demo/sft_lora.toml"
"$bin" train configs/demo/sft_lora.toml --set num_threads="$threads" --json > "$work/sft_summary.json"

echo "== 5/5 held-out prompts, base + LoRA adapter"
"$bin" -q answer "$work/base" --adapter "$work/sft" --questions datasets/demo_eval.json --template alpaca \
  --out "$work/answers_after.jsonl" --json > "$work/score_after.json"

python3 - "$work" "$(( $(date +%s) - start ))" <<'PY'
import json, sys
work, secs = sys.argv[1], sys.argv[2]
s = json.load(open(f"{work}/sft_summary.json"))
b = json.load(open(f"{work}/score_before.json"))
a = json.load(open(f"{work}/score_after.json"))
print()
print("ferrotune demo: LoRA SFT of a from-scratch tiny Llama on the project's own EN+ZH data")
print(f"{'':28}{'before':>10}{'after':>10}")
print(f"{'eval loss (held-out)':28}{s['initial_eval']['loss']:>10.4f}{s['final_eval']['loss']:>10.4f}")
print(f"{'eval token accuracy':28}{s['initial_eval']['accuracy']:>10.3f}{s['final_eval']['accuracy']:>10.3f}")
print(f"{'exact match (all)':28}{b['exact_match']:>10.3f}{a['exact_match']:>10.3f}   ({a['total']} prompts)")
for task in sorted(a["per_task"]):
    print(f"{'  ' + task:28}{b['per_task'][task]:>10.3f}{a['per_task'][task]:>10.3f}")
print()
for line, (x, y) in enumerate(zip(open(f"{work}/answers_before.jsonl"), open(f"{work}/answers_after.jsonl"))):
    if line >= 6:
        break
    x, y = json.loads(x), json.loads(y)
    print(f"Q: {x['instruction']}\n   before: {x['answer']!r}\n   after:  {y['answer']!r}   (expected {y['expected']!r})")
print(f"\ntotal time {secs}s; outputs in {work}/ (metrics.jsonl, *.png, checkpoints, answers_*.jsonl)")
PY
