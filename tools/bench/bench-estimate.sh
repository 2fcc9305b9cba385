#!/usr/bin/env bash
# Memory estimator check: `ferrotune estimate --device cpu` against the measured peak RSS (VmHWM, the
# `peak_memory_mib` of `ferrotune train --json`) of real CPU training runs of small random Llamas
# (vocab 32000, seq 256, batch 4, fp32, LoRA r 8 on all projections), for full, lora and qlora (NF4 + double
# quant), with and without gradient checkpointing. Prints a markdown table: predicted, measured, error.
#   tools/bench/bench-estimate.sh [METHODS] [SHAPES]     (after `just build`; run through tools/with-torch)
#   METHODS: comma list of full,lora,qlora,qlora8 (default all);  SHAPES: comma list of s,m,l (default s,m)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
methods=${1:-full,lora,qlora,qlora8}
shapes=${2:-s,m}
bin=${FERROTUNE_BIN:-target/release/ferrotune}
py=${FERROTUNE_PYTHON:-$HOME/.cache/ferrotune/torch-2.11.0/bin/python}
threads=${THREADS:-2}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/data"
for _ in $(seq 16); do cat datasets/demo_corpus.txt; done > "$work/data/corpus.txt"
echo '{"corpus": {"file_name": "corpus.txt", "columns": {"prompt": "text"}}}' > "$work/data/dataset_info.json"
"$bin" -q train-tokenizer --input datasets/demo_corpus.txt --vocab-size 1000 --out "$work/tokenizer.model"

# shape name -> layers hidden heads intermediate
declare -A SHAPE=([s]="4 256 8 640" [m]="8 512 8 1376" [l]="8 768 12 2048")

echo "| model | method | checkpointing | predicted MiB | measured peak RSS MiB | error |"
echo "| --- | --- | --- | ---: | ---: | ---: |"
for sh in ${shapes//,/ }; do
  read -r layers hidden heads inter <<< "${SHAPE[$sh]}"
  model="$work/model-$sh"
  mkdir -p "$model"
  cp "$work/tokenizer.model" "$model/"
  cat > "$model/config.json" <<JSON
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 32000, "hidden_size": $hidden,
 "intermediate_size": $inter, "num_hidden_layers": $layers, "num_attention_heads": $heads,
 "num_key_value_heads": $heads, "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "bos_token_id": 1,
 "eos_token_id": 2, "tie_word_embeddings": false}
JSON
  for m in ${methods//,/ }; do
    for ckpt in false true; do
      case $m in
        full) ft=full; quant=""; est="--method full --bits 32" ;;
        lora) ft=lora; quant=""; est="--method lora --bits 32" ;;
        qlora) ft=lora; quant=$'quantization_bit = 4\nquantization_type = "nf4"\ndouble_quantization = true'
               est="--method qlora --bits 4 --dtype fp32" ;;
        qlora8) ft=lora; quant='quantization_bit = 8'; est="--method qlora --bits 8 --dtype fp32" ;;
      esac
      out="$work/out-$sh-$m-$ckpt"
      cat > "$out.toml" <<TOML
model_name_or_path = "$model"
train_from_scratch = true
stage = "pt"
finetuning_type = "$ft"
lora_rank = 8
lora_alpha = 16
lora_target = "all"
$quant
dataset = "corpus"
dataset_dir = "$work/data"
cutoff_len = 256
packing = true
per_device_train_batch_size = 4
learning_rate = 1e-4
max_steps = 3
lr_scheduler_type = "constant"
gradient_checkpointing = $ckpt
logging_steps = 1
save_steps = 0
output_dir = "$out"
device = "cpu"
num_threads = $threads
TOML
      measured=$("$bin" -q train "$out.toml" --json | "$py" -c 'import json,sys; print(json.load(sys.stdin)["peak_memory_mib"])')
      flag=""; [ "$ckpt" = true ] && flag="--gradient-checkpointing"
      # shellcheck disable=SC2086
      predicted=$("$bin" estimate --model "$model" $est --seq 256 --batch 4 --lora-rank 8 --lora-target all \
        --device cpu --world-size 1 $flag --json | "$py" -c 'import json,sys; print(json.load(sys.stdin)["single"]["total_mib"])')
      "$py" - "$layers/$hidden/$inter" "$m" "$ckpt" "$predicted" "$measured" <<'PY'
import sys
shape, m, ck, p, r = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
print(f"| {shape} | {m} | {ck} | {p:.0f} | {r:.0f} | {100 * (p - r) / r:+.1f}% |")
PY
      rm -rf "$out"
    done
  done
done
