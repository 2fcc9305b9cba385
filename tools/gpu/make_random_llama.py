"""Writes a random Llama checkpoint in HF layout (config.json + bf16 safetensors shards of ≤ 4 GiB), with
N(0, 0.02) weights and unit norms, generated on the GPU when there is one — the base for the 7B-shaped
QLoRA check (the streaming quantizing loader reads it from disk as it would a downloaded Llama-2-7B).

  make_random_llama.py DIR [--layers 32 --hidden 4096 --heads 32 --inter 11008 --vocab 32000]
"""
import argparse, json, os

import torch
from safetensors.torch import save_file

p = argparse.ArgumentParser()
p.add_argument("dir")
p.add_argument("--layers", type=int, default=32)
p.add_argument("--hidden", type=int, default=4096)
p.add_argument("--heads", type=int, default=32)
p.add_argument("--inter", type=int, default=11008)
p.add_argument("--vocab", type=int, default=32000)
a = p.parse_args()
os.makedirs(a.dir, exist_ok=True)
dev = "cuda" if torch.cuda.is_available() else "cpu"
g = torch.Generator(device=dev).manual_seed(0)
h, i = a.hidden, a.inter


def rnd(*shape):
    return (torch.randn(*shape, generator=g, device=dev) * 0.02).to(torch.bfloat16).cpu()


shapes = [("model.embed_tokens.weight", (a.vocab, h))]
for l in range(a.layers):
    pre = f"model.layers.{l}."
    shapes += [(pre + f"self_attn.{n}_proj.weight", (h, h)) for n in "qkvo"]
    shapes += [(pre + "mlp.gate_proj.weight", (i, h)), (pre + "mlp.up_proj.weight", (i, h)),
               (pre + "mlp.down_proj.weight", (h, i))]
    shapes += [(pre + "input_layernorm.weight", (h,)), (pre + "post_attention_layernorm.weight", (h,))]
shapes += [("model.norm.weight", (h,)), ("lm_head.weight", (a.vocab, h))]

shards, cur, size, limit = [], {}, 0, 4 << 30
for name, shape in shapes:
    t = torch.ones(shape, dtype=torch.bfloat16) if len(shape) == 1 else rnd(*shape)
    if size + t.numel() * 2 > limit and cur:
        shards.append(cur)
        cur, size = {}, 0
    cur[name] = t
    size += t.numel() * 2
shards.append(cur)
index = {"metadata": {"total_size": sum(t.numel() * 2 for s in shards for t in s.values())}, "weight_map": {}}
for k, s in enumerate(shards):
    fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
    save_file(s, os.path.join(a.dir, fname), metadata={"format": "pt"})
    index["weight_map"].update({n: fname for n in s})
json.dump(index, open(os.path.join(a.dir, "model.safetensors.index.json"), "w"), indent=1)
json.dump({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": a.vocab,
           "hidden_size": h, "intermediate_size": i, "num_hidden_layers": a.layers,
           "num_attention_heads": a.heads, "num_key_value_heads": a.heads, "max_position_embeddings": 4096,
           "rms_norm_eps": 1e-5, "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False,
           "torch_dtype": "bfloat16"}, open(os.path.join(a.dir, "config.json"), "w"), indent=1)
print(json.dumps({"dir": a.dir, "shards": len(shards), "bytes": index["metadata"]["total_size"]}))
