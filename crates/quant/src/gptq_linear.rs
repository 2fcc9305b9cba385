//! `Int4GroupLinear`: the packed int4 weight shared by GPTQ and round-to-nearest int4.
//!
//! Layout (one projection `[out, in]`): `qweight` u8 `[out, ceil(in/2)]` holding two 4-bit codes per byte
//! (column `2j` in the low nibble, `2j+1` in the high one); `scales` f32 `[out, groups]`; `zeros` u8
//! `[out, groups]` (integer zero points, asymmetric); optional `g_idx` i32 `[in]`, the group of each input
//! column (act-order GPTQ; without it column `c` is in group `c / group_size`). A weight dequantizes as
//! `W[r, c] = scales[r, g(c)] · (code[r, c] − zeros[r, g(c)])`; the forward dequantizes on the fly with tensor
//! ops (CPU and CUDA) and multiplies.

use crate::error::QuantError;
use ferrotune_model::LinearKernel;
use tch::{Kind, Tensor};

/// Bits per code of this format.
pub const INT4_BITS: i64 = 4;
/// The largest int4 code.
pub const INT4_MAXQ: i64 = (1 << INT4_BITS) - 1;

/// A linear weight in packed asymmetric int4 with one scale and zero per (row, group of input columns).
#[derive(Debug)]
pub struct Int4GroupLinear {
    /// u8 `[out, ceil(in/2)]`, two codes per byte (low nibble first).
    pub qweight: Tensor,
    /// f32 `[out, groups]`.
    pub scales: Tensor,
    /// u8 `[out, groups]`, integer zero points in `0..=15`.
    pub zeros: Tensor,
    /// i32 `[in]`: the group of each input column (act-order); `None` = `column / group_size`.
    pub g_idx: Option<Tensor>,
    pub in_features: i64,
    pub out_features: i64,
    /// Input columns per group (the last group may be shorter; a layer narrower than it has one group).
    pub group_size: i64,
    /// Which algorithm chose the codes (`rtn` or `gptq`; the format is the same).
    pub method: &'static str,
}

/// The number of groups of `in_features` columns at `group_size`.
pub fn num_groups(in_features: i64, group_size: i64) -> i64 {
    (in_features + group_size - 1) / group_size
}

impl Int4GroupLinear {
    /// Packs integer `codes` `[out, in]` (values `0..=15`, any integer or float kind) with per-group `scales`
    /// and `zeros` `[out, groups]`.
    pub fn from_codes(
        codes: &Tensor,
        scales: &Tensor,
        zeros: &Tensor,
        g_idx: Option<Tensor>,
        group_size: i64,
    ) -> Result<Self, QuantError> {
        let (out_f, in_f) = codes
            .size2()
            .map_err(|_| QuantError::tensor("codes", "expected a [out, in] matrix"))?;
        if group_size < 1 {
            return Err(QuantError::Spec(format!(
                "group size {group_size} must be positive"
            )));
        }
        let groups = num_groups(in_f, group_size);
        let expect = [out_f, groups];
        for (name, t) in [("scales", scales), ("zeros", zeros)] {
            if t.size() != expect {
                return Err(QuantError::tensor(
                    name,
                    format!("shape {:?}, expected {expect:?}", t.size()),
                ));
            }
        }
        if let Some(g) = &g_idx {
            if g.size() != [in_f] {
                return Err(QuantError::tensor(
                    "g_idx",
                    format!("shape {:?}, expected [{in_f}]", g.size()),
                ));
            }
        }
        let mut c = codes.to_kind(Kind::Uint8);
        if in_f % 2 == 1 {
            c = Tensor::cat(
                &[c, Tensor::zeros([out_f, 1], (Kind::Uint8, codes.device()))],
                1,
            );
        }
        let pairs = c.view([out_f, -1, 2]);
        let lo = pairs.select(2, 0);
        let hi = pairs.select(2, 1);
        let qweight = lo.bitwise_or_tensor(&hi.bitwise_left_shift_tensor_scalar(4));
        Ok(Int4GroupLinear {
            qweight,
            scales: scales.to_kind(Kind::Float),
            zeros: zeros.to_kind(Kind::Uint8),
            g_idx: g_idx.map(|g| g.to_kind(Kind::Int)),
            in_features: in_f,
            out_features: out_f,
            group_size,
            method: "rtn",
        })
    }

    /// The unpacked codes, u8 `[out, in]`.
    pub fn codes(&self) -> Tensor {
        let lo = self.qweight.bitwise_and(15);
        let hi = self.qweight.bitwise_right_shift_tensor_scalar(4);
        Tensor::stack(&[lo, hi], 2)
            .view([self.out_features, -1])
            .narrow(1, 0, self.in_features)
    }

    /// The group of every input column, i64 `[in]`.
    pub fn group_index(&self) -> Tensor {
        match &self.g_idx {
            Some(g) => g.to_kind(Kind::Int64),
            None => Tensor::arange(self.in_features, (Kind::Int64, self.qweight.device()))
                .floor_divide_scalar(self.group_size),
        }
    }

    /// The dense weight `[out, in]` in `kind`: `scale · (code − zero)` computed in f32, rounded once.
    pub fn dequantize(&self, kind: Kind) -> Tensor {
        let g = self.group_index();
        let s = self.scales.index_select(1, &g);
        let z = self.zeros.index_select(1, &g).to_kind(Kind::Float);
        ((self.codes().to_kind(Kind::Float) - z) * s).to_kind(kind)
    }

    /// A new handle on the same tensors (no data copied).
    pub fn shallow_clone(&self) -> Self {
        Int4GroupLinear {
            qweight: self.qweight.shallow_clone(),
            scales: self.scales.shallow_clone(),
            zeros: self.zeros.shallow_clone(),
            g_idx: self.g_idx.as_ref().map(Tensor::shallow_clone),
            ..*self
        }
    }

    /// Resident bytes of the quantized tensors.
    pub fn nbytes(&self) -> i64 {
        let b = |t: &Tensor| t.numel() as i64 * t.kind().elt_size_in_bytes() as i64;
        b(&self.qweight) + b(&self.scales) + b(&self.zeros) + self.g_idx.as_ref().map_or(0, b)
    }

    /// The tensors by checkpoint suffix: `weight` (the packed codes), `scales`, `zeros`, `g_idx`.
    pub fn named_tensors(&self) -> Vec<(&'static str, &Tensor)> {
        let mut v = vec![
            ("weight", &self.qweight),
            ("scales", &self.scales),
            ("zeros", &self.zeros),
        ];
        if let Some(g) = &self.g_idx {
            v.push(("g_idx", g));
        }
        v
    }

    /// Rebuilds a layer from its saved tensors (see [`Int4GroupLinear::named_tensors`]).
    pub fn from_tensors(
        qweight: Tensor,
        scales: Tensor,
        zeros: Tensor,
        g_idx: Option<Tensor>,
        in_features: i64,
        group_size: i64,
    ) -> Result<Self, QuantError> {
        let out_f = qweight.size().first().copied().unwrap_or(0);
        let layer = Int4GroupLinear {
            qweight: qweight.to_kind(Kind::Uint8),
            scales: scales.to_kind(Kind::Float),
            zeros: zeros.to_kind(Kind::Uint8),
            g_idx: g_idx.map(|g| g.to_kind(Kind::Int)),
            in_features,
            out_features: out_f,
            group_size,
            method: "rtn",
        };
        let groups = num_groups(in_features, group_size.max(1));
        let checks = [
            (
                "qweight",
                layer.qweight.size(),
                vec![out_f, (in_features + 1) / 2],
            ),
            ("scales", layer.scales.size(), vec![out_f, groups]),
            ("zeros", layer.zeros.size(), vec![out_f, groups]),
        ];
        for (name, got, want) in checks {
            if got != want || group_size < 1 {
                return Err(QuantError::tensor(
                    name,
                    format!("shape {got:?}, expected {want:?} (in {in_features}, group size {group_size})"),
                ));
            }
        }
        Ok(layer)
    }

    /// The same layer labelled with the algorithm that made it (`rtn`, `gptq`).
    pub fn with_method(mut self, method: &'static str) -> Self {
        self.method = method;
        self
    }

    /// Rebuilds a stored layer of shape (out, in) under `prefix` (keys `{prefix}.weight`, `.scales`,
    /// `.zeros`, optional `.g_idx`); `get` hands out stored tensors by full key.
    pub fn load(
        prefix: &str,
        shape: (i64, i64),
        group_size: i64,
        method: &'static str,
        get: &mut dyn FnMut(&str) -> Option<Tensor>,
    ) -> Result<Self, QuantError> {
        let mut need = |n: &str| {
            get(&format!("{prefix}.{n}")).ok_or_else(|| {
                QuantError::tensor(format!("{prefix}.{n}"), "missing from the checkpoint")
            })
        };
        let (qweight, scales, zeros) = (need("weight")?, need("scales")?, need("zeros")?);
        let g_idx = get(&format!("{prefix}.g_idx"));
        let layer =
            Int4GroupLinear::from_tensors(qweight, scales, zeros, g_idx, shape.1, group_size)
                .map_err(|e| QuantError::tensor(prefix, e.to_string()))?;
        if layer.out_features != shape.0 {
            return Err(QuantError::tensor(
                format!("{prefix}.weight"),
                format!(
                    "{} rows, the config implies {}",
                    layer.out_features, shape.0
                ),
            ));
        }
        Ok(layer.with_method(method))
    }

    /// Moves every tensor to `device`.
    pub fn to_device(&self, device: tch::Device) -> Self {
        Int4GroupLinear {
            qweight: self.qweight.to_device(device),
            scales: self.scales.to_device(device),
            zeros: self.zeros.to_device(device),
            g_idx: self.g_idx.as_ref().map(|g| g.to_device(device)),
            ..*self
        }
    }
}

impl LinearKernel for Int4GroupLinear {
    fn matmul(&self, x: &Tensor) -> Tensor {
        // Dequantized again in the backward rather than kept for it (`recompute`).
        let (w, kind) = (self.shallow_clone(), x.kind());
        crate::recompute::matmul_recomputing(x, move || w.dequantize(kind))
    }
    fn dense_weight(&self, kind: Kind) -> Tensor {
        self.dequantize(kind)
    }
    fn shape(&self) -> (i64, i64) {
        (self.out_features, self.in_features)
    }
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

impl crate::format::QuantKernel for Int4GroupLinear {
    fn method(&self) -> &'static str {
        self.method
    }
    fn tensors(&self, prefix: &str) -> Vec<(String, Tensor)> {
        self.named_tensors()
            .into_iter()
            .map(|(n, t)| (format!("{prefix}.{n}"), t.shallow_clone()))
            .collect()
    }
    fn resident_bytes(&self) -> usize {
        self.nbytes() as usize
    }
}
