"""Writes a copy of a GGUF v3 file with its 2-D tensors stored as F16 or BF16 (1-D tensors such as the norms
stay F32, as llama.cpp's converters do), so the F16/BF16 paths of `ferrotune convert --from gguf` are checked
on a real model. Parsed and written from the GGUF specification (ggml/docs/gguf.md), independently of the
converter under test; F16 by numpy, BF16 by round-to-nearest-even on the float32 bits (as ggml and torch do).

  acquire_gguf_recast.py IN.gguf OUT.gguf f16|bf16
"""

import struct
import sys

import numpy as np

GGML_F32, GGML_F16, GGML_BF16 = 0, 1, 30
# value type -> struct format of a scalar (8 = string, 9 = array are handled apart)
SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


class Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, fmt):
        vals = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return vals[0] if len(vals) == 1 else vals

    def string(self):
        n = self.take("Q")
        s = self.data[self.pos:self.pos + n].decode()
        self.pos += n
        return s

    def value(self, vtype):
        if vtype == 8:
            return self.string()
        if vtype == 9:
            item, n = self.take("I"), self.take("Q")
            return [self.value(item) for _ in range(n)]
        return self.take(SCALAR[vtype])


def bf16_bits(x):
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def main(src, dst, kind):
    data = open(src, "rb").read()
    r = Reader(data)
    assert r.take("I") == 0x46554747, "not a GGUF file"
    version, n_tensors, n_kv = r.take("I"), r.take("Q"), r.take("Q")
    assert version == 3, version
    kv_start = r.pos
    alignment = 32
    for _ in range(n_kv):
        key, vtype = r.string(), r.take("I")
        val = r.value(vtype)
        if key == "general.alignment":
            alignment = val
    kv_bytes = data[kv_start:r.pos]
    infos = []
    for _ in range(n_tensors):
        name, nd = r.string(), r.take("I")
        dims = [r.take("Q") for _ in range(nd)]
        infos.append((name, dims, r.take("I"), r.take("Q")))
    base = (r.pos + alignment - 1) // alignment * alignment

    out_infos, blobs, offset = [], [], 0
    for name, dims, ttype, off in infos:
        assert ttype == GGML_F32, f"{name}: type {ttype}, expected F32 input"
        count = int(np.prod(dims))
        arr = np.frombuffer(data, dtype="<f4", count=count, offset=base + off)
        if len(dims) == 2:
            ttype = GGML_F16 if kind == "f16" else GGML_BF16
            blob = (arr.astype("<f2") if kind == "f16" else bf16_bits(arr)).tobytes()
        else:
            blob = arr.tobytes()
        out_infos.append((name, dims, ttype, offset))
        pad = (-len(blob)) % alignment
        blobs.append(blob + b"\0" * pad)
        offset += len(blob) + pad

    head = bytearray(struct.pack("<IIQQ", 0x46554747, 3, n_tensors, n_kv)) + kv_bytes
    for name, dims, ttype, off in out_infos:
        enc = name.encode()
        head += struct.pack("<Q", len(enc)) + enc + struct.pack("<I", len(dims))
        head += b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", ttype, off)
    head += b"\0" * ((-len(head)) % alignment)
    with open(dst, "wb") as f:
        f.write(head)
        for b in blobs:
            f.write(b)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
