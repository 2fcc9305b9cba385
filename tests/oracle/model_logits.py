"""Oracle for ferrotune-model tests: transformers (+ PEFT) logits of checkpoints / adapters written by ferrotune.

usage: model_logits.py JOBS.json
JOBS.json: [{"model": DIR, "adapter": DIR or null, "inputs": FILE, "out": FILE}, ...]
Each job loads DIR with AutoModelForCausalLM (fp32, sdpa), optionally PeftModel.from_pretrained(ADAPTER), runs the
padded batch of FILE (input_ids, attention_mask, position_ids in a .safetensors) and writes {"logits": [B,T,V]}
to OUT; with "loss": true it also writes the transformers loss of labels = input_ids masked by attention_mask.
"""
import json
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

for job in json.load(open(sys.argv[1])):
    model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.float32, attn_implementation="sdpa").eval()
    if job.get("adapter"):
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, job["adapter"]).eval()
    x = load_file(job["inputs"])
    with torch.no_grad():
        out = model(input_ids=x["input_ids"], attention_mask=x["attention_mask"], position_ids=x["position_ids"])
    save_file({"logits": out.logits.float().contiguous()}, job["out"])
print("ok")
