"""Oracle for the trainer's golden-loss recipe test (crates/train/tests/golden_loss.rs).

  make OUT            a tiny random Llama (HF format), a PEFT LoRA adapter to start from (A and B both
                      random, so that both receive gradients from step 1), and tokenized samples
                      (samples.json: input_ids + labels with -100 prompt masks), all from fixed seeds.
  run OUT BATCHES     trains that adapter with transformers + PEFT and torch.optim.AdamW in a plain loop over
                      the micro-batches the Rust test exported (BATCHES: JSON list of optimizer steps, each
                      a list of micro-batches {input_ids, attention_mask, labels}), with gradient
                      accumulation normalised by the number of trained tokens, clipping, weight decay and a
                      linear warmup/decay schedule; prints one JSON object {"losses": [...], "lrs": [...],
                      "grad_norms": [...]}.

Hyper-parameters come from OUT/hparams.json (written by `make`), so the Rust side reads the same values.
"""

import json
import os
import sys

import torch
import torch.nn.functional as F

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

HP = {
    "lora_rank": 4,
    "lora_alpha": 8.0,
    "lora_target": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "learning_rate": 5e-3,
    "weight_decay": 0.01,
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "adam_epsilon": 1e-8,
    "max_grad_norm": 0.5,
    "warmup_steps": 1,
    "max_steps": 6,
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 2,
}


def make(out):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
        for n, p in model.named_parameters():
            if "norm" in n:
                p.fill_(1.0)
    model.save_pretrained(os.path.join(out, "base"), safe_serialization=True)
    lcfg = LoraConfig(
        r=HP["lora_rank"],
        lora_alpha=HP["lora_alpha"],
        lora_dropout=0.0,
        target_modules=HP["lora_target"],
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(1)
    peft_model = get_peft_model(model, lcfg)
    peft_model.save_pretrained(os.path.join(out, "adapter"))
    g = torch.Generator().manual_seed(2)
    n = HP["max_steps"] * HP["per_device_train_batch_size"] * HP["gradient_accumulation_steps"]
    samples = []
    for _ in range(n):
        length = int(torch.randint(6, 20, (1,), generator=g))
        prompt = int(torch.randint(1, length - 2, (1,), generator=g))
        ids = [1] + torch.randint(3, 96, (length - 2,), generator=g).tolist() + [2]
        labels = [-100] * prompt + ids[prompt:]
        samples.append({"input_ids": ids, "labels": labels})
    with open(os.path.join(out, "samples.json"), "w") as f:
        json.dump(samples, f)
    with open(os.path.join(out, "hparams.json"), "w") as f:
        json.dump(HP, f, indent=1)


def run(out, batches_path):
    from peft import PeftModel
    from transformers import LlamaForCausalLM, get_linear_schedule_with_warmup

    with open(batches_path) as f:
        steps = json.load(f)
    base = LlamaForCausalLM.from_pretrained(os.path.join(out, "base"), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, os.path.join(out, "adapter"), is_trainable=True)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        params,
        lr=HP["learning_rate"],
        betas=(HP["adam_beta1"], HP["adam_beta2"]),
        eps=HP["adam_epsilon"],
        weight_decay=HP["weight_decay"],
    )
    sched = get_linear_schedule_with_warmup(opt, HP["warmup_steps"], HP["max_steps"])
    losses, lrs, norms = [], [], []
    for micro in steps:
        window_tokens = sum(
            sum(1 for row in mb["labels"] for l in row[1:] if l != -100) for mb in micro
        )
        total = 0.0
        for mb in micro:
            ids = torch.tensor(mb["input_ids"])
            mask = torch.tensor(mb["attention_mask"])
            labels = torch.tensor(mb["labels"])
            logits = model(input_ids=ids, attention_mask=mask).logits
            shift_logits = logits[:, :-1, :].reshape(-1, logits.shape[-1]).float()
            shift_labels = labels[:, 1:].reshape(-1)
            n = int((shift_labels != -100).sum())
            loss = F.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="mean")
            scaled = loss * (n / window_tokens)
            scaled.backward()
            total += float(scaled)
        norm = torch.nn.utils.clip_grad_norm_(params, HP["max_grad_norm"])
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(total)
        norms.append(float(norm))
    model.save_pretrained(os.path.join(out, "python_adapter_out"))
    print(json.dumps({"losses": losses, "lrs": lrs, "grad_norms": norms}))


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2])
    elif sys.argv[1] == "run":
        run(sys.argv[2], sys.argv[3])
    else:
        sys.exit(f"unknown mode {sys.argv[1]}")
