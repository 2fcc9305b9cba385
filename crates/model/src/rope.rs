//! Rotary position embeddings, computed exactly as transformers does (inverse frequencies in fp32 with the
//! same operation order, cos/sin in fp32 then cast to the compute dtype), for the default, linear, dynamic-NTK
//! and llama3 rope types.

use crate::config::{LlamaConfig, RopeScaling};
use tch::{Device, Kind, Tensor};

/// Inverse frequencies of one model (fp32, on the model's device).
#[derive(Debug)]
pub struct Rotary {
    inv_freq: Tensor,
    head_dim: i64,
    theta: f64,
    scaling: Option<RopeScaling>,
    max_position_embeddings: i64,
}

fn default_inv_freq(base: &Tensor, dim: i64, device: Device) -> Tensor {
    let exps = Tensor::arange_start_step(0, dim, 2, (Kind::Int64, device)).to_kind(Kind::Float)
        / (dim as f64);
    base.pow(&exps).reciprocal()
}

fn scalar_f32(v: f64, device: Device) -> Tensor {
    Tensor::from(v).to_kind(Kind::Float).to_device(device)
}

impl Rotary {
    pub fn new(cfg: &LlamaConfig, device: Device) -> Self {
        let dim = cfg.head_dim;
        let mut inv = default_inv_freq(&scalar_f32(cfg.rope_theta, device), dim, device);
        match &cfg.rope_scaling {
            Some(RopeScaling::Linear { factor }) => inv /= *factor,
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                let old = *original_max_position_embeddings as f64;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                let wavelen = inv.reciprocal() * (2.0 * std::f64::consts::PI);
                let scaled = (&inv / *factor).where_self(&wavelen.gt(low_wavelen), &inv);
                let smooth = (wavelen.reciprocal() * old - *low_freq_factor)
                    / (high_freq_factor - low_freq_factor);
                let smoothed =
                    (smooth.ones_like() - &smooth) * &scaled / *factor + &smooth * &scaled;
                let medium = wavelen
                    .lt(high_wavelen)
                    .logical_not()
                    .logical_and(&wavelen.gt(low_wavelen).logical_not());
                inv = smoothed.where_self(&medium, &scaled);
            }
            _ => {}
        }
        Rotary {
            inv_freq: inv,
            head_dim: dim,
            theta: cfg.rope_theta,
            scaling: cfg.rope_scaling.clone(),
            max_position_embeddings: cfg.max_position_embeddings,
        }
    }

    /// The inverse frequencies used for positions up to `max(position_ids)`: dynamic NTK rescales the base
    /// once the sequence exceeds `max_position_embeddings` (transformers' formula, evaluated in fp32).
    fn inv_freq_for(&self, position_ids: &Tensor) -> Tensor {
        let Some(RopeScaling::Dynamic { factor }) = self.scaling else {
            return self.inv_freq.shallow_clone();
        };
        let seq_len = i64::try_from(position_ids.max()).unwrap_or(0) + 1;
        if seq_len <= self.max_position_embeddings {
            return self.inv_freq.shallow_clone();
        }
        let dev = self.inv_freq.device();
        let dim = self.head_dim as f64;
        let s = Tensor::from(seq_len).to_device(dev);
        let base = ((s * factor) / self.max_position_embeddings as f64 - (factor - 1.0))
            .pow_tensor_scalar(dim / (dim - 2.0))
            * self.theta;
        default_inv_freq(&base, self.head_dim, dev)
    }

    /// The rotation tables for `position_ids` [B,T], each [B,1,T,head_dim] in `kind` (broadcast over heads):
    /// `cos`, and `sin` with its first half negated (the sign of `rotate_half`, see [`apply_rotary`]).
    pub fn cos_sin(&self, position_ids: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        let inv = self.inv_freq_for(position_ids);
        let freqs = position_ids.unsqueeze(-1).to_kind(Kind::Float) * inv;
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        let half = self.head_dim / 2;
        let sin = emb.sin().to_kind(kind);
        let signed_sin = Tensor::cat(
            &[sin.narrow(-1, 0, half).neg(), sin.narrow(-1, half, half)],
            -1,
        );
        (
            emb.cos().to_kind(kind).unsqueeze(1),
            signed_sin.unsqueeze(1),
        )
    }
}

/// Applies the rotation to q or k [B,H,T,D] with the tables of [`Rotary::cos_sin`]: transformers'
/// `x·cos + rotate_half(x)·sin` with `rotate_half(x) = [−x₂, x₁]`, computed as `x·cos + [x₂, x₁]·[−sin₁, sin₂]`
/// (a roll instead of split/negate/concatenate; the same products, so the same bits).
pub fn apply_rotary(x: &Tensor, cos: &Tensor, signed_sin: &Tensor) -> Tensor {
    let half = x.size()[x.dim() - 1] / 2;
    x * cos + x.roll([half], [-1]) * signed_sin
}
