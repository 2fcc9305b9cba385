#!/usr/bin/env bash
# Distributed-training benchmark on CPU (Gloo): full fine-tuning of a small random Llama (4 layers, dim 256,
# 8 heads, intermediate 640, vocab 32000, seq 256, per-rank batch 2, AdamW, fp32).
#  * throughput: world 1 (1 thread) vs world 2 NO_SHARD and FULL_SHARD (1 thread per rank, same per-rank
#    batch, so the global batch doubles): per-rank efficiency = tokens/s(world 2) / (2 × tokens/s(world 1));
#  * memory: the parameter + optimizer bytes each rank holds between steps (counted by the trainer over the
#    tensors it owns, logged as `resident_param_optimizer_bytes`) and each rank's peak RSS, NO_SHARD vs
#    FULL_SHARD.
#  * setup memory on a saved base: LoRA on a 168M-parameter random Llama saved as fp32 safetensors (673 MB),
#    one step, peak RSS per rank: world 1, world 2 NO_SHARD (every rank loads the model), world 2
#    FULL_SHARD (each rank reads only its shards of the unread base);
#  * the Python peer in the same session (tools/bench/bench_dist_peer.py: transformers + torch's gloo
#    backend, 1 thread per rank): single process, DistributedDataParallel, FSDP2 `fully_shard` (FULL_SHARD)
#    on the same shapes with random tokens; ratio ferrotune / peer per mode.
# Workers are started directly with the torchrun environment (what `ferrotune launch` sets).
#   tools/bench/bench-dist.sh [STEPS]      (run through tools/with-torch, after `just build`)
# FERROTUNE_BENCH_PRECISION=bf16 trains with `bf16 = true` (bf16 weights, fp32 master shards and moments).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
steps=${1:-8}
warm=2
bin=${FERROTUNE_BIN:-target/release/ferrotune}
py=${FERROTUNE_PYTHON:-$HOME/.cache/ferrotune/torch-2.11.0/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

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
finetuning_type = "full"
dataset = "corpus"
dataset_dir = "$work/data"
cutoff_len = 256
packing = true
per_device_train_batch_size = 2
learning_rate = 1e-4
max_steps = $((steps + warm))
lr_scheduler_type = "constant"
logging_steps = 1
save_steps = 0
device = "cpu"
num_threads = 1
TOML
if [ "${FERROTUNE_BENCH_PRECISION:-fp32}" = bf16 ]; then echo 'bf16 = true' >> "$work/bench.toml"; fi
# prepare the data cache once per output dir (rank 0 alone would race with rank 1 otherwise)
run() { # name world strategy
  local name=$1 world=$2 strategy=$3 port=$((29600 + RANDOM % 1000))
  local out="$work/$name"
  mkdir -p "$out"
  for r in $(seq 0 $((world - 1))); do
    RANK=$r WORLD_SIZE=$world LOCAL_RANK=$r LOCAL_WORLD_SIZE=$world MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
      OMP_NUM_THREADS=1 "$bin" train "$work/bench.toml" --json --set "output_dir=\"$out\"" \
      --set "parallel.strategy=\"$strategy\"" > "$out/summary-$r.json" 2> "$out/log-$r.txt" &
  done
  wait
}
# data cache first (tokenizes once; later runs reuse it)
"$bin" -q train "$work/bench.toml" --set "output_dir=\"$work/prep\"" --set max_steps=1 > /dev/null
for d in w1 ddp fsdp; do mkdir -p "$work/$d"; cp -r "$work/prep/.data_cache" "$work/$d/"; done
run w1 1 NO_SHARD
run ddp 2 NO_SHARD
run fsdp 2 FULL_SHARD
# Setup memory on a saved base.
"$py" - "$work/big" <<'PY'
import sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
torch.manual_seed(0)
cfg = LlamaConfig(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
                  num_key_value_heads=16, vocab_size=32000, max_position_embeddings=256,
                  bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
LlamaForCausalLM(cfg).save_pretrained(sys.argv[1], safe_serialization=True)
PY
cp "$work/model/tokenizer.model" "$work/big/"
sed -e "s|^model_name_or_path = .*|model_name_or_path = \"$work/big\"|" -e 's/^train_from_scratch = true/train_from_scratch = false/' \
    -e 's/^finetuning_type = "full"/finetuning_type = "lora"\nlora_target = "all"/' -e 's/^max_steps = .*/max_steps = 1/' \
    -e '/^bf16 = true/d' "$work/bench.toml" > "$work/big.toml"
"$bin" train "$work/big.toml" --json --set "output_dir=\"$work/big-w1\"" > "$work/big-w1.json" 2> /dev/null
big() { # name strategy
  local name=$1 strategy=$2 port=$((29600 + RANDOM % 1000))
  mkdir -p "$work/$name"; cp -r "$work/big-w1/.data_cache" "$work/$name/"
  for r in 0 1; do
    RANK=$r WORLD_SIZE=2 LOCAL_RANK=$r LOCAL_WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port OMP_NUM_THREADS=1 \
      "$bin" train "$work/big.toml" --json --set "output_dir=\"$work/$name\"" --set "parallel.strategy=\"$strategy\"" \
      > "$work/$name/summary-$r.json" 2> "$work/$name/log-$r.txt" &
  done
  wait
}
big big-ddp NO_SHARD
big big-fsdp FULL_SHARD
peer() { # mode world
  local mode=$1 world=$2 port=$((29600 + RANDOM % 1000))
  for r in $(seq 0 $((world - 1))); do
    RANK=$r WORLD_SIZE=$world LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$port OMP_NUM_THREADS=1 \
      "$py" tools/bench/bench_dist_peer.py "$mode" 4 256 8 640 32000 256 2 "$steps" "$warm" \
      > "$work/peer-$mode-$r.json" 2> "$work/peer-$mode-$r.log" &
  done
  wait
}
peer single 1
peer ddp 2
peer fsdp 2
"$py" - "$work" "$warm" <<'PY'
import json, re, sys, glob
work, warm = sys.argv[1], int(sys.argv[2])
def rate(name):
    recs = [json.loads(l) for l in open(f"{work}/{name}/metrics.jsonl") if '"loss"' in l]
    rs = [r["tokens_per_second"] for r in recs[warm:]]
    return len(rs) / sum(1.0 / r for r in rs)
def from_logs(name, key):
    """`key=N` from each rank's log of run `name` (None where a log lacks it)."""
    out = []
    for f in sorted(glob.glob(f"{work}/{name}/log-*.txt")):
        m = re.search(key + r"=(\d+)", open(f).read())
        out.append(int(m.group(1)) if m else None)
    return out
def resident(name):
    return from_logs(name, "resident_param_optimizer_bytes")
def rss(name):
    return [json.load(open(f))["peak_memory_mib"] for f in sorted(glob.glob(f"{work}/{name}/summary-*.json"))]
w1, ddp, fsdp = rate("w1"), rate("ddp"), rate("fsdp")
print(f"world 1 (1 thread)          {w1:8.0f} tokens/s")
print(f"world 2 NO_SHARD (1+1)      {ddp:8.0f} tokens/s   per-rank efficiency {ddp / (2 * w1):.2f}")
print(f"world 2 FULL_SHARD (1+1)    {fsdp:8.0f} tokens/s   per-rank efficiency {fsdp / (2 * w1):.2f}")
for n in ["w1", "ddp", "fsdp"]:
    print(f"{n:5s} resident param+optimizer bytes per rank {resident(n)}  peak RSS MiB per rank {rss(n)}")
peer = {m: json.load(open(f"{work}/peer-{m}-0.json")) for m in ["single", "ddp", "fsdp"]}
p1 = peer["single"]["tokens_per_second"]
for label, m, ours in [("world 1", "single", w1), ("NO_SHARD / DDP", "ddp", ddp), ("FULL_SHARD / FSDP2", "fsdp", fsdp)]:
    pr = peer[m]["tokens_per_second"]
    print(f"peer {label:20s} {pr:8.0f} tokens/s   per-rank efficiency {pr / (2 * p1) if m != 'single' else 1:.2f}"
          f"   peak RSS MiB {[round(x) for x in peer[m]['peak_rss_mib']]}   ferrotune/peer {ours / pr:.2f}x")
def setup_peak(name):
    return from_logs(name, "setup_peak_rss_mib")
w1big = json.load(open(f"{work}/big-w1.json"))["peak_memory_mib"]
print(f"LoRA on a saved 168M fp32 base (673 MB), MiB per rank: world 1 run peak {w1big:.0f}; "
      f"NO_SHARD setup peak {setup_peak('big-ddp')} run peak {[round(x) for x in rss('big-ddp')]}; "
      f"FULL_SHARD (unread base) setup peak {setup_peak('big-fsdp')} run peak {[round(x) for x in rss('big-fsdp')]}")
rd, rf = resident("ddp"), resident("fsdp")
if all(rd) and all(rf):
    print(f"FULL_SHARD / NO_SHARD resident bytes per rank: {max(rf) / max(rd):.3f} (1/world = 0.5)")
PY
