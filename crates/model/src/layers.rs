//! The small layers of the decoder: token embedding (with per-adapter `modules_to_save` replacements),
//! RMSNorm (fp32 statistics, as transformers) and the SiLU-gated MLP.

use crate::config::LlamaConfig;
use crate::linear::{per_row, AdapterSelection, AdapterState, Linear};
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

/// `embed_tokens`: [vocab, hidden].
#[derive(Debug)]
pub struct Embedding {
    pub weight: Tensor,
    /// `modules_to_save` replacements by adapter name.
    pub modules_to_save: BTreeMap<String, Tensor>,
    pub(crate) state: AdapterState,
}

impl Embedding {
    pub fn load(vs: &tch::nn::Path, vocab: i64, hidden: i64, state: AdapterState) -> Self {
        let w = vs.add(
            "weight",
            Tensor::empty([vocab, hidden], (vs.kind(), vs.device())),
            false,
        );
        Embedding {
            weight: w,
            modules_to_save: BTreeMap::new(),
            state,
        }
    }

    /// The weight used for `adapter` (its replacement if it has one).
    pub fn weight_for(&self, adapter: Option<&str>) -> &Tensor {
        adapter
            .and_then(|a| self.modules_to_save.get(a))
            .unwrap_or(&self.weight)
    }

    pub fn forward(&self, ids: &Tensor) -> Tensor {
        let f = |a: Option<&str>, ids: &Tensor| {
            Tensor::embedding(self.weight_for(a), ids, -1, false, false)
        };
        match self.state.selection() {
            AdapterSelection::None => f(None, ids),
            AdapterSelection::Single(a) => f(Some(&a), ids),
            AdapterSelection::PerRow(rows) => per_row(ids, &rows, f),
        }
    }
}

/// RMSNorm: `weight · (x / √(mean(x²) + eps))` with the statistics in fp32, cast back before the weight.
#[derive(Debug)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    pub fn load(vs: &tch::nn::Path, size: i64, eps: f64) -> Self {
        let w = vs.add(
            "weight",
            Tensor::empty([size], (vs.kind(), vs.device())),
            false,
        );
        RmsNorm { weight: w, eps }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let h = x.to_kind(Kind::Float);
        let var = h
            .pow_tensor_scalar(2)
            .mean_dim([-1i64].as_slice(), true, Kind::Float);
        let h = h * (var + self.eps).rsqrt();
        &self.weight * h.to_kind(kind)
    }
}

/// `down_proj(silu(gate_proj(x)) · up_proj(x))`.
#[derive(Debug)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl Mlp {
    pub fn load(vs: &tch::nn::Path, cfg: &LlamaConfig, state: &AdapterState) -> Self {
        let (h, i, b) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        Mlp {
            gate_proj: Linear::load(&(vs / "gate_proj"), h, i, b, state.clone()),
            up_proj: Linear::load(&(vs / "up_proj"), h, i, b, state.clone()),
            down_proj: Linear::load(&(vs / "down_proj"), i, h, b, state.clone()),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.down_proj
            .forward(&(self.gate_proj.forward(x).silu() * self.up_proj.forward(x)))
    }
}
