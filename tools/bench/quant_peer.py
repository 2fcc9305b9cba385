"""Python peers of the quantization benchmarks.

  quant_peer.py load DIR            transformers from_pretrained(dtype=bf16) with every weight page touched;
                                    prints its peak RSS (kB)
  quant_peer.py bnb-bytes DIR       bitsandbytes' NF4 + double-quant bytes for the decoder projections of DIR
                                    (its storage layout, computed: bitsandbytes needs CUDA), bytes/param
  quant_peer.py ppl DIR EVAL_JSON VARIANT [ONLY]
                                    perplexity of transformers (fp32) on the token ids of a `ferrotune eval
                                    --json` report, with the projections replaced by the bitsandbytes reference
                                    (tests/oracle/quant_bnb_ref.py) dequantization of VARIANT (fp32: none);
                                    ONLY (e.g. v_proj, mlp): only the projections whose name contains it
"""
import json
import math
import os
import resource
import sys

import numpy as np
import torch
from safetensors import safe_open

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../tests/oracle"))


def load(d):
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16)
    s = 0.0
    for p in m.parameters():
        s += float(p.detach().reshape(-1)[:: 2048].float().sum())
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def bnb_bytes(d):
    files = [f for f in os.listdir(d) if f.endswith(".safetensors")]
    qp = qb = other = 0
    for f in files:
        with safe_open(os.path.join(d, f), "np") as st:
            for k in st.keys():
                n = int(np.prod(st.get_slice(k).get_shape()))
                if "layers." in k and k.endswith("proj.weight"):
                    nb = -(-n // 64)
                    # packed codes, uint8 absmax codes, fp32 nested absmax, 256-entry code, quant map, offset
                    qb += (n + 1) // 2 + nb + 4 * (-(-nb // 256)) + 4 * 256 + 4 * 16 + 4
                    qp += n
                else:
                    other += n
    print(f"quantized params {qp} bytes {qb} ({qb / qp:.4f} bytes/param); other params {other}; "
          f"whole model with the rest in bf16: {(qb + 2 * other) / (qp + other):.4f} bytes/param")


def ppl(d, report, variant, only="proj"):
    from transformers import AutoModelForCausalLM
    import quant_bnb_ref as ref
    m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    if variant != "fp32":
        with torch.no_grad():
            for k, p in m.named_parameters():
                if "layers." in k and k.endswith("proj.weight") and only in k:
                    deq = ref.run_variant(variant, p.detach().numpy().copy(), 64)["deq"]
                    p.copy_(torch.from_numpy(np.asarray(deq).reshape(p.shape)))
    lines = json.load(open(report))["lines"]
    nll, n = 0.0, 0
    with torch.no_grad():
        for line in lines:
            ids = [1] + [t["id"] for t in line["tokens"]]
            x = torch.tensor([ids])
            lp = torch.log_softmax(m(x).logits[0, :-1].float(), -1)
            nll -= float(lp.gather(1, x[0, 1:, None]).sum())
            n += len(ids) - 1
    print(f"{math.exp(nll / n):.6f}")


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "load":
        load(sys.argv[2])
    elif cmd == "bnb-bytes":
        bnb_bytes(sys.argv[2])
    elif cmd == "ppl":
        ppl(*sys.argv[2:6])
    else:
        sys.exit(f"unknown command {cmd}")
