"""The Python peer of tools/gpu/check.sh step (d): LoRA training of a random Llama with transformers + PEFT
in a plain PyTorch loop (no Trainer), AdamW, random token rows, on CUDA (or CPU for the dry run).

Precision: weights in --dtype (bf16), LoRA adapters in fp32 (PEFT's default `autocast_adapter_dtype`),
the input of each adapter cast to fp32 and its output added back in the base dtype — what ferrotune does
with `bf16 = true` and finetuning_type = "lora". Loss: transformers' causal-LM loss (fp32 logits).

Memory: torch.cuda.max_memory_allocated / max_memory_reserved, and the device's used memory (total − free,
sampled after every step) above the baseline taken before the model exists — the same measure ferrotune
reports as peak_gpu_memory_mib.

prints one JSON line: tokens_per_second (timed steps only), step times, losses, memory numbers.
"""
import argparse
import json
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--layers", type=int, default=32)
p.add_argument("--hidden", type=int, default=4096)
p.add_argument("--heads", type=int, default=32)
p.add_argument("--inter", type=int, default=11008)
p.add_argument("--vocab", type=int, default=32000)
p.add_argument("--seq", type=int, default=2048)
p.add_argument("--batch", type=int, default=1)
p.add_argument("--rank", type=int, default=8)
p.add_argument("--targets", default="q_proj,v_proj")
p.add_argument("--steps", type=int, default=8, help="timed steps")
p.add_argument("--warmup", type=int, default=3)
p.add_argument("--dtype", default="bf16", choices=["bf16", "f32"])
p.add_argument("--device", default="cuda")
p.add_argument("--gradient-checkpointing", action="store_true",
               help="transformers' activation checkpointing per decoder layer (non-reentrant)")
a = p.parse_args()

dev = torch.device(a.device)
cuda = dev.type == "cuda"
dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
torch.manual_seed(0)


def used_bytes():
    if not cuda:
        return 0
    free, total = torch.cuda.mem_get_info(dev)
    return total - free


if cuda:
    torch.zeros(1, device=dev)  # create the context first: the baseline includes it, as in ferrotune
baseline = used_bytes()
peak_used = baseline

cfg = LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.inter,
                  num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.heads,
                  max_position_embeddings=max(a.seq, 2048), tie_word_embeddings=False,
                  attn_implementation="sdpa")
t_init = time.perf_counter()
# Build directly on the device in the weight dtype (a 7B model initialised on the CPU would take minutes).
prev = torch.get_default_dtype()
torch.set_default_dtype(dtype)
with dev:
    model = LlamaForCausalLM(cfg)
torch.set_default_dtype(prev)
if a.gradient_checkpointing:
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
lcfg = LoraConfig(r=a.rank, lora_alpha=2 * a.rank, lora_dropout=0.0, task_type="CAUSAL_LM",
                  target_modules=a.targets.split(","))
model = get_peft_model(model, lcfg)
model.train()
if cuda:
    torch.cuda.synchronize()
init_s = time.perf_counter() - t_init
trainable = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(trainable, lr=1e-4)
g = torch.Generator().manual_seed(1)
losses, step_s = [], []
t0 = None
for step in range(a.warmup + a.steps):
    if step == a.warmup:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
    ts = time.perf_counter()
    ids = torch.randint(3, a.vocab, (a.batch, a.seq), generator=g).to(dev)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    peak_used = max(peak_used, used_bytes())
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    losses.append(out.loss.item())  # synchronises, like ferrotune's per-step loss read
    peak_used = max(peak_used, used_bytes())
    step_s.append(time.perf_counter() - ts)
if cuda:
    torch.cuda.synchronize()
dt = time.perf_counter() - t0
mib = 1024.0 * 1024.0
print(json.dumps({
    "tokens_per_second": a.steps * a.batch * a.seq / dt,
    "timed_steps": a.steps,
    "step_seconds": [round(s, 4) for s in step_s],
    "losses": [round(x, 4) for x in losses],
    "init_seconds": round(init_s, 2),
    "gradient_checkpointing": a.gradient_checkpointing,
    "trainable_params": sum(p.numel() for p in trainable),
    "total_params": sum(p.numel() for p in model.parameters()),
    "max_memory_allocated_mib": torch.cuda.max_memory_allocated(dev) / mib if cuda else None,
    "max_memory_reserved_mib": torch.cuda.max_memory_reserved(dev) / mib if cuda else None,
    "peak_used_above_baseline_mib": (peak_used - baseline) / mib if cuda else None,
    "dtypes": sorted({f"{n.split('.')[-2] if 'lora' in n else 'base'}:{p.dtype}" for n, p in model.named_parameters()}),
    "device": torch.cuda.get_device_name(dev) if cuda else "cpu",
    "torch": torch.__version__,
}))
