"""Python peers for bench-tokenizer.sh: Google sentencepiece and HF tokenizers (fast) encoding the same
texts with the same tokenizer files (no BOS). Best of RUNS; batch = the library's own batch API with its
default threads, loop/1-thread = sentencepiece num_threads=1 and tokenizers with RAYON_NUM_THREADS=1.

usage: tokenizer_peer.py WORK_DIR RUNS   (WORK_DIR as prepared by the bench_encode example)
"""
import json
import os
import sys
import time

import sentencepiece as spm
from tokenizers import Tokenizer

work, runs = sys.argv[1], int(sys.argv[2])
texts = json.load(open(os.path.join(work, "texts.json"), encoding="utf-8"))


def best(f):
    b, n = float("inf"), 0
    for _ in range(runs):
        t = time.perf_counter()
        n = f()
        b = min(b, time.perf_counter() - t)
    return b * 1e3, n


for name in ["llama2", "merged"]:
    sp = spm.SentencePieceProcessor(model_file=os.path.join(work, name, "tokenizer.model"))
    hf = Tokenizer.from_file(os.path.join(work, name, "tokenizer.json"))
    sp_batch, sp_tokens = best(lambda: sum(map(len, sp.encode(texts, out_type=int))))
    sp_one, _ = best(lambda: sum(map(len, sp.encode(texts, out_type=int, num_threads=1))))
    hf_batch, hf_tokens = best(lambda: sum(len(e.ids) for e in hf.encode_batch_fast(texts, add_special_tokens=False)))
    print(json.dumps({
        "tokenizer": name, "sp_batch_ms": sp_batch, "sp_1thread_ms": sp_one, "sp_tokens": sp_tokens,
        "hf_batch_ms": hf_batch, "hf_tokens": hf_tokens,
    }))
