#!/usr/bin/env bash
# Inference benchmarks (see BENCHMARKS.md, section "infer"):
#  1. CPU decode tokens/s of `ferrotune generate` vs transformers `generate` on a small random Llama
#     (4 layers, dim 256, vocab 32000), greedy, same threads, batch 1 and 8, measured in the same run.
#  2. Load test of `ferrotune serve` on the same model: 32 concurrent streaming clients for 30 s plus
#     malformed JSON / oversize prompts / oversize bodies / mid-stream disconnects (infer_load.py: status
#     codes, in-flight count back to 0, throughput, TTFT p50/p99), then `wrk` (Debian) with 32 connections.
# Needs the shared fixtures (Llama-2 tokenizer) and a release build (target/release/ferrotune).
# Env: THREADS (default 2), NEW_TOKENS (default 128), LOAD_SECONDS (default 30), FERROTUNE_BIN.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
eval "$("$root/tools/setup-torch.sh")"
py=$FERROTUNE_PYTHON
bin=${FERROTUNE_BIN:-$root/target/release/ferrotune}
threads=${THREADS:-2}
new=${NEW_TOKENS:-128}
load_s=${LOAD_SECONDS:-30}
fixtures=${FERROTUNE_FIXTURES:-$root/../shared/fixtures}
tok=$fixtures/tokenizers/llama2-tokenizer.model
if [ ! -f "$tok" ]; then echo "skipped: bench-infer: $tok is absent"; exit 0; fi
work=$(mktemp -d)
server_pid=
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%F)"
"$py" "$here/infer_make_model.py" "$work/model" "$tok"

for batch in 1 8; do
  prompts=()
  for _ in $(seq "$batch"); do prompts+=(--prompt "Once upon a time"); done
  # warm-up run (page cache, allocator), then the measured one
  OMP_NUM_THREADS=$threads "$bin" generate --model "$work/model" --device cpu --threads "$threads" \
    "${prompts[@]}" --max-new-tokens 8 --temperature 0 --ignore-eos --json > /dev/null
  # decode tokens/s of `ferrotune generate` (the first JSON line; the rest is read so the pipe stays open)
  ours() {
    OMP_NUM_THREADS=$threads "$bin" generate --model "$work/model" --device cpu --threads "$threads" \
      "${prompts[@]}" --max-new-tokens "$new" --temperature 0 --ignore-eos --json |
      "$py" -c "import json,sys; r=json.loads(sys.stdin.readline()); sys.stdin.read(); print(round($batch*r['completion_tokens']/r['batch_seconds'],1))"
  }
  ft=$(ours)
  # the same with MKL's vendor check left on (its generic kernels on non-Intel CPUs, as in stock PyTorch)
  ft_generic=$(FERROTUNE_MKL_VENDOR_CHECK=1 ours)
  hf=$(OMP_NUM_THREADS=$threads "$py" "$here/infer_hf_decode.py" "$work/model" "$new" "$threads" "$batch" |
    "$py" -c "import json,sys; print(round(json.load(sys.stdin)['tokens_per_s'],1))")
  ratio=$("$py" -c "print(round($ft/$hf,2))")
  echo "decode batch=$batch threads=$threads new_tokens=$new: ferrotune $ft tok/s, transformers $hf tok/s, ratio ${ratio}x" \
    "(ferrotune with FERROTUNE_MKL_VENDOR_CHECK=1: $ft_generic tok/s, $("$py" -c "print(round($ft_generic/$hf,2))")x; load average $(cut -d' ' -f1 /proc/loadavg))"
done

# Load test.
OMP_NUM_THREADS=$threads "$bin" serve --model "$work/model" --device cpu --threads "$threads" --port 0 \
  --max-body-bytes 1048576 > "$work/serve.out" 2> "$work/serve.err" &
server_pid=$!
for _ in $(seq 100); do grep -q listening "$work/serve.out" 2>/dev/null && break; sleep 0.2; done
url=$(grep -o 'http://[0-9.:]*' "$work/serve.out")
echo "load test: $url, 32 streaming clients + error/disconnect client, ${load_s}s"
"$py" "$here/infer_load.py" "$url" "$load_s" 32
kill -0 "$server_pid" && echo "server alive after load test"
if command -v wrk > /dev/null; then
  wrk -t2 -c32 -d"${load_s}s" --timeout 60s -s "$here/infer_wrk.lua" "$url/v1/chat/completions" |
    grep -E 'Requests/sec|Latency|requests in|Non-2xx|Socket errors'
  # wrk drops its open streams when it stops: they must be cancelled, in_flight back to 0.
  for _ in $(seq 300); do
    n=$(curl -s "$url/health" | "$py" -c "import json,sys; print(json.load(sys.stdin)['in_flight'])")
    [ "$n" = 0 ] && break
    sleep 0.1
  done
  echo "in_flight after wrk: $n"
else
  echo "wrk not installed (apt-get install wrk): skipped the wrk run"
fi
kill -0 "$server_pid" && echo "server alive after wrk"
