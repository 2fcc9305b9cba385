#!/usr/bin/env bash
# Quantization benchmarks (results go into BENCHMARKS.md `## quant` by hand, with machine and date):
#  1. resident bytes per parameter of NF4 + double quant on a generated ≥100M-parameter random Llama (bf16),
#     over the quantized projections and over the whole model, vs bitsandbytes' storage layout (computed);
#  2. peak RSS of `ferrotune quantize` (load-time streaming quantization) vs the 16-bit file size, and
#     transformers' bf16 `from_pretrained` peak RSS;
#  3. perplexity (`ferrotune eval`) of stories260K (fixtures) on held-out text with fp32 / int8 / NF4 / FP4,
#     next to transformers fp32 with the projections dequantized by the bitsandbytes reference
#     (tests/oracle/quant_bnb_ref.py).
# Run through tools/with-torch: CARGO_TARGET_DIR=target/quant tools/with-torch tools/bench/bench-quant.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
py=${FERROTUNE_PYTHON:-python}
work=${BENCH_QUANT_DIR:-$root/target/bench-quant}
fixtures=${FERROTUNE_FIXTURES:-$root/../shared/fixtures}
mkdir -p "$work"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
cargo build --release -q -p ferrotune-cli
ft=$CARGO_TARGET_DIR/release/ferrotune
rss() { /usr/bin/time -f '%M' "$@" 2>&1 >/dev/null | tail -1; }
# peak_rss CMD...: runs CMD (output discarded) sampling /proc/PID/status every 10 ms; prints VmHWM, the peak
# RssAnon (process memory) and RssFile (mapped file pages: libtorch's code, the memory-mapped checkpoint) then.
peak_rss() {
    "$@" > /dev/null 2>&1 & local pid=$! hwm=0 anon=0 file=0 a f h
    while s=$(cat "/proc/$pid/status" 2>/dev/null); do
        a=$(awk '/^RssAnon/ {print $2}' <<< "$s"); f=$(awk '/^RssFile/ {print $2}' <<< "$s")
        h=$(awk '/^VmHWM/ {print $2}' <<< "$s")
        [ -n "$a" ] || break
        if [ "$a" -gt "$anon" ]; then anon=$a; file=$f; fi
        [ "$h" -gt "$hwm" ] && hwm=$h
        sleep 0.01
    done
    wait "$pid"
    echo "VmHWM $((hwm / 1024)) MiB, peak RssAnon $((anon / 1024)) MiB (RssFile then $((file / 1024)) MiB)"
}

echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(date -u +%F)"

# 1 + 2: a ~168M-parameter random Llama in bf16 (hidden 1024, 8 layers, intermediate 2816, vocab 32000).
m=$work/llama168m
if [ ! -f "$m/model.safetensors" ]; then
    "$py" tools/bench/quant_make_model.py "$m"
fi
echo "16-bit file: $(stat -c %s "$m/model.safetensors") bytes"
echo "== ferrotune quantize --method nf4 --double-quant (peak RSS kB, then its report)"
/usr/bin/time -f 'peak RSS %M kB, %e s' "$ft" quantize --method nf4 --double-quant --model "$m" --out "$work/llama168m-nf4dq" --dtype bf16
echo "   memory breakdown: $(peak_rss "$ft" quantize --method nf4 --double-quant --model "$m" --out "$work/llama168m-nf4dq" --dtype bf16)"
# The library baseline: the same command on a 74K-parameter model (1 layer, hidden 64, vocab 256).
t=$work/tiny
[ -f "$t/model.safetensors" ] || "$py" tools/bench/quant_make_model.py "$t" --hidden 64 --layers 1 \
    --intermediate 128 --heads 4 --vocab 256 > /dev/null
echo "   baseline (74K-parameter model): $(peak_rss "$ft" quantize --method nf4 --double-quant --model "$t" --out "$work/tiny-nf4dq" --dtype bf16)"
echo "   written: $(du -b "$work/llama168m-nf4dq/model.safetensors" | cut -f1) bytes"
echo "== bitsandbytes layout (computed): $("$py" tools/bench/quant_peer.py bnb-bytes "$m")"
echo "== transformers bf16 from_pretrained peak RSS kB: $("$py" tools/bench/quant_peer.py load "$m" 2>/dev/null)"

# 3: stories260K perplexity.
s=$work/stories260K
if [ ! -f "$fixtures/models/stories260K/stories260K.bin" ]; then
    echo "skipped: stories260K perplexity: fixtures absent ($fixtures)"
    exit 0
fi
[ -f "$s/config.json" ] || "$ft" convert --from llama2c --input "$fixtures/models/stories260K/stories260K.bin" \
    --tokenizer "$fixtures/models/stories260K/tok512.bin" --out "$s"
# Held-out text: the summaries and dialogue turns of the DialogSum examples and the first alpaca answers
# (plain English nobody here wrote; stories260K never saw them).
"$py" - "$fixtures" > "$work/heldout.txt" <<'PY'
import json, sys
f = sys.argv[1] + "/datasets/"
for d in json.load(open(f + "dialogsum_examples.json")):
    print(d["summary"].replace("\n", " "))
    for turn in d["dialogue"].split("\n")[:6]:
        print(turn.split(":", 1)[-1].strip())
for r in json.load(open(f + "alpaca_en_demo.json"))[:40]:
    print(r["output"].replace("\n", " ")[:400])
PY
echo "held-out lines: $(grep -c . "$work/heldout.txt")"
ppl() { "$ft" eval --model "$1" --text-file "$work/heldout.txt" --device cpu --json "${@:2}" | tee "$work/last.json" | "$py" -c 'import json,sys; print(json.load(sys.stdin)["perplexity"])'; }
echo "== stories260K perplexity (ferrotune eval, fp32 compute | transformers + bitsandbytes reference)"
echo "fp32:   $(ppl "$s") | $("$py" tools/bench/quant_peer.py ppl "$s" "$work/last.json" fp32 2>/dev/null)"
echo "int8:   $(ppl "$s" --quantization-bit 8) | $("$py" tools/bench/quant_peer.py ppl "$s" "$work/last.json" int8 2>/dev/null)"
echo "nf4-dq: $(ppl "$s" --quantization-bit 4 --quantization-type nf4) | $("$py" tools/bench/quant_peer.py ppl "$s" "$work/last.json" nf4-dq 2>/dev/null)"
echo "fp4-dq: $(ppl "$s" --quantization-bit 4 --quantization-type fp4) | $("$py" tools/bench/quant_peer.py ppl "$s" "$work/last.json" fp4-dq 2>/dev/null)"
# Which projections the NF4 loss comes from (transformers + bitsandbytes quantize the same 35 decoder
# projections as ferrotune: lm_head is tied to the embeddings and skipped, as bitsandbytes' default skips it).
for only in q_proj k_proj v_proj o_proj gate_proj up_proj down_proj self_attn mlp; do
    echo "nf4-dq on $only only: $("$py" tools/bench/quant_peer.py ppl "$s" "$work/last.json" nf4-dq $only 2>/dev/null)"
done
for meth in nf4 fp4 int8; do
    "$ft" quantize --method $meth --compute-dtype fp32 --model "$s" --out "$work/stories260K-$meth" 2>/dev/null
    echo "pre-quantized $meth (no double quant): $(ppl "$work/stories260K-$meth")"
done
