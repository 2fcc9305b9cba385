//! LoRA on a whole model: attach a fresh adapter (kaiming-uniform A, zero B, seeded), list its tensors under
//! PEFT's keys, save / load PEFT's `adapter_config.json` + `adapter_model.safetensors`, merge into and unmerge
//! from the dense base weights, remove.

use crate::error::ModelError;
use crate::linear::AdapterSelection;
use crate::llama::LlamaForCausalLM;
use crate::lora::{LoraAdapter, LoraConfig, SplitMix};
use crate::safetensors_io::{read_safetensors, write_safetensors};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tch::{Kind, Tensor};

const PREFIX: &str = "base_model.model.";

/// The adapter files of a PEFT directory.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

impl LlamaForCausalLM {
    /// The names of the attached adapters.
    pub fn adapter_names(&self) -> Vec<String> {
        self.lora_configs.keys().cloned().collect()
    }

    /// Attaches a new adapter `name`: A ~ kaiming-uniform(a=√5) (bound 1/√in, from a splitmix64 stream seeded
    /// with `seed`), B = 0, both trainable, in `kind`; `modules_to_save` get trainable copies of the base
    /// weights. The adapter becomes the active one if none was.
    pub fn add_lora(
        &mut self,
        name: &str,
        cfg: &LoraConfig,
        seed: u64,
        kind: Kind,
    ) -> Result<(), ModelError> {
        cfg.validate().map_err(ModelError::Lora)?;
        let mut rng = SplitMix(seed);
        let mut tensors = HashMap::new();
        let device = self.model.embed_tokens.weight.device();
        for (key, (out_f, in_f)) in self.lora_shapes(cfg) {
            let a = Tensor::from_slice(
                &rng.uniform((cfg.r * in_f) as usize, 1.0 / (in_f as f64).sqrt()),
            )
            .view([cfg.r, in_f]);
            tensors.insert(
                format!("{key}.lora_A.weight"),
                a.to_kind(kind).to_device(device),
            );
            tensors.insert(
                format!("{key}.lora_B.weight"),
                Tensor::zeros([out_f, cfg.r], (kind, device)),
            );
        }
        for m in cfg.modules_to_save.iter().flatten() {
            let w = if m == "embed_tokens" {
                &self.model.embed_tokens.weight
            } else {
                self.lm_head
                    .as_ref()
                    .and_then(|l| l.weight.dense())
                    .ok_or_else(|| {
                        ModelError::Lora(
                            "modules_to_save lm_head needs an untied dense lm_head".into(),
                        )
                    })?
            };
            tensors.insert(save_key(m), w.detach().copy());
        }
        self.install(name, cfg, tensors, true)
    }

    /// `(PEFT key prefix, (out, in))` of every projection `cfg` wraps.
    fn lora_shapes(&self, cfg: &LoraConfig) -> Vec<(String, (i64, i64))> {
        let targets = cfg.targets();
        let mut v = vec![];
        for (i, layer) in self.model.layers.iter().enumerate() {
            if !cfg.applies_to_layer(i) {
                continue;
            }
            for (n, l) in layer.projections() {
                if targets.iter().any(|t| n.ends_with(t)) {
                    v.push((format!("{PREFIX}model.layers.{i}.{n}"), l.weight.shape()));
                }
            }
        }
        v
    }

    fn install(
        &mut self,
        name: &str,
        cfg: &LoraConfig,
        mut tensors: HashMap<String, Tensor>,
        trainable: bool,
    ) -> Result<(), ModelError> {
        if self.lora_configs.contains_key(name) {
            return Err(ModelError::Lora(format!(
                "an adapter named `{name}` is already attached"
            )));
        }
        let scaling = cfg.scaling();
        let shapes = self.lora_shapes(cfg);
        let mut built = vec![];
        for (key, (out_f, in_f)) in &shapes {
            let a = take(
                &mut tensors,
                &format!("{key}.lora_A.weight"),
                [cfg.r, *in_f],
                trainable,
            )?;
            let b = take(
                &mut tensors,
                &format!("{key}.lora_B.weight"),
                [*out_f, cfg.r],
                trainable,
            )?;
            built.push((key.clone(), a, b));
        }
        let mut saved = vec![];
        for m in cfg.modules_to_save.iter().flatten() {
            let (v, h) = (self.config.vocab_size, self.config.hidden_size);
            let k = save_key(m);
            let alt = [k.clone(), k.replace(".weight", ".modules_to_save.weight")];
            let found = alt
                .iter()
                .find(|a| tensors.contains_key(*a))
                .cloned()
                .unwrap_or(k);
            saved.push((m.clone(), take(&mut tensors, &found, [v, h], trainable)?));
        }
        let mut it = built.into_iter();
        for (i, layer) in self.model.layers.iter_mut().enumerate() {
            if !cfg.applies_to_layer(i) {
                continue;
            }
            for (n, l) in layer.projections_mut() {
                if cfg.targets().iter().any(|t| n.ends_with(t)) {
                    let (_, lora_a, lora_b) = it.next().expect("shapes and projections agree");
                    let ad = LoraAdapter {
                        lora_a,
                        lora_b,
                        scaling,
                        dropout: cfg.lora_dropout,
                    };
                    l.lora.insert(name.to_string(), ad);
                }
            }
        }
        for (m, w) in saved {
            if m == "embed_tokens" {
                self.model
                    .embed_tokens
                    .modules_to_save
                    .insert(name.to_string(), w);
            } else if let Some(l) = self.lm_head.as_mut() {
                l.modules_to_save.insert(name.to_string(), w);
            }
        }
        if !tensors.is_empty() {
            let mut extra: Vec<_> = tensors.keys().cloned().collect();
            extra.sort();
            tracing::warn!(
                adapter = name,
                "ignoring {} unexpected adapter tensors, e.g. {}",
                extra.len(),
                extra[0]
            );
        }
        self.lora_configs.insert(name.to_string(), cfg.clone());
        if self.state.selection() == AdapterSelection::None {
            self.state
                .set_selection(AdapterSelection::Single(name.to_string()));
        }
        Ok(())
    }

    /// The adapter's tensors under PEFT's keys (shallow clones: the trainer's handles).
    pub fn lora_parameters(&self, name: &str) -> Vec<(String, Tensor)> {
        let mut v = vec![];
        for (i, layer) in self.model.layers.iter().enumerate() {
            for (n, l) in layer.projections() {
                if let Some(a) = l.lora.get(name) {
                    let p = format!("{PREFIX}model.layers.{i}.{n}");
                    v.push((format!("{p}.lora_A.weight"), a.lora_a.shallow_clone()));
                    v.push((format!("{p}.lora_B.weight"), a.lora_b.shallow_clone()));
                }
            }
        }
        if let Some(w) = self.model.embed_tokens.modules_to_save.get(name) {
            v.push((save_key("embed_tokens"), w.shallow_clone()));
        }
        if let Some(w) = self
            .lm_head
            .as_ref()
            .and_then(|l| l.modules_to_save.get(name))
        {
            v.push((save_key("lm_head"), w.shallow_clone()));
        }
        v
    }

    /// Writes `dir/adapter_config.json` and `dir/adapter_model.safetensors` in PEFT's format (atomically).
    pub fn save_lora(&self, name: &str, dir: &Path, dtype: Option<Kind>) -> Result<(), ModelError> {
        let cfg = self
            .lora_configs
            .get(name)
            .ok_or_else(|| ModelError::Lora(format!("no adapter `{name}`")))?;
        let tensors: Vec<(String, Tensor)> = self
            .lora_parameters(name)
            .into_iter()
            .map(|(k, t)| {
                (
                    k,
                    dtype.map_or_else(|| t.detach(), |d| t.detach().to_kind(d)),
                )
            })
            .collect();
        write_safetensors(&dir.join(ADAPTER_WEIGHTS), &tensors, &[("format", "pt")])?;
        let json = serde_json::to_string_pretty(&cfg.to_peft_json()).expect("JSON");
        ferrotune_core::write_atomic(dir.join(ADAPTER_CONFIG), json.as_bytes())?;
        Ok(())
    }

    /// Loads a PEFT adapter directory as adapter `name` (frozen, in `kind` or the file's dtype) and returns its config.
    pub fn load_lora(
        &mut self,
        name: &str,
        dir: &Path,
        kind: Option<Kind>,
    ) -> Result<LoraConfig, ModelError> {
        let cp = dir.join(ADAPTER_CONFIG);
        let text = std::fs::read_to_string(&cp).map_err(|e| ModelError::io(&cp, e))?;
        let cfg: LoraConfig = serde_json::from_str(&text).map_err(|e| ModelError::Json {
            path: cp.clone(),
            source: e,
        })?;
        cfg.validate().map_err(|m| ModelError::ckpt(&cp, m))?;
        let device = self.model.embed_tokens.weight.device();
        let wp = dir.join(ADAPTER_WEIGHTS);
        let mut tensors = HashMap::new();
        read_safetensors(&wp, |k, view| {
            let kind = kind.unwrap_or(view.kind());
            let mut t = Tensor::empty(view.size(), (kind, device));
            t.copy_(view);
            // PEFT may keep the adapter name in keys (`lora_A.default.weight`).
            tensors.insert(k.replace(".default.weight", ".weight"), t);
            Ok(())
        })?;
        self.install(name, &cfg, tensors, false)
            .map_err(|e| ModelError::ckpt(&wp, e.to_string()))?;
        Ok(cfg)
    }

    /// Makes adapter `name`'s tensors trainable or frozen (e.g. to resume training a loaded adapter).
    pub fn set_lora_trainable(&self, name: &str, trainable: bool) {
        for (_, t) in self.lora_parameters(name) {
            let _ = t.set_requires_grad(trainable);
        }
    }

    /// Detaches adapter `name` (unmerging it first if merged).
    pub fn remove_lora(&mut self, name: &str) -> Result<(), ModelError> {
        if self.model.layers.iter().any(|l| {
            l.projections()
                .iter()
                .any(|(_, p)| p.merged.iter().any(|m| m == name))
        }) {
            self.unmerge_lora(name)?;
        }
        for layer in &mut self.model.layers {
            for (_, l) in layer.projections_mut() {
                l.lora.remove(name);
            }
        }
        self.model.embed_tokens.modules_to_save.remove(name);
        if let Some(l) = self.lm_head.as_mut() {
            l.modules_to_save.remove(name);
        }
        self.lora_configs.remove(name);
        if let AdapterSelection::Single(s) = self.state.selection() {
            if s == name {
                self.state.set_selection(AdapterSelection::None);
            }
        }
        Ok(())
    }

    /// Adds `scaling · B A` into every wrapped dense weight (and copies `modules_to_save` over the base).
    pub fn merge_lora(&mut self, name: &str) -> Result<(), ModelError> {
        self.merge_sign(name, 1.0)?;
        let _g = tch::no_grad_guard();
        if let Some(w) = self.model.embed_tokens.modules_to_save.get(name) {
            self.model.embed_tokens.weight.shallow_clone().copy_(w);
        }
        if let Some(l) = self.lm_head.as_mut() {
            if let (Some(w), Some(base)) = (l.modules_to_save.get(name), l.weight.dense()) {
                base.shallow_clone().copy_(w);
            }
        }
        Ok(())
    }

    /// Subtracts the merged delta again (not possible for `modules_to_save`, which replaced the base weights).
    pub fn unmerge_lora(&mut self, name: &str) -> Result<(), ModelError> {
        self.merge_sign(name, -1.0)
    }

    fn merge_sign(&mut self, name: &str, sign: f64) -> Result<(), ModelError> {
        if !self.lora_configs.contains_key(name) {
            return Err(ModelError::Lora(format!("no adapter `{name}`")));
        }
        for layer in &mut self.model.layers {
            for (n, l) in layer.projections_mut() {
                if !l.lora.contains_key(name) {
                    continue;
                }
                let is_merged = l.merged.iter().any(|m| m == name);
                if (sign > 0.0) == is_merged {
                    return Err(ModelError::Lora(format!(
                        "{n}: adapter `{name}` is {} merged",
                        if is_merged { "already" } else { "not" }
                    )));
                }
                l.merge_delta(name, sign)
                    .map_err(|m| ModelError::Lora(format!("{n}: {m}")))?;
                if sign > 0.0 {
                    l.merged.push(name.to_string());
                } else {
                    l.merged.retain(|m| m != name);
                }
            }
        }
        Ok(())
    }

    /// All adapter tensors by PEFT key, e.g. for tests; `BTreeMap` for a stable order.
    pub fn lora_state_dict(&self, name: &str) -> BTreeMap<String, Tensor> {
        self.lora_parameters(name).into_iter().collect()
    }
}

fn take(
    tensors: &mut HashMap<String, Tensor>,
    k: &str,
    shape: [i64; 2],
    trainable: bool,
) -> Result<Tensor, ModelError> {
    let t = tensors
        .remove(k)
        .ok_or_else(|| ModelError::tensor(k, "missing from the adapter"))?;
    if t.size() != shape {
        return Err(ModelError::tensor(
            k,
            format!("shape {:?}, expected {shape:?}", t.size()),
        ));
    }
    Ok(t.set_requires_grad(trainable))
}

fn save_key(module: &str) -> String {
    match module {
        "embed_tokens" => format!("{PREFIX}model.embed_tokens.weight"),
        other => format!("{PREFIX}{other}.weight"),
    }
}
