//! LLM.int8-style weights: bitsandbytes' `int8_vectorwise_quant` applied to the weight [out, in] — int8 per
//! output row, `round(w · (127 / absmax_row))` (the scale rounded as torch's `reciprocal() * 127`), fp32 row absmax (`SCB`) — and `int8_vectorwise_dequant`
//! (`q · SCB · (1/127)`). With a threshold, elements with |w| ≥ threshold are left out of the row absmax, the
//! input columns holding one are zeroed in the int8 matrix and kept in 16-bit, multiplied separately.
//! (bitsandbytes applies the threshold to activation columns at run time because it also quantizes the
//! activations; ferrotune dequantizes the weight and multiplies in 16-bit, so the split is on the weight.)

use tch::{Kind, Tensor};

/// `7.874015718698502e-3`, bitsandbytes' 1/127 in `int8_vectorwise_dequant`.
pub const INV_127: f64 = 7.874_015_718_698_502e-3;

/// An int8 weight.
#[derive(Debug)]
pub struct Int8Weight {
    /// int8 [out, in] (outlier columns zero).
    pub cb: Tensor,
    /// fp32 [out] row absmax.
    pub scb: Tensor,
    /// int64 [k] outlier input columns (empty without a threshold or when none).
    pub outlier_cols: Tensor,
    /// [out, k] original values of the outlier columns, in the compute dtype.
    pub outliers: Tensor,
}

/// Quantizes `w` [out, in] (any float kind). The threshold comparison is done in `w`'s own dtype, as
/// bitsandbytes does.
pub fn quantize_int8(w: &Tensor, threshold: Option<f32>, outlier_kind: Kind) -> Int8Weight {
    let _g = tch::no_grad_guard();
    let dev = w.device();
    let (out_f, _) = (w.size()[0], w.size()[1]);
    let mut a = w.to_kind(Kind::Float);
    let mut cols = Tensor::zeros([0], (Kind::Int64, dev));
    if let Some(t) = threshold.filter(|t| *t > 0.0) {
        let outl = w.abs().ge(t as f64);
        if bool::try_from(outl.any()).unwrap_or(false) {
            cols = outl.any_dim(0, false).nonzero().reshape([-1]);
            a = a.masked_fill(&outl, 0.0);
        }
    }
    let scb = a.abs().amax([1i64].as_slice(), false);
    // torch evaluates `127.0 / row_stats` as `row_stats.reciprocal() * 127.0` (Tensor.__rtruediv__).
    let scale = scb.reciprocal() * 127.0;
    let mut cb = (&a * scale.unsqueeze(1))
        .round()
        .nan_to_num(0.0, None::<f64>, None::<f64>)
        .to_kind(Kind::Int8);
    let k = cols.numel() as i64;
    let outliers = if k > 0 {
        let _ = cb.index_fill_(1, &cols, 0);
        w.index_select(1, &cols).to_kind(outlier_kind)
    } else {
        Tensor::zeros([out_f, 0], (outlier_kind, dev))
    };
    Int8Weight {
        cb,
        scb,
        outlier_cols: cols,
        outliers,
    }
}

impl Int8Weight {
    /// `int8_vectorwise_dequant`: `(q · SCB) · (1/127)` in fp32, outlier columns zero.
    pub fn dequantize_int8_part(&self) -> Tensor {
        dequant_rows(&self.cb, &self.scb)
    }

    /// The full dense weight in fp32 (outlier columns restored).
    pub fn dequantize_f32(&self) -> Tensor {
        let _g = tch::no_grad_guard();
        let d = self.dequantize_int8_part();
        if self.outlier_cols.numel() > 0 {
            d.index_copy(1, &self.outlier_cols, &self.outliers.to_kind(Kind::Float))
        } else {
            d
        }
    }

    /// `x @ Wᵀ` in `kind`: the int8 part dequantized, plus the 16-bit outlier columns multiplied separately.
    pub fn matmul(&self, x: &Tensor, kind: Kind) -> Tensor {
        let x = x.to_kind(kind);
        // Dequantized again in the backward rather than kept for it (`recompute`).
        let (cb, scb) = (self.cb.shallow_clone(), self.scb.shallow_clone());
        let y =
            crate::recompute::matmul_recomputing(&x, move || dequant_rows(&cb, &scb).to_kind(kind));
        if self.outlier_cols.numel() > 0 {
            let xo = x.index_select(-1, &self.outlier_cols);
            y + xo.matmul(&self.outliers.to_kind(kind).tr())
        } else {
            y
        }
    }

    /// Stored tensors, bitsandbytes' names: `{prefix}.weight` (int8), `{prefix}.SCB`, and with outliers
    /// `{prefix}.weight.outlier_cols` / `{prefix}.weight.outliers`.
    pub fn tensors(&self, prefix: &str) -> Vec<(String, Tensor)> {
        let mut v = vec![
            (format!("{prefix}.weight"), self.cb.shallow_clone()),
            (format!("{prefix}.SCB"), self.scb.shallow_clone()),
        ];
        if self.outlier_cols.numel() > 0 {
            v.push((
                format!("{prefix}.weight.outlier_cols"),
                self.outlier_cols.shallow_clone(),
            ));
            v.push((
                format!("{prefix}.weight.outliers"),
                self.outliers.shallow_clone(),
            ));
        }
        v
    }

    /// Rebuilds from [`Int8Weight::tensors`] (`get(suffix)` returns `{prefix}{suffix}`).
    pub fn from_tensors(
        shape: (i64, i64),
        outlier_kind: Kind,
        get: &mut dyn FnMut(&str) -> Option<Tensor>,
    ) -> Result<Self, String> {
        let cb = get(".weight").ok_or("missing tensor `.weight`")?;
        if cb.kind() != Kind::Int8 || cb.size() != [shape.0, shape.1] {
            return Err(format!(
                "int8 weight is {:?} {:?}, expected Int8 {:?}",
                cb.kind(),
                cb.size(),
                [shape.0, shape.1]
            ));
        }
        let scb = get(".SCB")
            .ok_or("missing tensor `.SCB`")?
            .to_kind(Kind::Float);
        if scb.numel() as i64 != shape.0 {
            return Err(format!(
                "SCB has {} values for {} rows",
                scb.numel(),
                shape.0
            ));
        }
        let (outlier_cols, outliers) = match get(".weight.outlier_cols") {
            Some(c) => {
                let o = get(".weight.outliers").ok_or("missing tensor `.weight.outliers`")?;
                (c.to_kind(Kind::Int64), o.to_kind(outlier_kind))
            }
            None => (
                Tensor::zeros([0], (Kind::Int64, cb.device())),
                Tensor::zeros([shape.0, 0], (outlier_kind, cb.device())),
            ),
        };
        Ok(Int8Weight {
            cb,
            scb,
            outlier_cols,
            outliers,
        })
    }

    pub fn resident_bytes(&self) -> usize {
        self.tensors("")
            .iter()
            .map(|(_, t)| t.numel() * t.kind().elt_size_in_bytes())
            .sum()
    }
}

/// `(q · SCB) · (1/127)` in fp32 for int8 rows `cb` [out, in] and their absmax `scb` [out].
fn dequant_rows(cb: &Tensor, scb: &Tensor) -> Tensor {
    cb.to_kind(Kind::Float) * scb.unsqueeze(1) * INV_127
}
