"""Writes a random Llama checkpoint (transformers init, bf16 safetensors) for the quantization benchmarks.

usage: quant_make_model.py OUT_DIR [--hidden 1024] [--layers 8] [--intermediate 2816] [--heads 16]
       [--vocab 32000]
"""
import argparse

import torch
from transformers import LlamaConfig, LlamaForCausalLM

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--hidden", type=int, default=1024)
p.add_argument("--layers", type=int, default=8)
p.add_argument("--intermediate", type=int, default=2816)
p.add_argument("--heads", type=int, default=16)
p.add_argument("--vocab", type=int, default=32000)
a = p.parse_args()
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
                  num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.heads,
                  max_position_embeddings=2048, tie_word_embeddings=False)
model = LlamaForCausalLM(cfg).to(torch.bfloat16)
model.save_pretrained(a.out, safe_serialization=True, max_shard_size="20GB")
n = sum(p.numel() for p in model.parameters())
proj = sum(p.numel() for k, p in model.named_parameters() if "layers." in k and k.endswith("proj.weight"))
print(f"{n} parameters, {proj} in decoder projections")
