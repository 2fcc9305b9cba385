#!/usr/bin/env bash
# Step (g) of tools/gpu/check.sh (issue 10): QLoRA on a random Llama-2-7B-shaped bf16 checkpoint (written
# here by torch, one safetensors file), NF4 + double quant quantized while it streams in, bf16 compute,
# LoRA r 8 on all projections, seq 1024, batch 1, gradient checkpointing, 3 warm-up + 5 timed steps:
# peak GPU memory (target <= 5 GB) and tokens/s, beside `ferrotune estimate`'s prediction for the same run.
# Env: BIN (ferrotune), PYTHON (torch), DEVICE (cuda; cpu = dry run on a tiny shape), OUT (results dir).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bin=${BIN:-target/release/ferrotune}
py=${PYTHON:-python3}
device=${DEVICE:-cuda}
out=${OUT:-target/gpu-check}
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ "$device" = cpu ]; then L=2 H=64 I=128 NH=4 S=128; else L=32 H=4096 I=11008 NH=32 S=1024; fi
V=32000
mkdir -p "$work/model" "$work/data"
for _ in $(seq 16); do cat datasets/demo_corpus.txt; done > "$work/data/corpus.txt"
echo '{"corpus": {"file_name": "corpus.txt", "columns": {"prompt": "text"}}}' > "$work/data/dataset_info.json"
"$bin" -q train-tokenizer --input datasets/demo_corpus.txt --vocab-size 1000 --out "$work/model/tokenizer.model"
"$py" - "$work/model" $L $H $I $NH $V <<'PY'
import json, sys, torch
from safetensors.torch import save_file
d, L, H, I, NH, V = sys.argv[1], *map(int, sys.argv[2:])
json.dump({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": V, "hidden_size": H,
           "intermediate_size": I, "num_hidden_layers": L, "num_attention_heads": NH, "num_key_value_heads": NH,
           "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "bos_token_id": 1, "eos_token_id": 2,
           "tie_word_embeddings": False, "torch_dtype": "bfloat16"}, open(f"{d}/config.json", "w"))
g = torch.Generator().manual_seed(0)
r = lambda *s: (torch.randn(*s, generator=g) * 0.02).to(torch.bfloat16)
t = {"model.embed_tokens.weight": r(V, H), "lm_head.weight": r(V, H), "model.norm.weight": torch.ones(H, dtype=torch.bfloat16)}
for i in range(L):
    p = f"model.layers.{i}."
    for n in ["q_proj", "k_proj", "v_proj", "o_proj"]:
        t[p + f"self_attn.{n}.weight"] = r(H, H)
    t[p + "mlp.gate_proj.weight"], t[p + "mlp.up_proj.weight"], t[p + "mlp.down_proj.weight"] = r(I, H), r(I, H), r(H, I)
    t[p + "input_layernorm.weight"] = torch.ones(H, dtype=torch.bfloat16)
    t[p + "post_attention_layernorm.weight"] = torch.ones(H, dtype=torch.bfloat16)
save_file(t, f"{d}/model.safetensors", metadata={"format": "pt"})
PY
cat > "$work/train.toml" <<TOML
model_name_or_path = "$work/model"
stage = "pt"
finetuning_type = "lora"
quantization_bit = 4
quantization_type = "nf4"
double_quantization = true
lora_rank = 8
lora_alpha = 16
lora_target = "all"
dataset = "corpus"
dataset_dir = "$work/data"
cutoff_len = $S
packing = true
per_device_train_batch_size = 1
learning_rate = 2e-4
max_steps = 8
lr_scheduler_type = "constant"
gradient_checkpointing = true
logging_steps = 1
save_steps = 0
output_dir = "$work/out"
device = "$device"
bf16 = true
TOML
"$bin" -q train "$work/train.toml" --json > "$work/summary.json"
"$bin" estimate --model "$work/model" --method qlora --bits 4 --seq $S --batch 1 --gradient-checkpointing \
  --lora-target all --world-size 1 --json > "$work/estimate.json"
"$py" - "$work" <<'PY' | tee "$out/g_qlora_7b_result.json"
import json, sys
w = sys.argv[1]
recs = [json.loads(l) for l in open(f"{w}/out/metrics.jsonl") if '"loss"' in l]
rates = [r["tokens_per_second"] for r in recs[3:]]
est = json.load(open(f"{w}/estimate.json"))["single"]
print(json.dumps({
    "tokens_per_second": len(rates) / sum(1.0 / r for r in rates) if rates else None,
    "losses": [round(r["loss"], 4) for r in recs],
    "peak_gpu_memory_mib": max((r.get("peak_gpu_memory_mib") or 0.0) for r in recs) or None,
    "peak_rss_mib": max((r.get("peak_memory_mib") or 0.0) for r in recs),
    "estimate_total_mib": est["total_mib"],
    "estimate_without_runtime_mib": (est["total"] - est["runtime"]) / 2**20,
}))
PY
