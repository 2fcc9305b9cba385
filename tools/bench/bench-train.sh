#!/usr/bin/env bash
# Trainer benchmark: LoRA SFT-style training step of a small random Llama (4 layers, dim 256, 8 heads,
# intermediate 640, vocab 32000, seq 256, batch 4, LoRA r 8 on all 7 projections, AdamW, fp32) —
# ferrotune vs transformers + PEFT in a plain PyTorch loop, same torch, same thread count, same run.
# Prints steady-state tokens/s (warmup steps excluded) and peak RSS of each, and their ratios.
#   tools/bench/bench-train.sh [THREADS] [STEPS]      (run through tools/with-torch, after `just build`)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
threads=${1:-2}
steps=${2:-20}
warm=3
bin=${FERROTUNE_BIN:-target/release/ferrotune}
py=${FERROTUNE_PYTHON:-$HOME/.cache/ferrotune/torch-2.11.0/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Data: the demo corpus repeated, packed into rows of exactly 256 tokens (no padding, like the peer's rows).
mkdir -p "$work/model" "$work/data"
for _ in $(seq 16); do cat datasets/demo_corpus.txt; done > "$work/data/corpus.txt"
echo '{"corpus": {"file_name": "corpus.txt", "columns": {"prompt": "text"}}}' > "$work/data/dataset_info.json"
"$bin" -q train-tokenizer --input datasets/demo_corpus.txt --vocab-size 1000 --out "$work/model/tokenizer.model"
cat > "$work/model/config.json" <<JSON
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 32000, "hidden_size": 256,
 "intermediate_size": 640, "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 8,
 "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "bos_token_id": 1, "eos_token_id": 2,
 "tie_word_embeddings": false}
JSON
cat > "$work/bench.toml" <<TOML
model_name_or_path = "$work/model"
train_from_scratch = true
stage = "pt"
finetuning_type = "lora"
lora_rank = 8
lora_alpha = 16
lora_target = "all"
dataset = "corpus"
dataset_dir = "$work/data"
cutoff_len = 256
packing = true
per_device_train_batch_size = 4
learning_rate = 1e-4
max_steps = $((steps + warm))
lr_scheduler_type = "constant"
logging_steps = 1
save_steps = 0
output_dir = "$work/out"
device = "cpu"
num_threads = $threads
TOML
"$bin" -q train "$work/bench.toml" --json > "$work/ours.json"
ours=$("$py" - "$work" "$warm" <<'PY'
import json, sys
work, warm = sys.argv[1], int(sys.argv[2])
recs = [json.loads(l) for l in open(f"{work}/out/metrics.jsonl") if '"loss"' in l]
rates = [r["tokens_per_second"] for r in recs[warm:]]
# every step has the same 4 x 256 tokens: the steady rate is the harmonic mean of the per-step rates
steady = len(rates) / sum(1.0 / r for r in rates)
summary = json.load(open(f"{work}/ours.json"))
print(json.dumps({"tokens_per_second": steady, "peak_rss_mib": summary["peak_memory_mib"]}))
PY
)
peer=$("$py" tools/bench/bench_train_peer.py 4 256 8 640 32000 256 4 8 "$steps" "$threads" 2>/dev/null | tail -1)
"$py" - "$ours" "$peer" "$threads" "$steps" <<'PY'
import json, sys
o, p = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"threads {sys.argv[3]}, {sys.argv[4]} timed steps of 4 x 256 tokens")
print(f"ferrotune          {o['tokens_per_second']:8.0f} tokens/s   peak RSS {o['peak_rss_mib']:7.0f} MiB")
print(f"transformers+PEFT  {p['tokens_per_second']:8.0f} tokens/s   peak RSS {p['peak_rss_mib']:7.0f} MiB")
print(f"ratio              {o['tokens_per_second'] / p['tokens_per_second']:8.2f}x throughput  "
      f"{o['peak_rss_mib'] / p['peak_rss_mib']:.2f}x memory")
PY
