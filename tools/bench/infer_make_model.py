"""Writes a small random Llama (transformers, seeded) with the Llama-2 tokenizer for the inference benchmarks.

usage: infer_make_model.py OUT_DIR TOKENIZER_MODEL
4 layers, hidden 256, 8 heads, intermediate 640, vocab 32000, context 2048, fp32.
"""

import shutil
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

out, tok = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
cfg = LlamaConfig(hidden_size=256, intermediate_size=640, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=8, vocab_size=32000, max_position_embeddings=2048,
                  bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
model = LlamaForCausalLM(cfg).eval()
model.save_pretrained(out)
shutil.copy(tok, out + "/tokenizer.model")
