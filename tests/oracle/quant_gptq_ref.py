"""Reference GPTQ and round-to-nearest int4, written in numpy (float64) from the GPTQ paper (Frantar et al.
2022, Algorithm 1 with lazy batch updates) and its reference code's quantizer, independently of ferrotune.

usage: quant_gptq_ref.py IN.safetensors OUT.safetensors GROUP_SIZE BLOCK_SIZE PERCDAMP ACT_ORDER(0|1)

IN holds `weight` [out, in] and `x` [n, t, in] (n calibration samples of t tokens). OUT gets, for GPTQ:
`gptq_codes` [out, in] (int codes in the original column order), `gptq_scales`, `gptq_zeros` [out, groups]
(groups in processing order), `gptq_g_idx` [in] (group of each original column), `gptq_loss` [1]; for RTN
at the same group size: `rtn_codes`, `rtn_scales`, `rtn_zeros`.
"""
import sys

import numpy as np
from safetensors.numpy import load_file, save_file

MAXQ = 15  # 4 bits


def find_params(w):
    """Per-row min/max asymmetric params; the range always includes 0 (an all-zero row gets [-1, 1])."""
    xmin = np.minimum(w.min(axis=1), 0.0)
    xmax = np.maximum(w.max(axis=1), 0.0)
    both = (xmin == 0) & (xmax == 0)
    xmin[both] = -1.0
    xmax[both] = 1.0
    scale = (xmax - xmin) / MAXQ
    zero = np.round(-xmin / scale)
    return scale, zero


def quant(w, scale, zero):
    """Integer codes of a column (or [rows, k] block with per-row params)."""
    if w.ndim == 2:
        scale, zero = scale[:, None], zero[:, None]
    return np.clip(np.round(w / scale) + zero, 0, MAXQ)


def hessian(x):
    """H = 2/n Σ_samples Σ_tokens x xᵀ, accumulated one sample at a time as the paper's code does."""
    cols = x.shape[-1]
    h = np.zeros((cols, cols))
    n = 0
    for s in range(x.shape[0]):
        inp = x[s].reshape(-1, cols).T  # [cols, tokens]
        h *= n / (n + 1)
        n += 1
        inp = np.sqrt(2.0 / n) * inp
        h += inp @ inp.T
    return h


def gptq(w, h, group_size, block_size, percdamp, act_order):
    w = w.copy()
    h = h.copy()
    rows, cols = w.shape
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    perm = None
    if act_order:
        perm = np.argsort(-np.diag(h), kind="stable")
        w = w[:, perm]
        h = h[perm][:, perm]
    damp = percdamp * np.mean(np.diag(h))
    h[np.arange(cols), np.arange(cols)] += damp
    # Upper Cholesky factor of H^-1.
    hinv = np.linalg.inv(h)
    hinv = np.linalg.cholesky(hinv).T
    codes = np.zeros_like(w)
    scales, zeros = [], []
    loss = 0.0
    scale = zero = None
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        count = i2 - i1
        w1 = w[:, i1:i2].copy()
        err1 = np.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(count):
            col = i1 + i
            if col % group_size == 0:
                scale, zero = find_params(w[:, col:col + group_size])
                scales.append(scale)
                zeros.append(zero)
            wc = w1[:, i]
            d = hinv1[i, i]
            q = quant(wc, scale, zero)
            codes[:, col] = q
            deq = scale * (q - zero)
            e = (wc - deq) / d
            loss += np.sum(e ** 2) / 2
            w1[:, i:] -= np.outer(e, hinv1[i, i:])
            err1[:, i] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    g_idx = np.arange(cols) // group_size
    if perm is not None:
        inv = np.argsort(perm, kind="stable")
        codes = codes[:, inv]
        g_idx = inv // group_size
    return codes, np.stack(scales, 1), np.stack(zeros, 1), g_idx, loss


def rtn(w, group_size):
    cols = w.shape[1]
    codes, scales, zeros = [], [], []
    for g in range(0, cols, group_size):
        wg = w[:, g:g + group_size]
        s, z = find_params(wg)
        codes.append(quant(wg, s, z))
        scales.append(s)
        zeros.append(z)
    return np.concatenate(codes, 1), np.stack(scales, 1), np.stack(zeros, 1)


def main():
    src, dst = sys.argv[1], sys.argv[2]
    group_size, block_size = int(sys.argv[3]), int(sys.argv[4])
    percdamp, act_order = float(sys.argv[5]), sys.argv[6] == "1"
    t = load_file(src)
    w = t["weight"].astype(np.float64)
    x = t["x"].astype(np.float64)
    h = hessian(x)
    codes, scales, zeros, g_idx, loss = gptq(w, h, group_size, block_size, percdamp, act_order)
    rc, rs, rz = rtn(w, group_size)
    out = {
        "gptq_codes": codes.astype(np.int64),
        "gptq_scales": scales,
        "gptq_zeros": zeros.astype(np.int64),
        "gptq_g_idx": g_idx.astype(np.int64),
        "gptq_loss": np.array([loss]),
        "rtn_codes": rc.astype(np.int64),
        "rtn_scales": rs,
        "rtn_zeros": rz.astype(np.int64),
    }
    # Fancy indexing can leave arrays Fortran-ordered; safetensors stores raw C-order bytes.
    save_file({k: np.ascontiguousarray(v) for k, v in out.items()}, dst)


if __name__ == "__main__":
    main()
