"""Writes a random ~1.1B-parameter Llama checkpoint (TinyLlama-1.1B shapes) in bf16 to OUT_DIR, tensor by tensor
(no model object, so generating it needs little memory): config.json + model.safetensors.

usage: model_make_1b.py OUT_DIR
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
c = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=32000, hidden_size=2048,
         intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
         max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
         bos_token_id=1, eos_token_id=2, torch_dtype="bfloat16", hidden_act="silu")
h, i, kv = c["hidden_size"], c["intermediate_size"], c["num_key_value_heads"] * 64
g = torch.Generator().manual_seed(0)


def w(*shape):
    return (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)


t = {"model.embed_tokens.weight": w(c["vocab_size"], h), "model.norm.weight": torch.ones(h, dtype=torch.bfloat16),
     "lm_head.weight": w(c["vocab_size"], h)}
for n in range(c["num_hidden_layers"]):
    p = f"model.layers.{n}."
    t[p + "input_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
    t[p + "post_attention_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
    t[p + "self_attn.q_proj.weight"] = w(h, h)
    t[p + "self_attn.k_proj.weight"] = w(kv, h)
    t[p + "self_attn.v_proj.weight"] = w(kv, h)
    t[p + "self_attn.o_proj.weight"] = w(h, h)
    t[p + "mlp.gate_proj.weight"] = w(i, h)
    t[p + "mlp.up_proj.weight"] = w(i, h)
    t[p + "mlp.down_proj.weight"] = w(h, i)
save_file(t, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
json.dump(c, open(os.path.join(out, "config.json"), "w"), indent=2)
print(sum(x.numel() for x in t.values()))
