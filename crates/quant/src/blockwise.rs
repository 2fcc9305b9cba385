//! bitsandbytes' blockwise 4-bit quantization (`quantize_4bit` / `dequantize_4bit`): fp32 absmax per block of
//! 64 values, each value scaled by the reciprocal of its block's absmax and coded by the NF4/FP4 tree, two
//! codes per byte (first value in the high nibble); optional double quantization of the absmax (subtract the
//! mean, 8-bit blockwise dynamic quantization in blocks of 256, `quantize_blockwise`).

use crate::codes;
use crate::format::DOUBLE_QUANT_BLOCK_SIZE;
use tch::{Kind, Tensor};

/// The 4-bit data types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FourBit {
    Nf4,
    Fp4,
}

impl FourBit {
    pub fn name(self) -> &'static str {
        match self {
            FourBit::Nf4 => "nf4",
            FourBit::Fp4 => "fp4",
        }
    }
    /// The 16 values by code (fp32).
    pub fn table(self) -> [f32; 16] {
        match self {
            FourBit::Nf4 => codes::NF4_TABLE,
            FourBit::Fp4 => codes::fp4_table(),
        }
    }
}

/// 8-bit blockwise quantized fp32 values (`quantize_blockwise` with the signed dynamic map).
#[derive(Debug)]
pub struct Blockwise8 {
    /// uint8 codes, one per value.
    pub codes: Tensor,
    /// fp32 absmax per block of `block_size`.
    pub absmax: Tensor,
    /// The 256-value code (fp32).
    pub code: Tensor,
    pub block_size: i64,
}

/// The absmax of a 4-bit weight: plain fp32, or double quantized.
#[derive(Debug)]
pub enum Absmax {
    Plain(Tensor),
    /// `absmax = dequantize_blockwise(q) + offset`.
    Double {
        q: Blockwise8,
        offset: Tensor,
    },
}

impl Blockwise8 {
    /// A new handle on the same tensors (no data copied).
    pub fn shallow_clone(&self) -> Self {
        Blockwise8 {
            codes: self.codes.shallow_clone(),
            absmax: self.absmax.shallow_clone(),
            code: self.code.shallow_clone(),
            block_size: self.block_size,
        }
    }
}

impl Absmax {
    /// A new handle on the same tensors (no data copied).
    pub fn shallow_clone(&self) -> Self {
        match self {
            Absmax::Plain(t) => Absmax::Plain(t.shallow_clone()),
            Absmax::Double { q, offset } => Absmax::Double {
                q: q.shallow_clone(),
                offset: offset.shallow_clone(),
            },
        }
    }
}

/// A 4-bit weight: packed codes and its absmax state.
#[derive(Debug)]
pub struct Packed4 {
    pub kind: FourBit,
    /// uint8, `ceil(numel / 2)` bytes.
    pub packed: Tensor,
    pub absmax: Absmax,
    /// The 16 values by code (fp32), bitsandbytes' `quant_map`.
    pub quant_map: Tensor,
    pub block_size: i64,
    /// The original element count.
    pub numel: i64,
}

/// Elements per step of [`Packed4::dequantize`] (16 MiB of fp32).
pub const DEQUANT_CHUNK: i64 = 1 << 22;

/// `x` (any float kind) flattened to fp32 and reshaped to [blocks, block] with zero padding, as the kernels
/// load a partial last block.
fn blocks_of(x: &Tensor, block: i64) -> Tensor {
    let flat = x.to_kind(Kind::Float).reshape([-1]);
    let n = flat.numel() as i64;
    let nb = (n + block - 1) / block;
    let pad = nb * block - n;
    let flat = if pad > 0 {
        Tensor::cat(&[flat, Tensor::zeros([pad], (Kind::Float, x.device()))], 0)
    } else {
        flat
    };
    flat.reshape([nb, block])
}

/// Per-block absmax and the values scaled by its reciprocal (fp32: `x * (1.0f / absmax)`).
fn scale_blocks(x: &Tensor, block: i64) -> (Tensor, Tensor) {
    let b = blocks_of(x, block);
    let absmax = b.abs().amax([-1i64].as_slice(), false);
    let scaled = &b * absmax.reciprocal().unsqueeze(-1);
    (absmax, scaled)
}

/// `quantize_blockwise(x, code=create_dynamic_map(), blocksize)` for fp32 `x`.
pub fn quantize_blockwise8(x: &Tensor, block: i64) -> Blockwise8 {
    let code = codes::dynamic_map_signed().to_device(x.device());
    let n = x.numel() as i64;
    let (absmax, scaled) = scale_blocks(x, block);
    let q = codes::quantize_dynamic(&code, &scaled)
        .reshape([-1])
        .narrow(0, 0, n);
    Blockwise8 {
        codes: q,
        absmax,
        code,
        block_size: block,
    }
}

/// `dequantize_blockwise`: `code[q] * absmax[block]` in fp32, flat.
pub fn dequantize_blockwise8(b: &Blockwise8) -> Tensor {
    let n = b.codes.numel() as i64;
    let vals = b.code.index_select(0, &b.codes.to_kind(Kind::Int64));
    (blocks_of(&vals, b.block_size) * b.absmax.unsqueeze(-1))
        .reshape([-1])
        .narrow(0, 0, n)
}

/// Blocks coded at a time by [`quantize_4bit`]: the fp32 temporaries (the weight in fp32, its magnitudes,
/// the scaled values) then take a few × 4 MiB instead of a few × the weight's fp32 size, which matters for
/// the peak memory of load-time quantization. Blocks are independent, so the result is the same.
pub const QUANT_CHUNK_BLOCKS: i64 = 1 << 14;

/// `quantize_4bit(w, blocksize, compress_statistics=double_quant, quant_type)`.
pub fn quantize_4bit(w: &Tensor, kind: FourBit, block: i64, double_quant: bool) -> Packed4 {
    quantize_4bit_chunked(w, kind, block, double_quant, QUANT_CHUNK_BLOCKS)
}

/// [`quantize_4bit`] coding `chunk_blocks` blocks at a time (the absmax of every block is known before its
/// double quantization, which needs their mean).
pub fn quantize_4bit_chunked(
    w: &Tensor,
    kind: FourBit,
    block: i64,
    double_quant: bool,
    chunk_blocks: i64,
) -> Packed4 {
    let _g = tch::no_grad_guard();
    let n = w.numel() as i64;
    let flat = w.reshape([-1]);
    let chunk = chunk_blocks.max(1) * block;
    let (mut absmaxes, mut code_parts) = (Vec::new(), Vec::new());
    for start in (0..n.max(1)).step_by(chunk as usize) {
        let part = flat.narrow(0, start, chunk.min(n - start));
        let (absmax, scaled) = scale_blocks(&part, block);
        let codes = match kind {
            FourBit::Nf4 => codes::quantize_nf4(&scaled),
            FourBit::Fp4 => codes::quantize_fp4(&scaled),
        };
        absmaxes.push(absmax);
        code_parts.push(codes.reshape([-1]));
    }
    let absmax = Tensor::cat(&absmaxes, 0);
    let codes = Tensor::cat(&code_parts, 0).reshape([-1, 2]);
    let packed = (codes.select(1, 0) * 16 + codes.select(1, 1)).narrow(0, 0, (n + 1) / 2);
    let absmax = if double_quant {
        // offset = absmax.mean(): accumulated in f64 and rounded once, so the value does not depend on a
        // reduction order (torch's fp32 CUDA mean may differ from it in the last bit).
        let offset = absmax
            .to_kind(Kind::Double)
            .mean(Kind::Double)
            .to_kind(Kind::Float);
        let q = quantize_blockwise8(&(&absmax - &offset), DOUBLE_QUANT_BLOCK_SIZE);
        Absmax::Double { q, offset }
    } else {
        Absmax::Plain(absmax)
    };
    Packed4 {
        kind,
        packed: packed.contiguous(),
        absmax,
        quant_map: Tensor::from_slice(&kind.table()).to_device(w.device()),
        block_size: block,
        numel: n,
    }
}

impl Packed4 {
    /// A new handle on the same tensors (no data copied).
    pub fn shallow_clone(&self) -> Self {
        Packed4 {
            kind: self.kind,
            packed: self.packed.shallow_clone(),
            absmax: self.absmax.shallow_clone(),
            quant_map: self.quant_map.shallow_clone(),
            block_size: self.block_size,
            numel: self.numel,
        }
    }

    /// The fp32 absmax per block (dequantizing the double quantization: `dequantize_blockwise(q) + offset`).
    pub fn absmax_f32(&self) -> Tensor {
        match &self.absmax {
            Absmax::Plain(a) => a.shallow_clone(),
            Absmax::Double { q, offset } => dequantize_blockwise8(q) + offset,
        }
    }

    /// `dequantize_4bit`: `quant_map[code] * absmax` in fp32, flat with `numel` values.
    pub fn dequantize_f32(&self) -> Tensor {
        let _g = tch::no_grad_guard();
        let vals = self
            .pair_table()
            .index_select(0, &self.packed.to_kind(Kind::Int))
            .reshape([-1]);
        let vals = vals.narrow(0, 0, self.numel);
        (blocks_of(&vals, self.block_size) * self.absmax_f32().unsqueeze(-1))
            .reshape([-1])
            .narrow(0, 0, self.numel)
    }

    /// [`Packed4::dequantize_f32`] rounded to `kind` (flat). On CUDA one fused kernel
    /// ([`crate::cuda_dequant`]); elsewhere (or when the kernel is unavailable) tensor ops computed
    /// [`DEQUANT_CHUNK`] elements at a time. The same values bit for bit, but the int32 indices and fp32
    /// temporaries stay a few MiB instead of several times the weight (what a QLoRA forward allocates per
    /// projection).
    pub fn dequantize(&self, kind: Kind) -> Tensor {
        if self.packed.device().is_cuda() {
            let _g = tch::no_grad_guard();
            let fused = crate::cuda_dequant::dequantize_4bit(
                &self.packed,
                &self.absmax_f32(),
                &self.quant_map,
                self.numel,
                self.block_size,
                kind,
            );
            if let Some(w) = fused {
                return w;
            }
        }
        self.dequantize_chunked(kind, DEQUANT_CHUNK)
    }

    /// [`Packed4::dequantize`] with at most `chunk` elements (rounded down to whole blocks, at least one)
    /// per step.
    pub fn dequantize_chunked(&self, kind: Kind, chunk: i64) -> Tensor {
        let _g = tch::no_grad_guard();
        let dev = self.packed.device();
        let (bs, n) = (self.block_size, self.numel);
        let pairs = self.pair_table();
        let absmax = self.absmax_f32();
        let out = Tensor::empty([n], (kind, dev));
        let per = (chunk / bs).max(1) * bs;
        let mut start = 0;
        while start < n {
            let len = per.min(n - start);
            // Elements [start, start + len) are bytes [start / 2, ⌈(start + len) / 2⌉): `start` is a
            // multiple of the (even) block size.
            let bytes = self.packed.narrow(0, start / 2, (len + 1) / 2);
            let vals = pairs
                .index_select(0, &bytes.to_kind(Kind::Int))
                .reshape([-1])
                .narrow(0, 0, len);
            let scale = absmax.narrow(0, start / bs, (len + bs - 1) / bs);
            let deq = (blocks_of(&vals, bs) * scale.unsqueeze(-1))
                .reshape([-1])
                .narrow(0, 0, len);
            out.narrow(0, start, len).copy_(&deq);
            start += len;
        }
        out
    }

    /// The [256, 2] table of (high nibble, low nibble) values per packed byte: one gather per byte.
    fn pair_table(&self) -> Tensor {
        let bytes = Tensor::arange(256, (Kind::Int64, self.packed.device()));
        let pair_idx = Tensor::stack(&[bytes.floor_divide_scalar(16), bytes.remainder(16)], 1);
        self.quant_map
            .index_select(0, &pair_idx.reshape([-1]))
            .reshape([256, 2])
    }

    /// The stored tensors (packed codes, absmax state, maps) with bitsandbytes' names under `{key}.`:
    /// `{key}` (uint8 [ceil(n/2), 1]), `{key}.absmax`, `{key}.quant_map`, and with double quant
    /// `{key}.nested_absmax`, `{key}.nested_quant_map`, `{key}.nested_offset` ([1]).
    pub fn tensors(&self, key: &str) -> Vec<(String, Tensor)> {
        let mut v = vec![
            (key.to_string(), self.packed.reshape([-1, 1])),
            (format!("{key}.quant_map"), self.quant_map.shallow_clone()),
        ];
        match &self.absmax {
            Absmax::Plain(a) => v.push((format!("{key}.absmax"), a.shallow_clone())),
            Absmax::Double { q, offset } => {
                v.push((format!("{key}.absmax"), q.codes.shallow_clone()));
                v.push((format!("{key}.nested_absmax"), q.absmax.shallow_clone()));
                v.push((format!("{key}.nested_quant_map"), q.code.shallow_clone()));
                v.push((format!("{key}.nested_offset"), offset.reshape([1])));
            }
        }
        v
    }

    /// Rebuilds from [`Packed4::tensors`] (`get(name)` returns the tensor stored under `{key}{name}`).
    pub fn from_tensors(
        kind: FourBit,
        numel: i64,
        block: i64,
        get: &mut dyn FnMut(&str) -> Option<Tensor>,
    ) -> Result<Self, String> {
        let mut need = |n: &str| get(n).ok_or_else(|| format!("missing tensor `{n}`"));
        let packed = need("")?.reshape([-1]);
        if packed.kind() != Kind::Uint8 || packed.numel() as i64 != (numel + 1) / 2 {
            return Err(format!(
                "packed weight is {:?} with {} bytes, expected uint8 with {}",
                packed.kind(),
                packed.numel(),
                (numel + 1) / 2
            ));
        }
        let quant_map = need(".quant_map")?.to_kind(Kind::Float);
        let absmax = need(".absmax")?;
        let nblocks = (numel + block - 1) / block;
        if absmax.numel() as i64 != nblocks {
            return Err(format!(
                "absmax has {} values, expected {nblocks} (block size {block})",
                absmax.numel()
            ));
        }
        let absmax = if absmax.kind() == Kind::Uint8 {
            let nested = need(".nested_absmax")?.to_kind(Kind::Float);
            let code = need(".nested_quant_map")?.to_kind(Kind::Float);
            let offset = need(".nested_offset")?.to_kind(Kind::Float).squeeze();
            Absmax::Double {
                q: Blockwise8 {
                    codes: absmax,
                    absmax: nested,
                    code,
                    block_size: DOUBLE_QUANT_BLOCK_SIZE,
                },
                offset,
            }
        } else {
            Absmax::Plain(absmax.to_kind(Kind::Float))
        };
        Ok(Packed4 {
            kind,
            packed,
            absmax,
            quant_map,
            block_size: block,
            numel,
        })
    }

    /// Bytes held: packed codes + absmax state + maps.
    pub fn resident_bytes(&self) -> usize {
        self.tensors("")
            .iter()
            .map(|(_, t)| t.numel() * t.kind().elt_size_in_bytes())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Coding a few blocks at a time gives the stored tensors of coding the weight at once (the path
    /// `tests/bnb_reference.rs` checks bit for bit against the numpy bitsandbytes reference), also with a
    /// partial last block and a last chunk shorter than the others.
    #[test]
    fn chunked_4bit_quantization_equals_the_one_shot_one() {
        tch::manual_seed(7);
        let w = Tensor::randn([37, 100], (Kind::Float, tch::Device::Cpu)).to_kind(Kind::BFloat16);
        for kind in [FourBit::Nf4, FourBit::Fp4] {
            for dq in [false, true] {
                let whole = quantize_4bit_chunked(&w, kind, 64, dq, i64::MAX / 128);
                let parts = quantize_4bit_chunked(&w, kind, 64, dq, 5);
                let (a, b) = (whole.tensors("w"), parts.tensors("w"));
                assert_eq!(a.len(), b.len());
                for ((ka, ta), (kb, tb)) in a.iter().zip(&b) {
                    assert_eq!(ka, kb);
                    assert!(ta.equal(tb), "{kind:?} double_quant {dq}: `{ka}` differs");
                }
            }
        }
    }
}
