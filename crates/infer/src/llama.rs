//! [`CausalLm`] for `ferrotune-model`'s Llama: a base checkpoint (or a merged one) plus any number of
//! unmerged LoRA adapters, chosen per batch row on every forward.

use crate::error::{InferError, Result};
use crate::model::{CausalLm, KvCache};
use ferrotune_core::DType;
use ferrotune_model::{AdapterSelection, AttentionMask, LlamaConfig, LlamaForCausalLM};
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

/// A loaded Llama ready for generation.
pub struct LlamaEngineModel {
    model: LlamaForCausalLM,
    _vs: tch::nn::VarStore,
    cfg: LlamaConfig,
    device: Device,
    adapters: Vec<String>,
}

impl std::fmt::Debug for LlamaEngineModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaEngineModel")
            .field("layers", &self.cfg.num_hidden_layers)
            .field("adapters", &self.adapters)
            .finish()
    }
}

impl LlamaEngineModel {
    /// Loads the HF checkpoint in `dir` (weights in `dtype` on `device`) and each `(name, PEFT dir)` adapter.
    pub fn load(
        dir: &Path,
        dtype: DType,
        device: Device,
        adapters: &[(String, PathBuf)],
    ) -> Result<Self> {
        let load_err = |what: &Path, e: &dyn std::fmt::Display| InferError::Load {
            what: what.display().to_string(),
            reason: e.to_string(),
        };
        let (mut model, vs, cfg) =
            // 16-bit or pre-quantized (`ferrotune quantize`) directories alike.
            ferrotune_quant::load_model(dir, dtype, device, None)
                .map(|(loaded, _)| loaded)
                .map_err(|e| load_err(dir, &e))?;
        model.set_training(false);
        let mut names = Vec::new();
        for (name, path) in adapters {
            model
                .load_lora(name, path, Some(ferrotune_model::kind_of(dtype)))
                .map_err(|e| load_err(path, &e))?;
            names.push(name.clone());
        }
        tracing::info!(
            model = %dir.display(),
            layers = cfg.num_hidden_layers,
            adapters = ?names,
            "model loaded"
        );
        Ok(LlamaEngineModel {
            model,
            _vs: vs,
            cfg,
            device,
            adapters: names,
        })
    }

    /// The model's config.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }
}

fn selection(rows: &[Option<String>]) -> AdapterSelection {
    match rows.first() {
        None | Some(None) if rows.iter().all(Option::is_none) => AdapterSelection::None,
        Some(Some(a)) if rows.iter().all(|r| r.as_deref() == Some(a)) => {
            AdapterSelection::Single(a.clone())
        }
        _ => AdapterSelection::PerRow(rows.to_vec()),
    }
}

impl CausalLm for LlamaEngineModel {
    fn forward(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        mask: &Tensor,
        cache: &mut KvCache,
        adapters: &[Option<String>],
    ) -> Result<Tensor> {
        let _g = tch::no_grad_guard();
        self.model.set_adapter(selection(adapters));
        let mut kv = ferrotune_model::KvCache {
            layers: std::mem::take(&mut cache.layers),
        };
        // A decoded token whose row has no padding attends to every cached position: no mask at all, so
        // attention skips building and applying one in every layer.
        let t = input_ids.size()[1];
        let mask = if t == 1 && mask.all().int64_value(&[]) != 0 {
            AttentionMask::Causal
        } else {
            AttentionMask::Explicit(mask.shallow_clone())
        };
        let hidden = self
            .model
            .forward_hidden(input_ids, positions, &mask, Some(&mut kv));
        cache.layers = kv.layers;
        // The engine samples from the last position only: the vocabulary projection skips the others.
        Ok(self.model.logits(&hidden.narrow(1, t - 1, 1)))
    }

    fn n_layers(&self) -> usize {
        self.cfg.num_hidden_layers as usize
    }

    fn max_context(&self) -> usize {
        self.cfg.max_position_embeddings as usize
    }

    fn device(&self) -> Device {
        self.device
    }

    fn adapters(&self) -> Vec<String> {
        self.adapters.clone()
    }
}
