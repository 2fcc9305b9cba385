"""The Python peer of tools/bench/bench-train.sh: LoRA SFT of a small random Llama with transformers + PEFT
in a plain PyTorch loop (no Trainer), fp32, AdamW, on fixed-length random token rows.

usage: bench_train_peer.py LAYERS DIM HEADS INTER VOCAB SEQ BATCH RANK STEPS THREADS
prints {"tokens_per_second": ..., "peak_rss_mib": ...}; the first 3 steps are warmup and not timed.
"""
import json
import resource
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

layers, dim, heads, inter, vocab, seq, batch, rank, steps, threads = map(int, sys.argv[1:11])
torch.set_num_threads(threads)
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=vocab, hidden_size=dim, intermediate_size=inter, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=seq,
                  tie_word_embeddings=False)
model = LlamaForCausalLM(cfg)
lcfg = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, task_type="CAUSAL_LM",
                  target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
model = get_peft_model(model, lcfg)
model.train()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
g = torch.Generator().manual_seed(1)
warm = 3
t0 = None
for step in range(warm + steps):
    if step == warm:
        t0 = time.perf_counter()
    ids = torch.randint(3, vocab, (batch, seq), generator=g)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
dt = time.perf_counter() - t0
print(json.dumps({
    "tokens_per_second": steps * batch * seq / dt,
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
}))
