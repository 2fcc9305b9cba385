//! GPTQ (Frantar et al. 2022) for one linear layer, as lit-llama's `quantize/gptq.py` / the paper's reference
//! code: the Hessian `H = 2/n Σ x xᵀ` of the layer's calibration inputs, dead inputs zeroed, optional
//! act-order (columns by descending `diag(H)`), dampening by `percdamp · mean(diag(H))`, the upper Cholesky
//! factor of `H⁻¹`, then columns quantized in blocks of `block_size` with the error of each column spread
//! over the not-yet-quantized ones (inside the block at once, to later blocks lazily). Groups of
//! `group_size` columns (in the processing order) get their min/max scale and zero when their first column
//! is reached, from the error-updated weights. The codes are asymmetric int4 packed as [`Int4GroupLinear`].

use crate::error::QuantError;
use crate::gptq_linear::{num_groups, Int4GroupLinear, INT4_MAXQ};
use crate::rtn::{find_params, quantize_codes};
use tch::{Kind, Tensor};

/// GPTQ settings (lit-llama's defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GptqConfig {
    /// Input columns per scale/zero group.
    pub group_size: i64,
    /// Process columns by descending Hessian diagonal; the group of each column is stored as `g_idx`.
    pub act_order: bool,
    /// Dampening, as a fraction of the mean Hessian diagonal.
    pub percdamp: f64,
    /// Columns per lazy-update block.
    pub block_size: i64,
    /// The float kind of the algorithm's arithmetic (`Float` as the reference; `Double` for exact tests).
    pub kind: Kind,
}

impl Default for GptqConfig {
    fn default() -> Self {
        GptqConfig {
            group_size: 128,
            act_order: false,
            percdamp: 0.01,
            block_size: 128,
            kind: Kind::Float,
        }
    }
}

/// The running Hessian of one layer's inputs: after inputs of `n` samples in total,
/// `H = 2/n Σ xᵢ xᵢᵀ` over every token row `xᵢ` (the reference's `add_batch`, which counts a `[B, T, C]`
/// input as `B` samples).
#[derive(Debug)]
pub struct Hessian {
    pub h: Tensor,
    pub nsamples: i64,
}

impl Hessian {
    pub fn new(columns: i64, kind: Kind, device: tch::Device) -> Self {
        Hessian {
            h: Tensor::zeros([columns, columns], (kind, device)),
            nsamples: 0,
        }
    }

    /// Adds one input `[B, T, C]` (or `[T, C]`, one sample).
    pub fn add_batch(&mut self, x: &Tensor) {
        let _g = tch::no_grad_guard();
        let c = self.h.size()[0];
        let batch = if x.dim() == 3 { x.size()[0] } else { 1 };
        let x = x.detach().reshape([-1, c]).to_kind(self.h.kind());
        let total = self.nsamples + batch;
        self.h *= self.nsamples as f64 / total as f64;
        self.nsamples = total;
        let x = x * (2.0 / total as f64).sqrt();
        self.h += x.tr().matmul(&x);
    }
}

/// What GPTQ did to one layer.
#[derive(Debug)]
pub struct GptqOutcome {
    pub layer: Int4GroupLinear,
    /// The reference's reported error `Σ (w − q)² / (2 d²)` over all weights (`d` the diagonal of the
    /// Cholesky factor).
    pub loss: f64,
}

/// Quantizes `w` `[out, in]` with the Hessian `h` `[in, in]` of its inputs.
pub fn gptq_quantize(w: &Tensor, h: &Tensor, cfg: &GptqConfig) -> Result<GptqOutcome, QuantError> {
    let _g = tch::no_grad_guard();
    let (rows, cols) = w
        .size2()
        .map_err(|_| QuantError::tensor("weight", "expected a [out, in] matrix"))?;
    if h.size() != [cols, cols] {
        return Err(QuantError::tensor(
            "hessian",
            format!("shape {:?}, expected [{cols}, {cols}]", h.size()),
        ));
    }
    if cfg.group_size < 1 || cfg.block_size < 1 {
        return Err(QuantError::Spec(format!(
            "group size {} and block size {} must be positive",
            cfg.group_size, cfg.block_size
        )));
    }
    let kind = cfg.kind;
    let dev = w.device();
    let mut w = w.to_kind(kind).copy();
    let mut h = h.to_kind(kind).copy();

    // Dead inputs (never non-zero): H_ii = 1, W[:, i] = 0.
    let dead = h.diagonal(0, 0, 1).eq(0.0);
    let dead_idx = dead.nonzero().view([-1]);
    if dead_idx.numel() > 0 {
        let mut diag = h.diagonal(0, 0, 1);
        let _ = diag.index_fill_(0, &dead_idx, 1.0);
        let _ = w.index_fill_(1, &dead_idx, 0.0);
    }
    let perm = cfg
        .act_order
        .then(|| h.diagonal(0, 0, 1).argsort_stable(true, 0, true));
    if let Some(p) = &perm {
        w = w.index_select(1, p);
        h = h.index_select(0, p).index_select(1, p);
    }
    let damp = cfg.percdamp * f64::try_from(h.diagonal(0, 0, 1).mean(kind))?;
    let mut diag = h.diagonal(0, 0, 1);
    let _ = diag.g_add_scalar_(damp);
    let l = h.f_linalg_cholesky(false).map_err(|e| {
        QuantError::tensor(
            "hessian",
            format!("not positive definite after dampening: {e}"),
        )
    })?;
    let hinv = l.cholesky_inverse(false).linalg_cholesky(true);

    let gs = cfg.group_size;
    let groups = num_groups(cols, gs);
    let codes = Tensor::zeros([rows, cols], (kind, dev));
    let mut scales: Vec<Tensor> = Vec::with_capacity(groups as usize);
    let mut zeros: Vec<Tensor> = Vec::with_capacity(groups as usize);
    let mut loss = Tensor::zeros([], (kind, dev));
    let (mut scale, mut zero) = (
        Tensor::zeros([rows], (kind, dev)),
        Tensor::zeros([rows], (kind, dev)),
    );
    let mut i1 = 0;
    while i1 < cols {
        let i2 = (i1 + cfg.block_size).min(cols);
        let count = i2 - i1;
        let w1 = w.narrow(1, i1, count).copy();
        let err1 = Tensor::zeros([rows, count], (kind, dev));
        let hinv1 = hinv.narrow(0, i1, count).narrow(1, i1, count);
        for i in 0..count {
            let col = i1 + i;
            if col % gs == 0 {
                // From `w`, as the reference: columns of this block before any in-block update.
                let wg = w.narrow(1, col, gs.min(cols - col));
                (scale, zero) = find_params(&wg, INT4_MAXQ);
                scales.push(scale.shallow_clone());
                zeros.push(zero.shallow_clone());
            }
            let wc = w1.select(1, i);
            let d = hinv1.get(i).get(i);
            let q = quantize_codes(&wc, &scale, &zero, INT4_MAXQ);
            codes.select(1, col).copy_(&q);
            let deq = &scale * (q - &zero);
            let e = (&wc - deq) / &d;
            loss += e.square().sum(kind) / 2.0;
            let mut tail = w1.narrow(1, i, count - i);
            tail -= e
                .unsqueeze(1)
                .matmul(&hinv1.get(i).narrow(0, i, count - i).unsqueeze(0));
            err1.select(1, i).copy_(&e);
        }
        if i2 < cols {
            let mut rest = w.narrow(1, i2, cols - i2);
            rest -= err1.matmul(&hinv.narrow(0, i1, count).narrow(1, i2, cols - i2));
        }
        i1 = i2;
    }
    let scales = Tensor::stack(&scales, 1);
    let zeros = Tensor::stack(&zeros, 1);
    let (codes, g_idx) = match &perm {
        Some(p) => {
            let inv = p.argsort_stable(true, 0, false);
            let g = inv.floor_divide_scalar(gs);
            (codes.index_select(1, &inv), Some(g))
        }
        None => (codes, None),
    };
    let layer =
        Int4GroupLinear::from_codes(&codes, &scales, &zeros, g_idx, gs)?.with_method("gptq");
    Ok(GptqOutcome {
        layer,
        loss: f64::try_from(loss)?,
    })
}
