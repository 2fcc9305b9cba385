"""Oracle for `ferrotune convert --from meta`.

  make DIR        writes a tiny random Llama-2 checkpoint in Meta's layout into DIR: params.json and two
                  model-parallel shards consolidated.00.pth / consolidated.01.pth (column-parallel wq/wk/wv/
                  w1/w3/output split on dim 0, row-parallel wo/w2 on dim 1, the embedding on dim 1, norms
                  replicated), plus reference.pt: token ids and the logits of Meta's reference forward
                  (model.py: complex-number rotary, RMSNorm, GQA, SwiGLU) on the unsplit weights.
  check DIR HF    loads the converted HF directory with transformers' LlamaForCausalLM and prints JSON with
                  the largest absolute logit difference to the reference.
"""

import json
import math
import sys

import torch

DIM, N_LAYERS, N_HEADS, N_KV, VOCAB, MULTIPLE_OF, EPS, THETA = 64, 2, 4, 2, 96, 32, 1e-5, 10000.0
HEAD = DIM // N_HEADS
HIDDEN = MULTIPLE_OF * ((int(2 * 4 * DIM / 3) + MULTIPLE_OF - 1) // MULTIPLE_OF)


def random_weights():
    g = torch.Generator().manual_seed(1234)
    r = lambda *s: torch.randn(*s, generator=g) * 0.2
    w = {"tok_embeddings.weight": r(VOCAB, DIM), "norm.weight": 1 + r(DIM), "output.weight": r(VOCAB, DIM)}
    for i in range(N_LAYERS):
        p = f"layers.{i}."
        w[p + "attention.wq.weight"] = r(N_HEADS * HEAD, DIM)
        w[p + "attention.wk.weight"] = r(N_KV * HEAD, DIM)
        w[p + "attention.wv.weight"] = r(N_KV * HEAD, DIM)
        w[p + "attention.wo.weight"] = r(DIM, N_HEADS * HEAD)
        w[p + "feed_forward.w1.weight"] = r(HIDDEN, DIM)
        w[p + "feed_forward.w2.weight"] = r(DIM, HIDDEN)
        w[p + "feed_forward.w3.weight"] = r(HIDDEN, DIM)
        w[p + "attention_norm.weight"] = 1 + r(DIM)
        w[p + "ffn_norm.weight"] = 1 + r(DIM)
    return w


def split_dim(name):
    leaf = name.rsplit(".", 2)[-2]
    if leaf in ("wq", "wk", "wv", "w1", "w3", "output"):
        return 0
    if leaf in ("wo", "w2", "tok_embeddings"):
        return 1
    return None


def rms(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * w


def meta_forward(w, tokens):
    seq = tokens.shape[0]
    freqs = 1.0 / (THETA ** (torch.arange(0, HEAD, 2)[: HEAD // 2].float() / HEAD))
    freqs_cis = torch.polar(torch.ones(seq, HEAD // 2), torch.outer(torch.arange(seq).float(), freqs))

    def rotary(x):  # x: (seq, heads, head)
        xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(xc * freqs_cis[:, None, :]).flatten(2)

    h = w["tok_embeddings.weight"][tokens]
    mask = torch.full((seq, seq), float("-inf")).triu(1)
    for i in range(N_LAYERS):
        p = f"layers.{i}."
        x = rms(h, w[p + "attention_norm.weight"])
        q = (x @ w[p + "attention.wq.weight"].T).view(seq, N_HEADS, HEAD)
        k = (x @ w[p + "attention.wk.weight"].T).view(seq, N_KV, HEAD)
        v = (x @ w[p + "attention.wv.weight"].T).view(seq, N_KV, HEAD)
        q, k = rotary(q), rotary(k)
        k = k.repeat_interleave(N_HEADS // N_KV, dim=1)
        v = v.repeat_interleave(N_HEADS // N_KV, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(HEAD) + mask
        o = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(seq, -1)
        h = h + o @ w[p + "attention.wo.weight"].T
        x = rms(h, w[p + "ffn_norm.weight"])
        ff = torch.nn.functional.silu(x @ w[p + "feed_forward.w1.weight"].T) * (x @ w[p + "feed_forward.w3.weight"].T)
        h = h + ff @ w[p + "feed_forward.w2.weight"].T
    return rms(h, w["norm.weight"]) @ w["output.weight"].T


def make(d):
    w = random_weights()
    for s in range(2):
        shard = {}
        for k, t in w.items():
            dim = split_dim(k)
            shard[k] = t.clone() if dim is None else t.chunk(2, dim=dim)[s].clone()
        shard["rope.freqs"] = torch.zeros(HEAD // 2)
        torch.save(shard, f"{d}/consolidated.{s:02d}.pth")
    params = {"dim": DIM, "n_layers": N_LAYERS, "n_heads": N_HEADS, "n_kv_heads": N_KV, "vocab_size": -1,
              "multiple_of": MULTIPLE_OF, "norm_eps": EPS}
    with open(f"{d}/params.json", "w") as f:
        json.dump(params, f)
    tokens = torch.randint(0, VOCAB, (12,), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        torch.save({"tokens": tokens, "logits": meta_forward(w, tokens)}, f"{d}/reference.pt")
    print(json.dumps({"hidden": HIDDEN}))


def check(d, hf):
    from transformers import LlamaForCausalLM

    ref = torch.load(f"{d}/reference.pt")
    model = LlamaForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(ref["tokens"][None]).logits[0]
    diff = (logits - ref["logits"]).abs().max().item()
    print(json.dumps({"max_abs_diff": diff, "ref_abs_max": ref["logits"].abs().max().item()}))


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[1] == "make":
        make(sys.argv[2])
    else:
        check(sys.argv[2], sys.argv[3])
