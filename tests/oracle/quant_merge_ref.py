"""Oracle for merging LoRA into an int4 (GPTQ/RTN) base: dequantizes the stored checkpoint in numpy from the
documented layout (`weight` = u8 [out, ceil(in/2)], two 4-bit codes per byte, low nibble first; `scales` f32
and `zeros` u8 [out, groups]; optional `g_idx` [in]; W = scales[:, g] * (code - zeros[:, g]), g = g_idx or
column // group_size), loads that into transformers' LlamaForCausalLM, applies the PEFT adapter with PEFT
itself and `merge_and_unload()`, and compares every tensor of ferrotune's merged checkpoint.

usage: quant_merge_ref.py QUANT_DIR ADAPTER_DIR MERGED_DIR
prints JSON: {"max_abs_diff": ..., "tensors": N, "dequantized": M, "max_merge_delta": ...}
"""
import json
import os
import sys

import numpy as np
import torch
from peft import PeftModel
from safetensors.numpy import load_file as load_np
from safetensors.torch import load_file as load_pt
from transformers import LlamaConfig, LlamaForCausalLM

qdir, adir, mdir = sys.argv[1:4]
cfg = json.load(open(os.path.join(qdir, "config.json")))
qc = cfg.pop("quantization_config")
group_size = int(qc["group_size"])
st = load_np(os.path.join(qdir, "model.safetensors"))

model = LlamaForCausalLM(LlamaConfig(**cfg)).float().eval()
shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
state = {}
dequantized = 0
for k, t in st.items():
    if k.endswith((".scales", ".zeros", ".g_idx")):
        continue
    prefix = k[: -len(".weight")] if k.endswith(".weight") else None
    if prefix is not None and prefix + ".scales" in st:
        out_f, in_f = shapes[k]
        packed = t.astype(np.int64)
        codes = np.stack([packed & 15, packed >> 4], axis=-1).reshape(out_f, -1)[:, :in_f]
        g = st[prefix + ".g_idx"].astype(np.int64) if prefix + ".g_idx" in st else np.arange(in_f) // group_size
        scales = st[prefix + ".scales"].astype(np.float64)
        zeros = st[prefix + ".zeros"].astype(np.float64)
        w = scales[:, g] * (codes - zeros[:, g])
        state[k] = torch.from_numpy(w.astype(np.float32))
        dequantized += 1
    else:
        state[k] = torch.from_numpy(t.astype(np.float32))
missing, unexpected = model.load_state_dict(state, strict=False)
assert not unexpected, unexpected
assert all("lm_head" in m for m in missing), missing
before = {k: v.clone() for k, v in model.state_dict().items()}

merged = PeftModel.from_pretrained(model, adir).merge_and_unload().eval()
ref = merged.state_dict()
got = load_pt(os.path.join(mdir, "model.safetensors"))
diff = 0.0
delta = 0.0
for k, t in got.items():
    diff = max(diff, (t.float() - ref[k].float()).abs().max().item())
    delta = max(delta, (ref[k].float() - before[k].float()).abs().max().item())
print(json.dumps({"max_abs_diff": diff, "tensors": len(got), "dequantized": dequantized, "max_merge_delta": delta}))
