//! Vocabulary resize for an extended tokenizer: `embed_tokens` (and an untied `lm_head`) get new rows
//! initialised to the mean of the old rows; shrinking keeps the first rows.

use crate::error::ModelError;
use crate::linear::BaseWeight;
use crate::llama::LlamaForCausalLM;
use tch::{Kind, Tensor};

fn resized(w: &Tensor, n: i64) -> Tensor {
    let _g = tch::no_grad_guard();
    let old = w.size()[0];
    let keep = w.narrow(0, 0, old.min(n));
    let out = if n <= old {
        keep.copy()
    } else {
        let mean = w
            .to_kind(Kind::Float)
            .mean_dim(0, true, Kind::Float)
            .to_kind(w.kind());
        Tensor::cat(&[keep, mean.expand([n - old, w.size()[1]], false)], 0).contiguous()
    };
    out.set_requires_grad(w.requires_grad())
}

impl LlamaForCausalLM {
    /// Resizes the vocabulary to `n` rows (before adapters are attached). The model's fields and
    /// `config.vocab_size` are updated; the var store still names the old tensors, so use
    /// [`LlamaForCausalLM::named_parameters`] (which save and the trainer use) from then on.
    pub fn resize_token_embeddings(&mut self, n: i64) -> Result<(), ModelError> {
        if !self.lora_configs.is_empty() {
            return Err(ModelError::Lora(
                "resize the vocabulary before attaching adapters".into(),
            ));
        }
        if n <= 0 {
            return Err(ModelError::config(
                "vocab_size",
                format!("cannot resize to {n} rows"),
            ));
        }
        self.model.embed_tokens.weight = resized(&self.model.embed_tokens.weight, n);
        if let Some(l) = self.lm_head.as_mut() {
            let BaseWeight::Dense(w) = &l.weight else {
                return Err(ModelError::tensor(
                    "lm_head.weight",
                    "cannot resize a quantized lm_head",
                ));
            };
            l.weight = BaseWeight::Dense(resized(w, n));
        }
        self.config.vocab_size = n;
        Ok(())
    }
}
