#!/usr/bin/env bash
# `just finetune`: the whole pipeline on assets the project ships (datasets/demo_*, made by
# tools/gen-demo-datasets.py), offline, on the CPU, with ferrotune alone:
#   1. train a BPE tokenizer on the demo corpus + instructions   (ferrotune train-tokenizer)
#   2. pre-train a tiny Llama from scratch on that corpus        (ferrotune train configs/demo/pt.toml)
#   3. answer the held-out prompts with the base model           (ferrotune answer)        -> "before"
#   4. LoRA instruction tuning, eval loss before and after       (ferrotune train configs/demo/sft_lora.toml)
#   5. answer the held-out prompts with base + adapter           (ferrotune answer)        -> "after"
#   6. the before/after table: eval loss, token accuracy, exact match per task and language
#                                                                (ferrotune demo-report)
# Outputs go to target/demo/{init,base,sft,*.json*} (only those are replaced: target/demo may also be a
# CARGO_TARGET_DIR). The binary is $FERROTUNE_BIN, else ${CARGO_TARGET_DIR:-target}/release/ferrotune.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin=${FERROTUNE_BIN:-${CARGO_TARGET_DIR:-target}/release/ferrotune}
work=target/demo
threads=${FERROTUNE_DEMO_THREADS:-2}
start=$(date +%s)
rm -rf "$work/init" "$work/base" "$work/sft" "$work"/answers_*.jsonl "$work"/*.json "$work/report.txt"
mkdir -p "$work/init"

echo "== 1/6 tokenizer: ferrotune train-tokenizer (BPE) on the demo corpus, the instructions and the prompt"
# The alpaca prompt's fixed text, once per SFT record, so that it becomes whole-word pieces (17 tokens).
n_sft=$(grep -c '"instruction"' datasets/demo_en.json datasets/demo_zh.json | awk -F: '{s += $2} END {print s}')
for _ in $(seq "$n_sft"); do
  echo "Below is an instruction that describes a task. Write a response that appropriately completes the request."
  printf '### Instruction:\n### Response:\n'
done > "$work/init/prompt.txt"
"$bin" -q train-tokenizer --model-type bpe --vocab-size 1200 --out "$work/init/tokenizer.model" \
  --input datasets/demo_corpus.txt datasets/demo_en.json datasets/demo_zh.json "$work/init/prompt.txt"
cat > "$work/init/config.json" <<JSON
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 1200, "hidden_size": 192,
 "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 6, "num_key_value_heads": 6,
 "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "bos_token_id": 1,
 "eos_token_id": 2, "tie_word_embeddings": false}
JSON

echo "== 2/6 pre-training a tiny Llama (4 layers, dim 192) from scratch: configs/demo/pt.toml"
"$bin" train configs/demo/pt.toml --set num_threads="$threads"

echo "== 3/6 held-out prompts (datasets/demo_eval.json), base model"
"$bin" -q answer "$work/base" --questions datasets/demo_eval.json --template alpaca \
  --out "$work/answers_before.jsonl" --json > "$work/score_before.json"

echo "== 4/6 LoRA SFT on datasets/demo_en.json + demo_zh.json: configs/demo/sft_lora.toml"
"$bin" train configs/demo/sft_lora.toml --set num_threads="$threads" --json > "$work/sft_summary.json"

echo "== 5/6 held-out prompts, base + LoRA adapter"
"$bin" -q answer "$work/base" --adapter "$work/sft" --questions datasets/demo_eval.json --template alpaca \
  --out "$work/answers_after.jsonl" --json > "$work/score_after.json"

echo "== 6/6 report"
"$bin" demo-report --summary "$work/sft_summary.json" --questions datasets/demo_eval.json \
  --before "$work/answers_before.jsonl" --after "$work/answers_after.jsonl" \
  --seconds "$(( $(date +%s) - start ))" | tee "$work/report.txt"
echo "outputs in $work/ (init/, base/ and sft/ with metrics.jsonl and *.png, answers_*.jsonl, report.txt)"
