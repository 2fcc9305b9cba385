#!/usr/bin/env bash
# Step (g) of tools/gpu/check.sh (issue 10), also runnable alone on a lent GPU machine:
#   1. a random Llama-2-7B-shaped bf16 checkpoint written to disk (tools/gpu/make_random_llama.py);
#   2. ferrotune QLoRA on it: NF4 + double quant quantized while it streams in, bf16 compute, LoRA r 8 on
#      all 7 projections, seq 1024, batch 1, gradient checkpointing, 3 warm-up + $STEPS timed steps —
#      peak GPU memory (target <= 5 GB) as libtorch's max_memory_allocated / max_memory_reserved and as
#      device memory used above the start, and tokens/s; beside `ferrotune estimate` for the same run;
#   3. ferrotune bf16 LoRA, same model file and settings (no quantization);
#   4. transformers + PEFT bf16 LoRA, same shape and settings (tools/gpu/peer_train.py; bitsandbytes is
#      not installed on the machines, so there is no Python QLoRA peer).
#   5. with EXTRA_CASES=1, for the estimator: ferrotune QLoRA on an int8 base (checkpointing) and NF4
#      without checkpointing, each beside `ferrotune estimate` for the same case.
# Prints one JSON object (also written to $OUT/g_qlora_7b_result.json); logs per part under $OUT.
# Env: BIN (ferrotune), PYTHON (torch + transformers + peft), DEVICE (cuda; cpu = dry run on a tiny
# shape), OUT (results dir), STEPS (timed steps, default 5), EXTRA_CASES (0/1).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bin=${BIN:-target/release/ferrotune}
py=${PYTHON:-python3}
device=${DEVICE:-cuda}
out=${OUT:-target/gpu-check}
steps=${STEPS:-5}
warm=3
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ "$device" = cpu ]; then L=2 H=64 I=128 NH=4 S=128; else L=32 H=4096 I=11008 NH=32 S=1024; fi
V=32000
targets=q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj

part() { # part NAME SECONDS CMD... : stdout to $out/g_NAME.json, stderr to $out/g_NAME.log
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  timeout -k 10 "$limit" "$@" > "$out/g_$name.json" 2> "$out/g_$name.log"
  echo "g_$name: rc $? in $(( $(date +%s) - t0 ))s" >&2
}

part make_model 240 "$py" tools/gpu/make_random_llama.py "$work/model" --layers $L --hidden $H --heads $NH \
  --inter $I --vocab $V
mkdir -p "$work/data"
for _ in $(seq 16); do cat datasets/demo_corpus.txt; done > "$work/data/corpus.txt"
echo '{"corpus": {"file_name": "corpus.txt", "columns": {"prompt": "text"}}}' > "$work/data/dataset_info.json"
"$bin" -q train-tokenizer --input datasets/demo_corpus.txt --vocab-size 1000 --out "$work/model/tokenizer.model"

config() { # config NAME CHECKPOINTING EXTRA_TOML
  cat > "$work/$1.toml" <<TOML
model_name_or_path = "$work/model"
stage = "pt"
finetuning_type = "lora"
lora_rank = 8
lora_alpha = 16
lora_target = "all"
dataset = "corpus"
dataset_dir = "$work/data"
cutoff_len = $S
packing = true
per_device_train_batch_size = 1
learning_rate = 2e-4
max_steps = $((warm + steps))
lr_scheduler_type = "constant"
gradient_checkpointing = $2
logging_steps = 1
save_steps = 0
output_dir = "$work/out-$1"
device = "$device"
bf16 = true
$3
TOML
}
config qlora true $'quantization_bit = 4\nquantization_type = "nf4"\ndouble_quantization = true'
config lora true ""

part qlora 300 "$bin" -q train "$work/qlora.toml" --json
cp "$work/out-qlora/metrics.jsonl" "$out/g_qlora_metrics.jsonl" 2>/dev/null
part estimate 60 "$bin" estimate --model "$work/model" --method qlora --bits 4 --seq $S --batch 1 \
  --gradient-checkpointing --lora-target all --world-size 1 --json
part lora 240 "$bin" -q train "$work/lora.toml" --json
cp "$work/out-lora/metrics.jsonl" "$out/g_lora_metrics.jsonl" 2>/dev/null
part peer 240 "$py" tools/gpu/peer_train.py --layers $L --hidden $H --heads $NH --inter $I --vocab $V \
  --seq $S --batch 1 --rank 8 --targets $targets --gradient-checkpointing --steps "$steps" --warmup $warm \
  --dtype bf16 --device "$device"

if [ "${EXTRA_CASES:-0}" = 1 ]; then
  config int8 true 'quantization_bit = 8'
  config nf4_nockpt false 'quantization_bit = 4'
  for c in "int8 8 --gradient-checkpointing" "nf4_nockpt 4"; do
    read -r name bits flag <<< "$c"
    part "$name" 240 "$bin" -q train "$work/$name.toml" --json
    cp "$work/out-$name/metrics.jsonl" "$out/g_${name}_metrics.jsonl" 2>/dev/null
    part "estimate_$name" 60 "$bin" estimate --model "$work/model" --method qlora --bits "$bits" --seq $S \
      --batch 1 $flag --lora-target all --world-size 1 --json
  done
fi

"$py" - "$out" "$warm" <<'PY' | tee "$out/g_qlora_7b_result.json"
import json, sys
out, warm = sys.argv[1], int(sys.argv[2])

def ferrotune(name):
    try:
        recs = [json.loads(l) for l in open(f"{out}/g_{name}_metrics.jsonl") if '"loss"' in l]
    except OSError as e:
        return {"error": str(e)}
    rates = [r["tokens_per_second"] for r in recs[warm:]]
    peak = lambda k: max((r.get(k) or 0.0) for r in recs) or None
    return {
        # every step has the same tokens: the steady rate is the harmonic mean of the per-step rates
        "tokens_per_second": len(rates) / sum(1.0 / r for r in rates) if rates else None,
        "losses": [round(r["loss"], 4) for r in recs],
        "max_memory_allocated_mib": peak("peak_gpu_allocated_mib"),
        "max_memory_reserved_mib": peak("peak_gpu_reserved_mib"),
        "peak_used_above_baseline_mib": peak("peak_gpu_memory_mib"),
        "peak_rss_mib": peak("peak_memory_mib"),
    }

def last_json(name):
    try:
        lines = [l for l in open(f"{out}/g_{name}.json").read().splitlines() if l.startswith("{")]
        return json.loads(lines[-1])
    except (OSError, IndexError, ValueError) as e:
        return {"error": str(e)}

def estimate(name):
    est = last_json(name).get("single")
    return est and {"total": est["total_mib"], "without_runtime": (est["total"] - est["runtime"]) / 2**20}

res = {"ferrotune_qlora_nf4_dq": ferrotune("qlora"), "ferrotune_lora_bf16": ferrotune("lora")}
peer = last_json("peer")
res["peer_transformers_peft_lora_bf16"] = {k: peer.get(k) for k in (
    "tokens_per_second", "losses", "max_memory_allocated_mib", "max_memory_reserved_mib",
    "peak_used_above_baseline_mib", "device", "torch", "error")}
res["estimate_qlora_mib"] = estimate("estimate")
for extra in ("int8", "nf4_nockpt"):
    try:
        open(f"{out}/g_{extra}_metrics.jsonl").close()
    except OSError:
        continue
    res[f"ferrotune_qlora_{extra}"] = dict(ferrotune(extra), estimate_mib=estimate(f"estimate_{extra}"))
print(json.dumps(res, indent=1))
PY
