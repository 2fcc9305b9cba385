//! Round-to-nearest asymmetric int4 with one scale and zero point per (row, group of input columns) — the
//! baseline GPTQ is measured against — and the min/max quantizer both share (GPTQ's `Quantizer`:
//! `find_params` with the range widened to include 0, `quantize` = `clamp(round(w/s) + z, 0, maxq)`).

use crate::error::QuantError;
use crate::gptq_linear::{num_groups, Int4GroupLinear, INT4_MAXQ};
use tch::{Kind, Tensor};

/// Per-row `(scale, zero)` `[rows]` of the columns of `w` `[rows, cols]`, as GPTQ's `Quantizer.find_params`
/// (asymmetric, per channel): `xmin = min(min(w), 0)`, `xmax = max(max(w), 0)` (an all-zero row gets
/// [-1, 1]), `scale = (xmax − xmin) / maxq`, `zero = round(−xmin / scale)`.
pub fn find_params(w: &Tensor, maxq: i64) -> (Tensor, Tensor) {
    let zero = Tensor::zeros([1], (w.kind(), w.device()));
    let xmin = w.amin([1i64].as_slice(), false).minimum(&zero);
    let xmax = w.amax([1i64].as_slice(), false).maximum(&zero);
    let both = xmin.eq(0.0).logical_and(&xmax.eq(0.0));
    let xmin = xmin.where_self(&both.logical_not(), &(zero.shallow_clone() - 1.0));
    let xmax = xmax.where_self(&both.logical_not(), &(zero + 1.0));
    let scale = (xmax - &xmin) / maxq as f64;
    let z = (-xmin / &scale).round();
    (scale, z)
}

/// Integer codes of `w` `[rows, k]` given per-row `scale`, `zero` `[rows]`: `clamp(round(w/s) + z, 0, maxq)`
/// (round half to even, as torch), in `w`'s kind.
pub fn quantize_codes(w: &Tensor, scale: &Tensor, zero: &Tensor, maxq: i64) -> Tensor {
    let (s, z) = if w.dim() == 2 {
        (scale.unsqueeze(1), zero.unsqueeze(1))
    } else {
        (scale.shallow_clone(), zero.shallow_clone())
    };
    ((w / s).round() + z).clamp(0.0, maxq as f64)
}

/// Round-to-nearest int4 of a dense `[out, in]` weight at `group_size` (groups of consecutive input
/// columns; a layer with fewer columns than `group_size` gets one group).
pub fn quantize_rtn(w: &Tensor, group_size: i64) -> Result<Int4GroupLinear, QuantError> {
    let _g = tch::no_grad_guard();
    let (rows, cols) = w
        .size2()
        .map_err(|_| QuantError::tensor("weight", "expected a [out, in] matrix"))?;
    if group_size < 1 {
        return Err(QuantError::Spec(format!(
            "group size {group_size} must be positive"
        )));
    }
    // f32 arithmetic (f64 kept as is, for exact comparisons).
    let w = match w.kind() {
        Kind::Double => w.shallow_clone(),
        _ => w.to_kind(Kind::Float),
    };
    let groups = num_groups(cols, group_size);
    let mut codes = Vec::with_capacity(groups as usize);
    let mut scales = Vec::with_capacity(groups as usize);
    let mut zeros = Vec::with_capacity(groups as usize);
    for g in 0..groups {
        let start = g * group_size;
        let wg = w.narrow(1, start, group_size.min(cols - start));
        let (s, z) = find_params(&wg, INT4_MAXQ);
        codes.push(quantize_codes(&wg, &s, &z, INT4_MAXQ));
        scales.push(s);
        zeros.push(z);
    }
    let codes = Tensor::cat(&codes, 1);
    let scales = Tensor::stack(&scales, 1).view([rows, groups]);
    let zeros = Tensor::stack(&zeros, 1).view([rows, groups]);
    Int4GroupLinear::from_codes(&codes, &scales, &zeros, None, group_size)
}
