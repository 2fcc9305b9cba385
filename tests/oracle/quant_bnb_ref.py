"""Reference implementation of bitsandbytes' weight quantization in numpy (bitsandbytes itself needs CUDA).

Transcribed from bitsandbytes' algorithm: `quantize_4bit` / `dequantize_4bit` (csrc/kernels.cu
kQuantizeBlockwise with the dQuantizeNF4 / dQuantizeFP4 decision trees, kDequantizeBlockwise), double
quantization (`compress_statistics=True`: absmax minus its mean, `quantize_blockwise` with blocks of 256 and
`create_dynamic_map(signed=True)`, kernel `dQuantize<0>`), and `int8_vectorwise_quant` /
`int8_vectorwise_dequant`. The dynamic map is built with torch ops exactly as `create_dynamic_map` does
(torch.linspace in fp32); everything else is numpy in fp32.

usage: quant_bnb_ref.py IN.safetensors OUT.safetensors --variants nf4,nf4-dq,fp4,fp4-dq,int8,int8-t0.05
       [--block 64]
For every variant V and fp32 tensor NAME of IN it writes, for 4-bit: V/NAME.packed (uint8), V/NAME.absmax
(fp32, or uint8 with double quant plus V/NAME.nested_absmax, .nested_offset, .nested_code), V/NAME.deq
(fp32, the dequantized weight); for int8: V/NAME.cb (int8), .scb (fp32), .cols (int64), .deq (fp32, outlier
columns restored).
"""

import argparse

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

F = np.float32

# functional.get_4bit_type("nf4")
NF4 = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0], dtype=F)

# functional.get_4bit_type("fp4"): data.div_(data.abs().max()) in fp32
_fp4 = np.array([0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, -0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0],
                dtype=F)
FP4 = (_fp4 / np.abs(_fp4).max()).astype(F)


def tree(x, t, hi, lo):
    """One node of a CUDA decision tree: `if (x > t) hi else lo` (NaN goes to lo)."""
    return np.where(x > F(t), hi, lo)


def quantize_nf4(x):
    """dQuantizeNF4, node by node."""
    return tree(x, 0.03979014977812767,
                tree(x, 0.3893125355243683,
                     tree(x, 0.6427869200706482,
                          tree(x, 0.8614784181118011, 0b1111, 0b1110),
                          tree(x, 0.5016634166240692, 0b1101, 0b1100)),
                     tree(x, 0.2035212516784668,
                          tree(x, 0.2920137718319893, 0b1011, 0b1010),
                          tree(x, 0.1202552504837513, 0b1001, 0b1000))),
                tree(x, -0.33967943489551544,
                     tree(x, -0.13791173323988914,
                          tree(x, -0.045525018125772476, 0b0111, 0b0110),
                          tree(x, -0.23460740596055984, 0b0101, 0b0100)),
                     tree(x, -0.6106329262256622,
                          tree(x, -0.4599952697753906, 0b0011, 0b0010),
                          tree(x, -0.8480964004993439, 0b0001, 0b0000)))).astype(np.uint8)


def quantize_fp4(x):
    """dQuantizeFP4, node by node."""
    sign = np.where(x < 0, 0b1000, 0b0000)
    a = np.abs(x)
    mag = tree(a, 0.29166667,
               tree(a, 0.583333, tree(a, 0.8333333, 0b0011, 0b0010), tree(a, 0.4166667, 0b101, 0b100)),
               tree(a, 0.0859375, tree(a, 0.20833333, 0b0111, 0b0110), tree(a, 0.00260417, 0b0001, 0b0000)))
    return (mag + sign).astype(np.uint8)


def create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8):
    """bitsandbytes.functional.create_dynamic_map, as written there (torch fp32 linspace)."""
    data = []
    non_sign_bits = total_bits - 1
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    for i in range(max_exponent_bits):
        fraction_items = int(2 ** (i + non_sign_bits - max_exponent_bits) + 1 if signed
                             else 2 ** (i + non_sign_bits - max_exponent_bits + 1) + 1)
        boundaries = torch.linspace(0.1, 1, fraction_items, dtype=torch.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    assert additional_items == 0
    data.append(0)
    data.append(1.0)
    assert len(data) == 2 ** total_bits
    data.sort()
    return np.array(data, dtype=F)


def d_quantize(code, x):
    """dQuantize<STOCHASTIC=0>: binary search over the 256-entry code, then midpoint rounding (fp32)."""
    pivot, upper_pivot, lower_pivot = 127, 255, 0
    lower, upper = F(-1.0), F(1.0)
    val = code[pivot]
    i = 64
    while i > 0:
        if x > val:
            lower_pivot, lower = pivot, val
            pivot += i
        else:
            upper_pivot, upper = pivot, val
            pivot -= i
        val = code[pivot]
        i >>= 1
    if upper_pivot == 255:
        upper = code[upper_pivot]
    if lower_pivot == 0:
        lower = code[lower_pivot]
    if x > val:
        midpoint = F((upper + val) * F(0.5))
        return upper_pivot if x > midpoint else pivot
    midpoint = F((lower + val) * F(0.5))
    return lower_pivot if x < midpoint else pivot


def blocks(x, block):
    """Flat fp32 values as [nblocks, block], the last block zero padded (the kernel's load with 0 fill)."""
    flat = x.reshape(-1).astype(F)
    nb = -(-flat.size // block)
    out = np.zeros(nb * block, dtype=F)
    out[: flat.size] = flat
    return out.reshape(nb, block)


def scale(x, block):
    """Per-block absmax and values times the reciprocal of their absmax (kernel: 1.0f / absmax, then x *)."""
    b = blocks(x, block)
    absmax = np.abs(b).max(axis=1).astype(F)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = (F(1.0) / absmax).astype(F)
        return absmax, (b * inv[:, None]).astype(F)


def quantize_blockwise(x, code, block=256):
    absmax, s = scale(x, block)
    q = np.array([d_quantize(code, v) for v in s.reshape(-1)], dtype=np.uint8)[: x.size]
    return q, absmax


def dequantize_blockwise(q, absmax, code, block=256):
    vals = code[q.astype(np.int64)]
    return (blocks(vals, block) * absmax[:, None]).astype(F).reshape(-1)[: q.size]


def quantize_4bit(w, quant_type, block, double_quant):
    n = w.size
    absmax, s = scale(w, block)
    with np.errstate(invalid="ignore"):
        c = (quantize_nf4 if quant_type == "nf4" else quantize_fp4)(s).reshape(-1)
    packed = ((c[0::2] << 4) | c[1::2]).astype(np.uint8)[: (n + 1) // 2]
    out = {"packed": packed}
    if double_quant:
        # offset = absmax.mean(): accumulated in float64, rounded once to fp32.
        offset = F(absmax.astype(np.float64).mean())
        code = create_dynamic_map(signed=True)
        q, absmax2 = quantize_blockwise((absmax - offset).astype(F), code, 256)
        out.update(absmax=q, nested_absmax=absmax2, nested_offset=np.array([offset], dtype=F),
                   nested_code=code)
        absmax = (dequantize_blockwise(q, absmax2, code, 256) + offset).astype(F)
    else:
        out["absmax"] = absmax
    table = NF4 if quant_type == "nf4" else FP4
    codes = np.stack([packed >> 4, packed & 0xF], axis=1).reshape(-1)[:n]
    deq = (blocks(table[codes.astype(np.int64)], block) * absmax[:, None]).astype(F).reshape(-1)[:n]
    out["deq"] = deq.reshape(w.shape)
    return out


def int8_vectorwise_quant(a, threshold):
    """bitsandbytes' int8_vectorwise_quant (default torch implementation) on the weight [out, in]."""
    a = a.astype(F).copy()
    cols = np.zeros(0, dtype=np.int64)
    if threshold > 0.0:
        outliers = np.abs(a) >= F(threshold)
        if outliers.any():
            cols = np.argwhere(outliers.any(axis=0)).reshape(-1).astype(np.int64)
            a[outliers] = 0
    row_stats = np.abs(a).max(axis=1).astype(F)
    # 127.0 / row_stats is evaluated by torch as row_stats.reciprocal() * 127.0
    s = ((F(1.0) / row_stats).astype(F) * F(127.0)).astype(F)
    cb = np.round(a * s[:, None]).astype(np.int8)
    if a.shape[0] > 1 and cols.size:
        cb[:, cols] = 0
    return cb, row_stats, cols


def int8_vectorwise_dequant(cb, stats):
    return ((cb.astype(F) * stats.reshape(-1, 1)).astype(F) * F(7.874015718698502e-3)).astype(F)


def run_variant(variant, w, block):
    """`nf4`, `nf4-dq`, `fp4`, `fp4-dq`, `int8` or `int8-t<threshold>` of one fp32 weight: {field: array}."""
    if variant.startswith("int8"):
        threshold = float(variant[len("int8-t"):]) if variant.startswith("int8-t") else 0.0
        cb, scb, cols = int8_vectorwise_quant(w, threshold)
        deq = int8_vectorwise_dequant(cb, scb)
        if cols.size:
            deq[:, cols] = w[:, cols]
        return {"cb": cb, "scb": scb, "cols": cols, "deq": deq}
    quant_type, _, dq = variant.partition("-")
    return quantize_4bit(w, quant_type, block, dq == "dq")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("inp")
    p.add_argument("out")
    p.add_argument("--variants", required=True, help="comma list: nf4,nf4-dq,fp4,fp4-dq,int8,int8-t6.0")
    p.add_argument("--block", type=int, default=64)
    a = p.parse_args()
    res = {}
    weights = load_file(a.inp)
    for variant in a.variants.split(","):
        for name, w in weights.items():
            for k, v in run_variant(variant, w, a.block).items():
                res[f"{variant}/{name}.{k}"] = np.ascontiguousarray(v)
    save_file(res, a.out)
    print(f"{len(res)} tensors")


if __name__ == "__main__":
    main()
