#!/usr/bin/env bash
# Benchmark of `ferrotune prepare-data` against HF `datasets.map` with the fast Llama-2 tokenizer and the same
# Stanford Alpaca template (tools/bench/bench_data_hf.py), both on the same 2 cores in the same run, plus
# ferrotune's peak RSS on files of growing size (it streams: RSS must stay flat).
#
# Needs: target/release/ferrotune (just build) or, with FERROTUNE_EXAMPLE=path, the libtorch-free
# `cargo build --release -p ferrotune-data --example prepare_file` binary (the same library call), ../shared/fixtures, and a Python venv with datasets,
# transformers, tokenizers, sentencepiece, protobuf (BENCH_VENV, default /tmp/benchvenv; NOT the test venv):
#   python3 -m venv /tmp/benchvenv && /tmp/benchvenv/bin/pip install datasets transformers tokenizers sentencepiece protobuf
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
fx=${FERROTUNE_FIXTURES:-$root/../shared/fixtures}
bin=${FERROTUNE_BIN:-$root/target/release/ferrotune}
venv=${BENCH_VENV:-/tmp/benchvenv}
work=${BENCH_DIR:-/tmp/ferrotune-bench-data}
cpus=${BENCH_CPUS:-0,1}
cutoff=1024
tok=$fx/tokenizers/llama2-tokenizer.model
mkdir -p "$work"

# The demo set repeated to N records (JSON array), generated once per size.
gen() {
  local n=$1 out=$work/alpaca_$1.json
  [[ -s $out ]] || python3 - "$fx/datasets/alpaca_en_demo.json" "$n" "$out" <<'PY'
import json, sys
src, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
recs = json.load(open(src, encoding="utf-8"))
with open(out, "w", encoding="utf-8") as f:
    f.write("[\n")
    for i in range(n):
        f.write(json.dumps(recs[i % len(recs)], ensure_ascii=False))
        f.write(",\n" if i + 1 < n else "\n")
    f.write("]\n")
PY
  echo "$out"
}

# ferrotune's preparation of file $1 into $2 (stats as JSON on stdout).
ft_prepare() {
  if [[ -n ${FERROTUNE_EXAMPLE:-} ]]; then
    "$FERROTUNE_EXAMPLE" "$1" alpaca "$tok" $cutoff 2 "$2"
  else
    "$bin" prepare-data --data-file "$1" --template alpaca --tokenizer "$tok" --cutoff-len $cutoff --workers 2 \
      --overwrite-cache --json --out "$2"
  fi
}

# Runs a command under /usr/bin/time pinned to $cpus; prints "<wall seconds> <peak RSS KiB>".
measure() {
  local log=$work/time.log
  if [[ $(type -t "$1") == function ]]; then
    local fn=$1; shift
    /usr/bin/time -f '%e %M' -o "$log" taskset -c "$cpus" bash -c "$(declare -f "$fn"); tok='$tok'; cutoff=$cutoff; bin='$bin'; FERROTUNE_EXAMPLE='${FERROTUNE_EXAMPLE:-}'; $fn \"\$@\"" _ "$@" > "$work/last.out"
  else
    /usr/bin/time -f '%e %M' -o "$log" taskset -c "$cpus" "$@" > "$work/last.out"
  fi
  cat "$log"
}

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $(date -u +%F)"
f52=$(gen 52000)
echo "== 52,000 records ($(du -h "$f52" | cut -f1)), Llama-2 tokenizer, alpaca template, cutoff $cutoff, 2 workers"
read -r ft_s ft_rss < <(measure ft_prepare "$f52" "$work/cache52")
ft_tokens=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['stats']['tokens'])" "$work/last.out")
rm -rf "$work/hfcache"
read -r hf_s hf_rss < <(measure "$venv/bin/python" "$here/bench_data_hf.py" "$tok" "$f52" $cutoff 2 "$work/hfcache")
hf_tokens=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['tokens'])" "$work/last.out")
echo "ferrotune prepare-data : ${ft_s}s, peak RSS $((ft_rss / 1024)) MiB, $ft_tokens tokens"
echo "HF datasets.map (fast) : ${hf_s}s, peak RSS $((hf_rss / 1024)) MiB, $hf_tokens tokens"
python3 -c "import sys; print(f'speedup: {float(sys.argv[2]) / float(sys.argv[1]):.1f}x')" "$ft_s" "$hf_s"

echo "== peak RSS of ferrotune as the file grows"
for n in 52000 208000 416000; do
  f=$(gen $n)
  read -r s rss < <(measure ft_prepare "$f" "$work/cache_$n")
  echo "$n records ($(du -h "$f" | cut -f1)): ${s}s, peak RSS $((rss / 1024)) MiB"
  rm -rf "$work/cache_$n"
done
