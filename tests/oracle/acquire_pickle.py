"""Oracle for ferrotune's torch.save reader (crates/model/src/convert_pickle.rs).

  acquire_pickle.py DIR   writes DIR/state.pth with torch.save: a nested dict holding a transposed (strided)
                          tensor, a view with a storage offset, bf16 / f16 / int64 tensors, two tensors sharing
                          one storage, and non-tensor entries; and DIR/expected.safetensors with the same
                          tensors made contiguous, keyed by their dotted paths.
"""

import sys

import torch
from safetensors.torch import save_file


def main(d):
    g = torch.Generator().manual_seed(3)
    base = torch.randn(6, 10, generator=g)
    state = {
        "plain": torch.randn(4, 5, generator=g),
        "transposed": base.t(),
        "offset_view": base[2:5, 3:7],
        "nested": {"bf16": torch.randn(3, 8, generator=g).to(torch.bfloat16),
                   "f16": torch.randn(7, generator=g).to(torch.float16),
                   "ids": torch.arange(12, dtype=torch.int64).view(3, 4)},
        "shared_a": base,
        "step": 17,
        "name": "tiny",
        "lr": 0.5,
        "flag": True,
    }
    torch.save(state, f"{d}/state.pth")
    flat = {}

    def walk(prefix, v):
        if isinstance(v, dict):
            for k, x in v.items():
                walk(f"{prefix}.{k}" if prefix else k, x)
        elif isinstance(v, torch.Tensor):
            flat[prefix] = v.contiguous().clone()

    walk("", state)
    save_file(flat, f"{d}/expected.safetensors")


if __name__ == "__main__":
    main(sys.argv[1])
