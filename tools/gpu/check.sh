#!/usr/bin/env bash
# The GPU check (issues 8 and 9): ONE script for a lent GPU machine that has the repo working tree, a
# carried release binary (target/gpu/ferrotune-gpu or target/gpu/ferrotune, built by
#   CARGO_TARGET_DIR=target/gpu tools/with-torch cargo build --release -p ferrotune-cli
# and stripped with objcopy --strip-debug), and a Python with torch 2.11 (+ its nvidia-nccl wheel),
# transformers and peft. No network needed. Every step runs under `timeout`, a failed step does not stop
# the others; logs go to $OUT/<step>.log, one line per step plus the results to $OUT/summary.txt.
#
#   (a) ferrotune env --json (+ nvidia-smi)
#   (b) NCCL process group: every collective (all_reduce sum/avg, reduce_scatter sum/avg, all_gather,
#       broadcast, barrier) for f32/bf16/f16 on CUDA at world 1 (non-blocking and blocking NCCL
#       communicators), and world 2 when there are >= 2 GPUs
#   (c) ferrotune train: LoRA r 8 on q_proj,v_proj of a random Llama-2-7B-shaped model (hidden 4096,
#       32 layers, 32 heads, intermediate 11008, vocab 32000), seq 2048, batch 1, bf16 = true (bf16
#       weights, fp32 LoRA), AdamW, 3 warm-up + 8 timed steps: tokens/s and peak GPU memory
#   (d) the same in transformers + PEFT (tools/gpu/peer_train.py): tokens/s, max_memory_allocated/reserved
#   (e) MFU of both against the H100 bf16 dense peak (989 TFLOP/s)
#   (f) CUDA greedy decoding: ferrotune generate vs transformers generate on a small random Llama
#   (g) tools/gpu/qlora_7b.sh, when it exists
#
# Carry: target/gpu/ferrotune-gpu and target/gpu/ferrotune-gpu-libs (libgloo.so.0 + deps from Debian 12).
# Env: OUT (default target/gpu-check), PYTHON (default python3), FERROTUNE_BIN, GPU_CHECK_DRY=1 (CPU dry
# run of the whole script on a tiny model: finds path/argument errors before GPU time is spent),
# STEPS (timed steps, default 8), PEAK_TFLOPS (default 989).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
root=$PWD
OUT=${OUT:-$root/target/gpu-check}
mkdir -p "$OUT"
summary=$OUT/summary.txt
: > "$summary"
dry=${GPU_CHECK_DRY:-0}
py=${PYTHON:-python3}
steps=${STEPS:-8}
warm=3
peak=${PEAK_TFLOPS:-989}
t_start=$(date +%s)
note() { echo "$*" | tee -a "$summary"; }

# --- binary and libraries --------------------------------------------------------------------------
bin=${FERROTUNE_BIN:-}
for c in target/gpu/ferrotune-gpu target/gpu/ferrotune target/gpu/release/ferrotune; do
  [ -z "$bin" ] && [ -x "$c" ] && bin=$root/$c
done
if [ -z "$bin" ]; then note "FATAL: no ferrotune binary (set FERROTUNE_BIN)"; exit 1; fi
torch_dir=$("$py" -c 'import torch,os;print(os.path.dirname(torch.__file__))' 2>/dev/null)
if [ -z "$torch_dir" ]; then note "FATAL: $py cannot import torch"; exit 1; fi
site=$(dirname "$torch_dir")
nccl_dir=$site/nvidia/nccl/lib
links=$OUT/.libs
mkdir -p "$links"
# cudarc loads libnccl.so by that name; the wheel ships libnccl.so.2.
[ -f "$nccl_dir/libnccl.so.2" ] && ln -sf "$nccl_dir/libnccl.so.2" "$links/libnccl.so"
export LD_LIBRARY_PATH="$links:$torch_dir/lib:$nccl_dir:$site/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}"
# The Debian libraries the binary links (libgloo and its deps), carried beside it: appended, so a copy
# the machine has itself wins.
[ -d "$root/target/gpu/ferrotune-gpu-libs" ] && LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$root/target/gpu/ferrotune-gpu-libs"
export NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-lo}   # one node: bootstrap over loopback
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
note "ferrotune GPU check $(date -u +%FT%TZ) dry=$dry bin=$bin ($(du -m "$bin" | cut -f1) MiB)"
note "torch: $torch_dir; nccl: $nccl_dir ($(ls "$nccl_dir" 2>/dev/null | tr '\n' ' '))"
ldd "$bin" > "$OUT/ldd.log" 2>&1
grep -q "not found" "$OUT/ldd.log" && note "WARNING: unresolved libraries: $(grep 'not found' "$OUT/ldd.log" | tr -s ' \t\n' ' ')"

# step NAME SECONDS CMD...: runs CMD under timeout with stdout+stderr in $OUT/NAME.log; records rc and time.
step() {
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  echo "--- $name (limit ${limit}s): $*" >&2
  timeout -k 10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local t=$(( $(date +%s) - t0 ))
  local what=ok
  [ $rc -ne 0 ] && what=FAILED
  [ $rc -eq 124 ] && what="TIMED OUT"
  note "step $name: $what (rc $rc, ${t}s) -> $OUT/$name.log"
  return $rc
}

# --- (a) environment ---------------------------------------------------------------------------------
step a_env 60 "$bin" env --json
command -v nvidia-smi > /dev/null && nvidia-smi > "$OUT/nvidia-smi.log" 2>&1
ngpu=$("$py" -c 'import torch;print(torch.cuda.device_count())' 2>/dev/null || echo 0)
note "GPUs visible to torch: $ngpu"
[ "$dry" = 1 ] && device=cpu || device=cuda

# --- (b) NCCL collectives ----------------------------------------------------------------------------
if [ "$dry" = 1 ]; then
  # No CUDA here: the nccl mode must fail with a clear error; the same checks run on gloo with 2 ranks.
  step b_nccl_world1_expect_error 60 "$bin" dist-selftest --backend nccl --nproc 1 --timeout 30
  step b_gloo_world2 120 "$bin" dist-selftest --backend gloo --nproc 2 --timeout 30 --big 65536
else
  MASTER_PORT=$((20000 + RANDOM % 20000)) step b_nccl_world1 120 \
    "$bin" dist-selftest --backend nccl --nproc 1 --timeout 60
  MASTER_PORT=$((20000 + RANDOM % 20000)) FERROTUNE_NCCL_BLOCKING=1 step b_nccl_world1_blocking 120 \
    "$bin" dist-selftest --backend nccl --nproc 1 --timeout 60
  if [ "$ngpu" -ge 2 ]; then
    step b_nccl_world2 180 "$bin" dist-selftest --backend nccl --nproc 2 --timeout 60
  fi
fi
for f in "$OUT"/b_*.log; do
  [ -f "$f" ] || continue
  note "  $(basename "$f" .log): $(grep -c ' ok ' "$f") ok, $(grep -c 'MISMATCH' "$f") mismatch; $(grep -m1 -E 'timing|error' "$f")"
done

# --- shapes -------------------------------------------------------------------------------------------
if [ "$dry" = 1 ]; then
  L=2 H=64 NH=4 I=160 V=32000 S=128 B=1
else
  L=32 H=4096 NH=32 I=11008 V=32000 S=2048 B=1
fi
work=$OUT/work
rm -rf "$work"
mkdir -p "$work/model" "$work/data"

# --- (c) ferrotune train -----------------------------------------------------------------------------
for _ in $(seq 16); do cat datasets/demo_corpus.txt; done > "$work/data/corpus.txt"
echo '{"corpus": {"file_name": "corpus.txt", "columns": {"prompt": "text"}}}' > "$work/data/dataset_info.json"
step c_tokenizer 120 "$bin" -q train-tokenizer --input datasets/demo_corpus.txt --vocab-size 1000 \
  --out "$work/model/tokenizer.model"
cat > "$work/model/config.json" <<JSON
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": $V, "hidden_size": $H,
 "intermediate_size": $I, "num_hidden_layers": $L, "num_attention_heads": $NH, "num_key_value_heads": $NH,
 "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "bos_token_id": 1, "eos_token_id": 2,
 "tie_word_embeddings": false}
JSON
cat > "$work/train.toml" <<TOML
model_name_or_path = "$work/model"
train_from_scratch = true
stage = "pt"
finetuning_type = "lora"
lora_rank = 8
lora_alpha = 16
lora_target = "q_proj,v_proj"
dataset = "corpus"
dataset_dir = "$work/data"
cutoff_len = $S
packing = true
per_device_train_batch_size = $B
learning_rate = 1e-4
max_steps = $((steps + warm))
lr_scheduler_type = "constant"
logging_steps = 1
save_steps = 0
output_dir = "$work/out"
overwrite_output_dir = true
device = "$device"
bf16 = true
TOML
step c_train 240 "$bin" train "$work/train.toml" --json
"$py" - "$work/out/metrics.jsonl" "$warm" > "$OUT/c_train_result.json" 2>> "$OUT/c_train.log" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l]
warm = int(sys.argv[2])
rates = [r["tokens_per_second"] for r in recs[warm:]]
# every step has the same tokens: the steady rate is the harmonic mean of the per-step rates
print(json.dumps({
    "tokens_per_second": len(rates) / sum(1.0 / r for r in rates),
    "timed_steps": len(rates),
    "losses": [round(r["loss"], 4) for r in recs],
    "peak_gpu_memory_mib": max((r.get("peak_gpu_memory_mib") or 0.0) for r in recs) or None,
    "max_memory_allocated_mib": max((r.get("peak_gpu_allocated_mib") or 0.0) for r in recs) or None,
    "max_memory_reserved_mib": max((r.get("peak_gpu_reserved_mib") or 0.0) for r in recs) or None,
    "peak_rss_mib": max((r.get("peak_memory_mib") or 0.0) for r in recs),
}))
PY
note "  ferrotune: $(cat "$OUT/c_train_result.json" 2>/dev/null)"

# --- (d) transformers + PEFT peer --------------------------------------------------------------------
step d_peer 240 "$py" tools/gpu/peer_train.py --layers $L --hidden $H --heads $NH --inter $I --vocab $V \
  --seq $S --batch $B --rank 8 --targets q_proj,v_proj --steps "$steps" --warmup $warm --dtype bf16 \
  --device "$device"
tail -1 "$OUT/d_peer.log" > "$OUT/d_peer_result.json"
note "  peer: $(cat "$OUT/d_peer_result.json")"

# --- (e) MFU -----------------------------------------------------------------------------------------
"$py" - "$OUT/c_train_result.json" "$OUT/d_peer_result.json" $L $H $I $V $S "$peak" <<'PY' | tee -a "$summary"
import json, sys
ours_f, peer_f = sys.argv[1:3]
L, h, i, V, s = map(int, sys.argv[3:8]); peak = float(sys.argv[8]) * 1e12
# Matmul parameters (the embedding lookup does no FLOPs; lm_head does): N = L(4h² + 3hi) + Vh.
N = L * (4 * h * h + 3 * h * i) + V * h
attn = 12 * L * h * s   # attention scores + context, forward + backward (PaLM appendix B convention)
conv = 6 * N + attn     # the standard FLOPs/token (counts weight gradients of the frozen base too)
lora_hw = 4 * N + attn  # what LoRA actually computes: forward 2N + input gradients 2N, no frozen weight grads
print(f"MFU formula: FLOPs/token = 6N + 12*L*h*s with N = L(4h^2+3hi)+Vh = {N/1e9:.3f}e9, "
      f"s = {s}: {conv/1e9:.2f} GFLOP/token (LoRA hardware FLOPs 4N + 12Lhs = {lora_hw/1e9:.2f}); peak {peak/1e12:.0f} TFLOP/s")
res = {}
for name, f in [("ferrotune", ours_f), ("transformers+PEFT", peer_f)]:
    try:
        r = json.load(open(f))
        tps = r["tokens_per_second"]
        mem = r.get("peak_gpu_memory_mib") or r.get("peak_used_above_baseline_mib")
        res[name] = (tps, mem)
        print(f"{name:18s} {tps:9.1f} tokens/s  MFU {100*tps*conv/peak:5.1f}% (6N convention)  "
              f"{100*tps*lora_hw/peak:5.1f}% (LoRA hw FLOPs)  peak GPU memory {mem} MiB"
              + (f"  [max_memory_allocated {r['max_memory_allocated_mib']:.0f} MiB, reserved {r['max_memory_reserved_mib']:.0f} MiB]"
                 if r.get("max_memory_allocated_mib") else ""))
    except Exception as e:  # a failed side must not hide the other
        print(f"{name:18s} no result ({e})")
if len(res) == 2:
    (a, am), (b, bm) = res["ferrotune"], res["transformers+PEFT"]
    mem = f", memory {am / bm:.2f}x (device used above baseline, both)" if am and bm else ""
    print(f"ratio ferrotune / peer: throughput {a / b:.2f}x{mem}")
PY

# --- (f) CUDA greedy decoding vs transformers --------------------------------------------------------
[ "$dry" = 1 ] && new=16 || new=256
step f_make_small 120 "$py" tools/gpu/peer_generate.py make "$work/small" "$work/model/tokenizer.model"
step f_ferrotune_generate 120 "$bin" generate --model "$work/small" --device "$device" --dtype bf16 \
  --prompt "The quick brown fox" --max-new-tokens "$new" --temperature 0 --ignore-eos --json
step f_peer_generate 120 "$py" tools/gpu/peer_generate.py run "$work/small" "$new" "$device"
"$py" - "$OUT/f_ferrotune_generate.log" "$OUT/f_peer_generate.log" <<'PY' "$new" | tee -a "$summary"
import json, sys
def last_json(f):
    for line in reversed(open(f).read().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
try:
    o, p = last_json(sys.argv[1]), last_json(sys.argv[2])
    ft = o["completion_tokens"] / o["batch_seconds"]
    print(f"decode batch 1, {sys.argv[3]} new tokens, bf16 (ferrotune timing includes its first CUDA calls): ferrotune {ft:.1f} tok/s, transformers {p['tokens_per_s']:.1f} tok/s, "
          f"ratio {ft / p['tokens_per_s']:.2f}x; same greedy ids: {o.get('token_ids') == p['new_ids']}")
except Exception as e:
    print(f"decode comparison: no result ({e})")
PY

# --- (g) 7B QLoRA memory check (added by the quant helpers) ------------------------------------------
if [ -x tools/gpu/qlora_7b.sh ]; then
  BIN="$bin" PYTHON="$py" DEVICE="$device" step g_qlora_7b 900 tools/gpu/qlora_7b.sh
else
  note "step g_qlora_7b: skipped (tools/gpu/qlora_7b.sh absent)"
fi

note "total $(( $(date +%s) - t_start ))s"
