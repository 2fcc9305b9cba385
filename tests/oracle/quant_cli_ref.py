"""Oracle for the `ferrotune quantize` / `ferrotune eval` CLI test: a tiny Llama (transformers) with a real
SentencePiece tokenizer (trained here), a text file, and the per-token log-probabilities transformers gives
with its decoder projections replaced by the bitsandbytes reference dequantization (quant_bnb_ref.py) of
each variant (ids from Google's sentencepiece with BOS prepended; fp32 compute).

usage: quant_cli_ref.py OUT_DIR VARIANT...      (VARIANT: fp32, nf4, nf4-dq, fp4, fp4-dq, int8, int8-t<x>)
writes OUT_DIR/model (HF checkpoint + tokenizer.model), OUT_DIR/text.txt and
OUT_DIR/ref.json: {"lines": [{"ids": [...], "<variant>": [logprob...], ...}]} (the first line also holds
"greedy_<variant>": the ids of a 12-token greedy continuation)
"""
import copy
import json
import os
import sys

import numpy as np
import sentencepiece as spm
import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, os.path.dirname(__file__))
import quant_bnb_ref as ref  # noqa: E402


def dequantized(model, variant):
    """A copy of `model` whose decoder projection weights are the reference's dequantization."""
    m = copy.deepcopy(model)
    if variant == "fp32":
        return m
    with torch.no_grad():
        for k, p in m.named_parameters():
            if "layers." in k and k.endswith("proj.weight"):
                deq = ref.run_variant(variant, p.detach().numpy().copy(), 64)["deq"]
                p.copy_(torch.from_numpy(np.asarray(deq).reshape(p.shape)))
    return m


def logprobs(m, ids):
    x = torch.tensor([ids])
    with torch.no_grad():
        lp = torch.log_softmax(m(input_ids=x).logits[0, :-1].float(), -1)
    return lp.gather(1, x[0, 1:, None])[:, 0].tolist()


def main():
    out, variants = sys.argv[1], sys.argv[2:]
    os.makedirs(os.path.join(out, "model"), exist_ok=True)
    torch.manual_seed(0)
    corpus = os.path.join(out, "corpus.txt")
    words = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex jolly boxing frogs".split()
    with open(corpus, "w") as f:
        for i in range(200):
            f.write(" ".join(words[(i * 7 + j) % len(words)] for j in range(8)) + "\n")
    spm.SentencePieceTrainer.train(input=corpus, model_prefix=os.path.join(out, "model", "tokenizer"),
                                   vocab_size=40, model_type="unigram", character_coverage=1.0, bos_id=1,
                                   eos_id=2, unk_id=0, minloglevel=2)
    os.remove(os.path.join(out, "model", "tokenizer.vocab"))
    sp = spm.SentencePieceProcessor(model_file=os.path.join(out, "model", "tokenizer.model"))
    cfg = LlamaConfig(vocab_size=sp.get_piece_size(), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in n else 0.2 * torch.randn_like(p))
    model.save_pretrained(os.path.join(out, "model"))
    lines = ["the lazy fox jumps over seven frogs", "", "quick wizards hex a jolly dog"]
    with open(os.path.join(out, "text.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    refs = [{"ids": [sp.bos_id()] + sp.encode(line)} for line in lines if line]
    for v in variants:
        m = dequantized(model, v)
        for r in refs:
            r[v] = logprobs(m, r["ids"])
        # greedy continuation (12 tokens, full forwards, no cache) of the first line, for `ferrotune generate`
        seq = torch.tensor([refs[0]["ids"]])
        with torch.no_grad():
            for _ in range(12):
                seq = torch.cat([seq, m(input_ids=seq).logits[0, -1].argmax().view(1, 1)], dim=1)
        refs[0]["greedy_" + v] = seq[0, len(refs[0]["ids"]):].tolist()
    json.dump({"lines": refs}, open(os.path.join(out, "ref.json"), "w"))
    print("ok")


if __name__ == "__main__":
    main()
