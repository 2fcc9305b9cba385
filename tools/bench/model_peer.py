"""Python peer numbers for tools/bench/bench-model.sh (same machine, same run).

usage: model_peer.py load DIR          peak RSS of transformers' from_pretrained(DIR, bf16), right after loading
                                       and after touching every weight page → JSON line
       model_peer.py ckpt on|off       one PEFT LoRA step of the ckpt_mem.rs model, with/without HF gradient
                                       checkpointing → JSON line with the peak RSS growth
"""
import json
import resource
import sys
import time

import torch


def rss_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def peak_kb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


from transformers import AutoModelForCausalLM, LlamaConfig  # noqa: E402

torch.set_num_threads(2)
if sys.argv[1] == "load":
    before = rss_kb()
    t0 = time.time()
    m = AutoModelForCausalLM.from_pretrained(sys.argv[2], dtype=torch.bfloat16)
    load_s, after_load = round(time.time() - t0, 2), peak_kb()
    # transformers may leave the weights memory-mapped and unread: touch every one so they are resident
    with torch.no_grad():
        for p in m.parameters():
            p.view(-1)[:: max(1, 2048)].sum()
    print(json.dumps({"load_s": load_s, "rss_before_kb": before, "peak_rss_kb_after_load": after_load,
                      "peak_rss_kb_after_touching_weights": peak_kb()}))
else:
    from peft import LoraConfig, get_peft_model

    on = sys.argv[2] == "on"
    cfg = LlamaConfig(vocab_size=8000, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                      num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=1024)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    if on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    model.train()
    torch.manual_seed(1)
    ids = torch.randint(0, 8000, (4, 512))
    before = rss_kb()
    t0 = time.time()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    print(json.dumps({"checkpointing": on, "step_s": round(time.time() - t0, 2), "rss_before_kb": before,
                      "peak_growth_kb": peak_kb() - before}))
