"""The Python peer of tools/bench/bench-dist.sh: full fine-tuning of the same small random Llama with
transformers in a plain PyTorch loop, fp32, AdamW, one rank of a job started with the torchrun environment
(RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) on the gloo backend.

usage: bench_dist_peer.py MODE LAYERS DIM HEADS INTER VOCAB SEQ BATCH STEPS WARM
MODE: single (no process group) | ddp (DistributedDataParallel) | fsdp (FSDP2 `fully_shard` per decoder
layer, then the root: torch's FULL_SHARD). Rank 0 prints {"tokens_per_second": global, "peak_rss_mib": [...]}.
"""
import json
import os
import resource
import sys
import time

import torch
import torch.distributed as dist
from transformers import LlamaConfig, LlamaForCausalLM

mode = sys.argv[1]
layers, dim, heads, inter, vocab, seq, batch, steps, warm = map(int, sys.argv[2:11])
torch.set_num_threads(1)
rank = int(os.environ.get("RANK", "0"))
world = int(os.environ.get("WORLD_SIZE", "1"))
if mode != "single":
    dist.init_process_group("gloo")
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=vocab, hidden_size=dim, intermediate_size=inter, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=seq,
                  tie_word_embeddings=False)
model = LlamaForCausalLM(cfg)
model.train()
if mode == "ddp":
    from torch.nn.parallel import DistributedDataParallel
    model = DistributedDataParallel(model)
elif mode == "fsdp":
    from torch.distributed.fsdp import fully_shard
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
g = torch.Generator().manual_seed(1 + rank)
t0 = None
for step in range(warm + steps):
    if step == warm:
        if mode != "single":
            dist.barrier()
        t0 = time.perf_counter()
    ids = torch.randint(3, vocab, (batch, seq), generator=g)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
if mode != "single":
    dist.barrier()
dt = time.perf_counter() - t0
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
rss_all = [rss]
if mode != "single":
    rss_all = [None] * world
    dist.all_gather_object(rss_all, rss)
if rank == 0:
    print(json.dumps({"tokens_per_second": world * steps * batch * seq / dt, "peak_rss_mib": rss_all}))
if mode != "single":
    dist.destroy_process_group()
