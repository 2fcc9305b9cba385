//! The decoder: `LlamaModel` (embeddings, decoder layers, final norm, rotary tables) and `LlamaForCausalLM`
//! (plus `lm_head`, tied to the embeddings when the config says so), forward with masks and KV cache, the
//! causal-LM loss with transformers' semantics, and the parameter listing by checkpoint key.

use crate::attention::Attention;
use crate::cache::KvCache;
use crate::config::LlamaConfig;
use crate::error::ModelError;
use crate::layers::{Embedding, Mlp, RmsNorm};
use crate::linear::{AdapterSelection, AdapterState, BaseWeight, Linear};
use crate::lora::LoraConfig;
use crate::mask::AttentionMask;
use crate::rope::Rotary;
use std::collections::BTreeMap;
use tch::{Kind, Reduction, Tensor};

/// One `model.layers.N`.
#[derive(Debug)]
pub struct DecoderLayer {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
}

impl DecoderLayer {
    pub fn load(vs: &tch::nn::Path, cfg: &LlamaConfig, state: &AdapterState) -> Self {
        DecoderLayer {
            input_layernorm: RmsNorm::load(
                &(vs / "input_layernorm"),
                cfg.hidden_size,
                cfg.rms_norm_eps,
            ),
            self_attn: Attention::load(&(vs / "self_attn"), cfg, state),
            post_attention_layernorm: RmsNorm::load(
                &(vs / "post_attention_layernorm"),
                cfg.hidden_size,
                cfg.rms_norm_eps,
            ),
            mlp: Mlp::load(&(vs / "mlp"), cfg, state),
        }
    }

    pub fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Tensor {
        let h = x + self
            .self_attn
            .forward(&self.input_layernorm.forward(x), cos, sin, mask, cache);
        &h + self.mlp.forward(&self.post_attention_layernorm.forward(&h))
    }

    /// The seven projections with their names relative to the layer (`self_attn.q_proj`, ...).
    pub fn projections_mut(&mut self) -> [(&'static str, &mut Linear); 7] {
        let a = &mut self.self_attn;
        let m = &mut self.mlp;
        [
            ("self_attn.q_proj", &mut a.q_proj),
            ("self_attn.k_proj", &mut a.k_proj),
            ("self_attn.v_proj", &mut a.v_proj),
            ("self_attn.o_proj", &mut a.o_proj),
            ("mlp.gate_proj", &mut m.gate_proj),
            ("mlp.up_proj", &mut m.up_proj),
            ("mlp.down_proj", &mut m.down_proj),
        ]
    }

    pub fn projections(&self) -> [(&'static str, &Linear); 7] {
        let a = &self.self_attn;
        let m = &self.mlp;
        [
            ("self_attn.q_proj", &a.q_proj),
            ("self_attn.k_proj", &a.k_proj),
            ("self_attn.v_proj", &a.v_proj),
            ("self_attn.o_proj", &a.o_proj),
            ("mlp.gate_proj", &m.gate_proj),
            ("mlp.up_proj", &m.up_proj),
            ("mlp.down_proj", &m.down_proj),
        ]
    }
}

/// `model`: embeddings, layers, final norm.
#[derive(Debug)]
pub struct LlamaModel {
    pub embed_tokens: Embedding,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    pub rotary: Rotary,
}

impl LlamaModel {
    pub fn load(vs: &tch::nn::Path, cfg: &LlamaConfig, state: &AdapterState) -> Self {
        let lv = vs / "layers";
        LlamaModel {
            embed_tokens: Embedding::load(
                &(vs / "embed_tokens"),
                cfg.vocab_size,
                cfg.hidden_size,
                state.clone(),
            ),
            layers: (0..cfg.num_hidden_layers)
                .map(|i| DecoderLayer::load(&(&lv / i), cfg, state))
                .collect(),
            norm: RmsNorm::load(&(vs / "norm"), cfg.hidden_size, cfg.rms_norm_eps),
            rotary: Rotary::new(cfg, vs.device()),
        }
    }
}

/// The causal LM. Field names are the checkpoint keys (`model.layers.N.self_attn.q_proj.weight`, `lm_head.weight`).
#[derive(Debug)]
pub struct LlamaForCausalLM {
    pub model: LlamaModel,
    /// `None` when `tie_word_embeddings` (logits use `model.embed_tokens.weight`).
    pub lm_head: Option<Linear>,
    pub config: LlamaConfig,
    /// Recompute each decoder layer in backward (see `forward_backward`).
    pub gradient_checkpointing: bool,
    /// The config of every attached LoRA adapter, by adapter name.
    pub lora_configs: BTreeMap<String, LoraConfig>,
    pub(crate) state: AdapterState,
}

impl LlamaForCausalLM {
    /// Declares every weight in `vs` (uninitialised, in `vs`'s kind and device) under its checkpoint key;
    /// [`crate::load_pretrained`] fills them, [`LlamaForCausalLM::init_weights`] randomises them.
    pub fn load(vs: tch::nn::Path, cfg: &LlamaConfig) -> Result<Self, ModelError> {
        let state = AdapterState::default();
        let model = LlamaModel::load(&(&vs / "model"), cfg, &state);
        let lm_head = (!cfg.tie_word_embeddings).then(|| {
            Linear::load(
                &(&vs / "lm_head"),
                cfg.hidden_size,
                cfg.vocab_size,
                false,
                state.clone(),
            )
        });
        Ok(LlamaForCausalLM {
            model,
            lm_head,
            config: cfg.clone(),
            gradient_checkpointing: false,
            lora_configs: BTreeMap::new(),
            state,
        })
    }

    /// Fills the weights like transformers' init (normal(0, 0.02), norms 1, biases 0), seeded.
    pub fn init_weights(&self, seed: i64) {
        let _g = tch::no_grad_guard();
        tch::manual_seed(seed);
        for (k, mut t) in self.named_parameters() {
            if k.ends_with("norm.weight") {
                let _ = t.fill_(1.0);
            } else if k.ends_with(".bias") {
                let _ = t.zero_();
            } else {
                let _ = t.normal_(0.0, 0.02);
            }
        }
    }

    pub fn adapter_state(&self) -> &AdapterState {
        &self.state
    }

    /// Which adapter(s) the next forwards use.
    pub fn set_adapter(&self, s: AdapterSelection) {
        self.state.set_selection(s)
    }

    /// Training mode turns on LoRA dropout.
    pub fn set_training(&self, t: bool) {
        self.state.set_training(t)
    }

    /// The final hidden states [B,T,H] (after the last norm).
    pub fn forward_hidden(
        &self,
        input_ids: &Tensor,
        position_ids: &Tensor,
        mask: &AttentionMask,
        mut cache: Option<&mut KvCache>,
    ) -> Tensor {
        let t = input_ids.size()[1];
        let past = cache.as_ref().map(|c| c.seq_len()).unwrap_or(0);
        let h = self.model.embed_tokens.forward(input_ids);
        let (cos, sin) = self.model.rotary.cos_sin(position_ids, h.kind());
        let m = mask.to_sdpa(t, past, h.device());
        let mut h = h;
        for (i, layer) in self.model.layers.iter().enumerate() {
            h = layer.forward(
                &h,
                &cos,
                &sin,
                m.as_ref(),
                cache.as_deref_mut().map(|c| (c, i)),
            );
        }
        self.model.norm.forward(&h)
    }

    /// Logits [B,T,V] from final hidden states.
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        match &self.lm_head {
            Some(l) => l.forward(hidden),
            None => {
                let f = |a: Option<&str>, h: &Tensor| {
                    h.matmul(&self.model.embed_tokens.weight_for(a).tr())
                };
                match self.state.selection() {
                    AdapterSelection::None => f(None, hidden),
                    AdapterSelection::Single(a) => f(Some(&a), hidden),
                    AdapterSelection::PerRow(r) => crate::linear::per_row(hidden, &r, f),
                }
            }
        }
    }

    /// input_ids [B,T] i64; position_ids [B,T] i64; `cache` is appended in place. Returns logits [B,T,V]
    /// in the compute dtype.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        position_ids: &Tensor,
        mask: &AttentionMask,
        cache: Option<&mut KvCache>,
    ) -> Tensor {
        self.logits(&self.forward_hidden(input_ids, position_ids, mask, cache))
    }

    /// Mean cross-entropy (fp32) over labels != -100 after the one-token shift, and the count of those labels.
    pub fn loss(&self, logits: &Tensor, labels: &Tensor) -> (Tensor, i64) {
        let (sum, n) = shifted_ce_sum(logits, labels);
        (sum / (n.max(1) as f64), n)
    }

    /// Every dense base parameter with its checkpoint key (shallow clones sharing storage). Quantized base
    /// weights are not listed.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            self.model.embed_tokens.weight.shallow_clone(),
        )];
        let lin = |out: &mut Vec<(String, Tensor)>, p: String, l: &Linear| {
            if let BaseWeight::Dense(w) = &l.weight {
                out.push((format!("{p}.weight"), w.shallow_clone()));
            }
            if let Some(b) = &l.bias {
                out.push((format!("{p}.bias"), b.shallow_clone()));
            }
        };
        for (i, layer) in self.model.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.push((
                format!("{p}.input_layernorm.weight"),
                layer.input_layernorm.weight.shallow_clone(),
            ));
            for (n, l) in layer.projections() {
                lin(&mut out, format!("{p}.{n}"), l);
            }
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                layer.post_attention_layernorm.weight.shallow_clone(),
            ));
        }
        out.push((
            "model.norm.weight".into(),
            self.model.norm.weight.shallow_clone(),
        ));
        if let Some(l) = &self.lm_head {
            lin(&mut out, "lm_head".into(), l);
        }
        out
    }

    /// Sets `requires_grad` on the base parameters whose key satisfies `pred` (full fine-tuning: all;
    /// freeze: the last N layers via [`layer_index`]) and clears it on the others.
    pub fn set_base_trainable(&self, pred: impl Fn(&str) -> bool) {
        for (k, t) in self.named_parameters() {
            let _ = t.set_requires_grad(pred(&k));
        }
    }

    /// Every tensor that currently requires grad: base parameters by checkpoint key, adapters by PEFT key.
    pub fn trainable_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self
            .named_parameters()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        for name in self.adapter_names() {
            v.extend(
                self.lora_parameters(&name)
                    .into_iter()
                    .filter(|(_, t)| t.requires_grad()),
            );
        }
        v
    }
}

/// The decoder layer index of a checkpoint key (`model.layers.7.mlp.up_proj.weight` → 7).
pub fn layer_index(key: &str) -> Option<usize> {
    key.split("layers.").nth(1)?.split('.').next()?.parse().ok()
}

/// Summed fp32 cross-entropy over shifted labels != -100, and their count.
pub fn shifted_ce_sum(logits: &Tensor, labels: &Tensor) -> (Tensor, i64) {
    let v = logits.size()[2];
    let t = logits.size()[1];
    let logits = logits
        .narrow(1, 0, t - 1)
        .to_kind(Kind::Float)
        .reshape([-1, v]);
    let labels = labels
        .narrow(1, 1, t - 1)
        .to_device(logits.device())
        .reshape([-1]);
    let n = i64::try_from(labels.ne(-100).sum(Kind::Int64)).unwrap_or(0);
    let sum = logits.cross_entropy_loss::<Tensor>(&labels, None, Reduction::Sum, -100, 0.0);
    (sum, n)
}
