//! The training loss head fused with its backward: linear (`lm_head`) + shifted cross-entropy, computed chunk
//! by chunk of trained rows, without materialising the `[B·T, V]` logits, their log-softmax and their
//! gradients for the whole batch.
//!
//! Under `no_grad`, for each chunk of rows whose (shifted) label is not −100:
//! `logits = h·Wᵀ` (compute dtype, then fp32 as the plain loss does), `logp = log_softmax(logits)`,
//! `loss += −Σ logp[y]`, `dlogits = (exp(logp) − onehot(y))·scale/denom`, `dh = dlogits·W` and, when `W` is
//! trained, `dW += dlogitsᵀ·h`. Rows labelled −100 contribute nothing and are never multiplied. The
//! gradients then enter autograd through the surrogate `Σ h·dh (+ Σ W·dW)`, whose gradient is exactly
//! `dh` (and `dW`), so the body's backward — plain or activation-checkpointed — runs unchanged.
//!
//! The result equals the plain path (`shifted_ce_sum` on full logits, then `backward`) up to fp32 rounding
//! of the summation order.

use crate::linear::AdapterSelection;
use crate::llama::{shifted_ce_sum, LlamaForCausalLM};
use crate::mask::AttentionMask;
use tch::{Kind, Tensor};

/// Logit elements per chunk (fp32: 16 MiB, small enough that the allocator reuses the same blocks chunk after
/// chunk instead of mapping fresh zeroed pages), i.e. `CHUNK_ELEMENTS / vocab` rows per chunk.
const CHUNK_ELEMENTS: i64 = 1 << 22;

impl LlamaForCausalLM {
    /// The dense `[V, H]` weight the logits use under the current adapter selection, when the fused head
    /// applies: one adapter (or none) for the whole batch, no bias, no unmerged LoRA on `lm_head`, a dense
    /// (not quantized) weight.
    fn fused_head_weight(&self) -> Option<Tensor> {
        let sel = self.state.selection();
        let adapter = match &sel {
            AdapterSelection::None => None,
            AdapterSelection::Single(a) => Some(a.as_str()),
            AdapterSelection::PerRow(_) => return None,
        };
        match &self.lm_head {
            None => Some(self.model.embed_tokens.weight_for(adapter).shallow_clone()),
            Some(l) => {
                if l.bias.is_some() {
                    return None;
                }
                if let Some(a) = adapter {
                    if l.lora.contains_key(a) && !l.merged.iter().any(|m| m == a) {
                        return None;
                    }
                    if let Some(w) = l.modules_to_save.get(a) {
                        return Some(w.shallow_clone());
                    }
                }
                l.weight.dense().map(Tensor::shallow_clone)
            }
        }
    }

    /// Forward + backward of `scale · Σ CE(shifted labels) / denom` (labels −100 ignored), accumulating into
    /// `.grad` of every tensor that requires grad; returns the detached loss (`scale · sum / denom`).
    ///
    /// Same value and gradients as `forward_backward` with a `shifted_ce_sum` closure, but the loss head is
    /// the chunked fused one (see the module docs) whenever the head allows it.
    pub fn forward_backward_ce(
        &self,
        input_ids: &Tensor,
        position_ids: &Tensor,
        mask: &AttentionMask,
        labels: &Tensor,
        denom: f64,
        scale: f64,
    ) -> Tensor {
        match self.fused_head_weight() {
            Some(w) => self.forward_backward_hidden(input_ids, position_ids, mask, &mut |h| {
                let (loss, surrogate) = fused_ce_surrogate(h, &w, labels, denom, scale);
                if surrogate.requires_grad() {
                    surrogate.backward();
                }
                loss
            }),
            None => self.forward_backward(input_ids, position_ids, mask, &mut |logits| {
                let (sum, _) = shifted_ce_sum(logits, labels);
                (sum / denom) * scale
            }),
        }
    }

    /// The fused loss head on final hidden states `h` (inside an autograd graph), when the head allows it
    /// (else `None`: use the logits): `(loss, surrogate)` as [`fused_ce_surrogate`], for callers that run
    /// the backward themselves (e.g. `Tensor::run_backward` in a sharded recipe).
    pub fn fused_ce_head(
        &self,
        h: &Tensor,
        labels: &Tensor,
        denom: f64,
        scale: f64,
    ) -> Option<(Tensor, Tensor)> {
        let w = self.fused_head_weight()?;
        Some(fused_ce_surrogate(h, &w, labels, denom, scale))
    }
}

/// The fused loss head on final hidden states `h` [B,T,H] (part of an autograd graph) and logit weight `w`
/// [V,H]: returns `scale · Σ CE / denom`, detached (fp32 scalar), and the surrogate scalar `Σ h·dh (+ Σ w·dW)`
/// whose backward puts exactly the loss's gradients into `h`'s graph (and `w` when it requires grad).
pub fn fused_ce_surrogate(
    h: &Tensor,
    w: &Tensor,
    labels: &Tensor,
    denom: f64,
    scale: f64,
) -> (Tensor, Tensor) {
    let (b, t, hidden) = h.size3().expect("hidden states are [B,T,H]");
    let v = w.size()[0];
    let dev = h.device();
    let g = scale / denom;
    let train_w = w.requires_grad();
    let (loss, dh, dw) = tch::no_grad(|| {
        let hf = h.detach().reshape([-1, hidden]);
        let labels = labels.to_device(dev).to_kind(Kind::Int64);
        let targets = Tensor::cat(
            &[
                labels.narrow(1, 1, t - 1),
                Tensor::full([b, 1], -100, (Kind::Int64, dev)),
            ],
            1,
        )
        .reshape([-1]);
        let rows = targets.ne(-100).nonzero().reshape([-1]);
        let n = rows.size()[0];
        let mut loss = Tensor::zeros([], (Kind::Float, dev));
        let mut dh = Tensor::zeros([b * t, hidden], (h.kind(), dev));
        let mut dw = train_w.then(|| Tensor::zeros([v, hidden], (Kind::Float, dev)));
        let chunk = (CHUNK_ELEMENTS / v.max(1)).max(1);
        let mut start = 0;
        while start < n {
            let len = chunk.min(n - start);
            let idx = rows.narrow(0, start, len);
            let hc = hf.index_select(0, &idx);
            let y = targets.index_select(0, &idx).unsqueeze(1);
            let mut logp = hc
                .matmul(&w.tr())
                .to_kind(Kind::Float)
                .log_softmax(-1, Kind::Float);
            loss -= logp.gather(1, &y, false).sum(Kind::Float);
            // dlogits = (softmax − onehot) · g, in place on the log-probabilities.
            let mut d = logp.exp_();
            let at_target = d.gather(1, &y, false) - 1.0;
            let _ = d.scatter_(1, &y, &at_target);
            let d = (d * g).to_kind(w.kind());
            let _ = dh.index_copy_(0, &idx, &d.matmul(w));
            if let Some(dw) = dw.as_mut() {
                *dw += d.tr().matmul(&hc).to_kind(Kind::Float);
            }
            start += len;
        }
        (loss, dh.reshape([b, t, hidden]), dw)
    });
    let mut surrogate = (h * &dh).sum(Kind::Float);
    if let Some(dw) = dw {
        surrogate += (w * dw.to_kind(w.kind())).sum(Kind::Float);
    }
    ((loss / denom) * scale, surrogate)
}
