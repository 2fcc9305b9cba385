"""transformers `generate` decode throughput, the Python peer of `ferrotune generate` in bench-infer.sh.

usage: infer_hf_decode.py MODEL_DIR NEW_TOKENS THREADS BATCH
Greedy, exactly NEW_TOKENS new tokens per row, prompt "Once upon a time" (BOS + sentencepiece ids).
Prints JSON {"tokens_per_s", "seconds", "new_tokens"}.
"""

import json
import sys
import time

import torch
from sentencepiece import SentencePieceProcessor
from transformers import LlamaForCausalLM

model_dir, n, threads, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
sp = SentencePieceProcessor(model_file=model_dir + "/tokenizer.model")
ids = torch.tensor([[1] + sp.encode("Once upon a time")] * batch)
model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
with torch.inference_mode():
    model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    t = time.perf_counter()
    out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    dt = time.perf_counter() - t
new = (out.shape[1] - ids.shape[1]) * batch
print(json.dumps({"tokens_per_s": new / dt, "seconds": dt, "new_tokens": new}))
