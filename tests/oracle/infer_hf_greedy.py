"""transformers greedy `generate`, one prompt at a time: the reference ids for ferrotune-infer's Llama tests.

usage: infer_hf_greedy.py HF_MODEL_DIR NEW_TOKENS PROMPT...
Each prompt is BOS + Google sentencepiece ids of tokenizer.model; exactly NEW_TOKENS new ids (EOS ignored).
Prints a JSON list with the generated ids of each prompt.
"""

import json
import sys

import torch
from sentencepiece import SentencePieceProcessor
from transformers import LlamaForCausalLM

model_dir, n, prompts = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
sp = SentencePieceProcessor(model_file=model_dir + "/tokenizer.model")
model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
out = []
with torch.inference_mode():
    for p in prompts:
        ids = [sp.bos_id()] + sp.encode(p)
        g = model.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                           pad_token_id=0)
        out.append(g[0, len(ids):].tolist())
print(json.dumps(out))
