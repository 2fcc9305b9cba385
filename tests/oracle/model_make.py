"""Oracle for ferrotune-model tests: builds tiny random Llama-family checkpoints with transformers (and LoRA
adapters with PEFT) into OUT_DIR and dumps reference logits computed by transformers / PEFT.

usage: model_make.py OUT_DIR

OUT_DIR/<variant>/            HF checkpoint (config.json + model.safetensors), one per architecture variant
OUT_DIR/<variant>/ref.safetensors
    input_ids, attention_mask, position_ids [B,T]   a padded batch (right- and left-padded rows)
    logits_f32, logits_bf16 [B,T,V]                 transformers logits in fp32 and with the model in bf16
    ids_full, logits_full                           an unpadded batch (plain causal path)
OUT_DIR/bin/                  the mha checkpoint as pytorch_model.bin (torch.save of the state dict)
OUT_DIR/peft_adapter/         a PEFT LoRA adapter on mha (r=3, alpha=7, k/o/up, rsLoRA, random B)
OUT_DIR/peft_adapter/ref.safetensors   logits_f32 of PeftModel on the padded batch of mha
"""
import copy
import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

torch.manual_seed(0)
OUT = sys.argv[1]
BASE = dict(vocab_size=96, hidden_size=64, intermediate_size=80, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
            rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)
VARIANTS = {
    "mha": {},
    "gqa": dict(num_attention_heads=8, num_key_value_heads=2),
    "llama3": dict(rope_theta=500000.0, rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                                         high_freq_factor=4.0, original_max_position_embeddings=16)),
    "linear": dict(rope_scaling=dict(rope_type="linear", factor=2.0)),
    "dynamic": dict(max_position_embeddings=8, rope_scaling=dict(rope_type="dynamic", factor=2.0)),
    "tied": dict(tie_word_embeddings=True),
    "bias": dict(attention_bias=True, mlp_bias=True),
    "headdim": dict(hidden_size=48, head_dim=16, num_key_value_heads=2),
    "qwen2": dict(num_key_value_heads=2, model_type="qwen2"),
}
B, T = 3, 12


def batch():
    ids = torch.randint(3, BASE["vocab_size"], (B, T))
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, T - 3:] = 0  # right padding
    mask[2, :4] = 0  # left padding
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, pos


def randomize(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))


def logits(model, ids, mask, pos):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float().contiguous()


def make(name, over):
    kw = dict(BASE)
    kw.update(over)
    kw.pop("model_type", None)
    cfg = (Qwen2Config if over.get("model_type") == "qwen2" else LlamaConfig)(**kw)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()
    randomize(model)
    d = os.path.join(OUT, name)
    model.save_pretrained(d)
    ids, mask, pos = batch()
    full = torch.randint(3, BASE["vocab_size"], (2, T))
    ref = dict(input_ids=ids, attention_mask=mask, position_ids=pos, logits_f32=logits(model, ids, mask, pos),
               ids_full=full, logits_full=logits(model, full, torch.ones_like(full), None))
    ref["logits_bf16"] = logits(copy.deepcopy(model).to(torch.bfloat16), ids, mask, pos)
    save_file(ref, os.path.join(d, "ref.safetensors"))
    return model, (ids, mask, pos)


def classic_config(d):
    """Rewrite a transformers-5 config.json (rope_parameters) into the classic Llama-2 form."""
    p = os.path.join(d, "config.json")
    c = json.load(open(p))
    rp = c.pop("rope_parameters")
    c["rope_theta"] = rp.pop("rope_theta")
    c["rope_scaling"] = rp if rp.get("rope_type", "default") != "default" else None
    json.dump(c, open(p, "w"), indent=2)


models = {name: make(name, over) for name, over in VARIANTS.items()}
classic_config(os.path.join(OUT, "llama3"))

mha, (ids, mask, pos) = models["mha"]
bin_dir = os.path.join(OUT, "bin")
os.makedirs(bin_dir)
torch.save(mha.state_dict(), os.path.join(bin_dir, "pytorch_model.bin"))
mha.config.save_pretrained(bin_dir)

from peft import LoraConfig, get_peft_model  # noqa: E402

peft_cfg = LoraConfig(r=3, lora_alpha=7, target_modules=["k_proj", "o_proj", "up_proj"], use_rslora=True,
                      lora_dropout=0.0, task_type="CAUSAL_LM")
pm = get_peft_model(mha, peft_cfg).eval()
with torch.no_grad():
    for n, p in pm.named_parameters():
        if "lora_B" in n:
            p.copy_(0.3 * torch.randn_like(p))
ad = os.path.join(OUT, "peft_adapter")
pm.save_pretrained(ad)
save_file(dict(logits_f32=logits(pm, ids, mask, pos)), os.path.join(ad, "ref.safetensors"))
print("ok")
