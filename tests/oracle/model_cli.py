"""Oracle for the `ferrotune merge-lora` / `ferrotune eval` CLI tests: a tiny Llama with a real SentencePiece
tokenizer (trained here), a PEFT adapter, a text file, and the per-token log-probabilities transformers + PEFT
give for each line (ids from Google's sentencepiece with BOS prepended).

usage: model_cli.py OUT_DIR
writes OUT_DIR/model (HF checkpoint + tokenizer.model), OUT_DIR/adapter (PEFT), OUT_DIR/text.txt and
OUT_DIR/ref.json: {"lines": [{"ids": [...], "base": [logprob...], "adapter": [logprob...]}]}
"""
import json
import os
import sys

import sentencepiece as spm
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

OUT = sys.argv[1]
os.makedirs(os.path.join(OUT, "model"), exist_ok=True)
torch.manual_seed(0)
corpus = os.path.join(OUT, "corpus.txt")
words = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex jolly boxing frogs".split()
with open(corpus, "w") as f:
    for i in range(200):
        f.write(" ".join(words[(i * 7 + j) % len(words)] for j in range(8)) + "\n")
spm.SentencePieceTrainer.train(input=corpus, model_prefix=os.path.join(OUT, "model", "tokenizer"), vocab_size=40,
                               model_type="unigram", character_coverage=1.0, bos_id=1, eos_id=2, unk_id=0,
                               minloglevel=2)
os.remove(os.path.join(OUT, "model", "tokenizer.vocab"))
sp = spm.SentencePieceProcessor(model_file=os.path.join(OUT, "model", "tokenizer.model"))

cfg = LlamaConfig(vocab_size=sp.get_piece_size(), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2)
model = LlamaForCausalLM(cfg).eval()
with torch.no_grad():
    for n, p in model.named_parameters():
        p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in n else 0.2 * torch.randn_like(p))
model.save_pretrained(os.path.join(OUT, "model"))

lines = ["the lazy fox jumps over seven frogs", "", "quick wizards hex a jolly dog"]
with open(os.path.join(OUT, "text.txt"), "w") as f:
    f.write("\n".join(lines) + "\n")


def logprobs(m, ids):
    x = torch.tensor([ids])
    with torch.no_grad():
        lp = torch.log_softmax(m(input_ids=x).logits[0, :-1].float(), -1)
    return lp.gather(1, x[0, 1:, None])[:, 0].tolist()


ref = [{"ids": [sp.bos_id()] + sp.encode(line)} for line in lines if line]
for r in ref:
    r["base"] = logprobs(model, r["ids"])
pm = get_peft_model(model, LoraConfig(r=2, lora_alpha=5, target_modules=["q_proj", "v_proj", "down_proj"])).eval()
with torch.no_grad():
    for n, p in pm.named_parameters():
        if "lora_B" in n:
            p.copy_(0.5 * torch.randn_like(p))
pm.save_pretrained(os.path.join(OUT, "adapter"))
for r in ref:
    r["adapter"] = logprobs(pm, r["ids"])
json.dump({"lines": ref}, open(os.path.join(OUT, "ref.json"), "w"))
print("ok")
