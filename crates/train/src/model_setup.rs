//! The model side of a recipe: load the base checkpoint in the compute dtype (its projections quantized
//! for QLoRA, see [`crate::qlora`]), optionally resize the
//! vocabulary to an extended tokenizer, decide what is trainable (`lora` / `full` / `freeze`), restore
//! weights from a checkpoint being resumed, and save adapter or full weights.
//!
//! [`setup_unloaded`] is the fully sharded variant: the base is declared on the CPU without being read
//! (its pages are never touched) and the returned [`TrainModel::unloaded`] index lets the sharding engine
//! read each rank's chunk of every unit straight from the checkpoint files.

use crate::error::TrainError;
use ferrotune_core::train_config::{FinetuningType, TrainConfig};
use ferrotune_core::DType;
use ferrotune_model::{layer_index, CheckpointIndex, LlamaConfig, LlamaForCausalLM, LoraConfig};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// The adapter name used for training (PEFT's default).
pub const ADAPTER: &str = "default";

/// A loaded model ready to train, with its trainable tensors.
#[derive(Debug)]
pub struct TrainModel {
    pub model: LlamaForCausalLM,
    /// Keeps the base parameters alive (the model holds shallow handles).
    pub _vs: tch::nn::VarStore,
    pub device: Device,
    /// [`setup_unloaded`]: the checkpoint the base parameters (every parameter named in it) still have to
    /// be read from; their tensors are unread CPU placeholders.
    pub unloaded: Option<CheckpointIndex>,
}

/// The dtype the base is loaded in: frozen weights in the compute dtype; trained weights in fp32 unless
/// pure_bf16 (or full/freeze mixed precision, where ferrotune keeps fp32 master weights by loading in fp32).
fn base_dtype(cfg: &TrainConfig) -> DType {
    match cfg.finetuning_type {
        FinetuningType::Lora => cfg.compute_dtype(),
        _ if cfg.pure_bf16 => DType::BF16,
        _ => DType::F32,
    }
}

/// Loads `model_name_or_path`, applies the finetuning type, and restores `resume` weights when given.
pub fn setup(
    cfg: &TrainConfig,
    device: Device,
    tokenizer_vocab: Option<usize>,
    resume: Option<&Path>,
) -> Result<TrainModel, TrainError> {
    let base_dtype = base_dtype(cfg);
    let (model, vs) = if cfg.train_from_scratch {
        let mc = ferrotune_model::LlamaConfig::from_json_file(
            &cfg.model_name_or_path.join("config.json"),
        )?;
        let mut vs = tch::nn::VarStore::new(device);
        vs.set_kind(ferrotune_model::kind_of(base_dtype));
        let mut model = LlamaForCausalLM::load(vs.root(), &mc)?;
        // A full/freeze checkpoint holds every weight; a LoRA one only the adapter, so a resumed LoRA run
        // rebuilds its random base exactly as the fresh run did (same seed, same quantization).
        if resume.is_none() || cfg.finetuning_type == FinetuningType::Lora {
            model.init_weights(cfg.seed as i64);
            crate::qlora::quantize_in_place(cfg, &mut model)?;
            tracing::info!(
                "training from scratch: weights initialised with seed {}",
                cfg.seed
            );
        }
        (model, vs)
    } else {
        // QLoRA: the frozen base is quantized while it streams in (plain load otherwise).
        crate::qlora::load_base(cfg, base_dtype, device)?
    };
    finish(cfg, model, vs, device, tokenizer_vocab, resume, None)
}

/// [`setup`] for a fully sharded run that reads its shards from the checkpoint (see the module docs), or
/// `None` when the base cannot be left unread: a from-scratch or quantized base, `.bin` weights, a
/// vocabulary resize, or `modules_to_save` copies of base weights.
pub fn setup_unloaded(
    cfg: &TrainConfig,
    device: Device,
    tokenizer_vocab: Option<usize>,
) -> Result<Option<TrainModel>, TrainError> {
    if cfg.train_from_scratch
        || cfg.quantization_bit.is_some()
        || !cfg.additional_target.is_empty()
        || cfg.resize_vocab
    {
        return Ok(None);
    }
    let dir = &cfg.model_name_or_path;
    let mc = LlamaConfig::from_json_file(&dir.join("config.json"))?;
    let Some(index) = CheckpointIndex::open(dir)? else {
        return Ok(None);
    };
    let mut vs = tch::nn::VarStore::new(Device::Cpu);
    vs.set_kind(ferrotune_model::kind_of(base_dtype(cfg)));
    // `Tensor::empty` placeholders on the CPU: declared, never written, so never resident.
    let mut model = LlamaForCausalLM::load(vs.root(), &mc)?;
    for (name, t) in model.named_parameters() {
        match index.shape(&name) {
            Some(shape) if shape == t.size().as_slice() => {}
            Some(shape) => {
                return Err(TrainError::Config(format!(
                    "{}: `{name}` has shape {shape:?}, the config implies {:?}",
                    dir.display(),
                    t.size()
                )))
            }
            None => {
                return Err(TrainError::Config(format!(
                    "{}: the checkpoint lacks `{name}`",
                    dir.display()
                )))
            }
        }
    }
    model.model.rotary = ferrotune_model::rope::Rotary::new(&mc, device);
    tracing::info!(checkpoint = %dir.display(), "base left unread: each rank reads its shards");
    finish(cfg, model, vs, device, tokenizer_vocab, None, Some(index)).map(Some)
}

/// The common tail: trainability per finetuning type, resume weights, vocabulary resize.
fn finish(
    cfg: &TrainConfig,
    mut model: LlamaForCausalLM,
    vs: tch::nn::VarStore,
    device: Device,
    tokenizer_vocab: Option<usize>,
    resume: Option<&Path>,
    unloaded: Option<CheckpointIndex>,
) -> Result<TrainModel, TrainError> {
    model.gradient_checkpointing = cfg.gradient_checkpointing;
    if let Some(n) = tokenizer_vocab.filter(|_| cfg.resize_vocab) {
        if n as i64 != model.config.vocab_size {
            tracing::info!(
                from = model.config.vocab_size,
                to = n,
                "resizing token embeddings to the tokenizer"
            );
            model.resize_token_embeddings(n as i64)?;
        }
    }
    let train_kind = if cfg.pure_bf16 {
        Kind::BFloat16
    } else {
        Kind::Float
    };
    match cfg.finetuning_type {
        FinetuningType::Lora => {
            model.set_base_trainable(|_| false);
            let source = resume.or(cfg.adapter_name_or_path.as_deref());
            match source {
                Some(dir) => {
                    model.load_lora(ADAPTER, dir, Some(train_kind))?;
                }
                None => {
                    let targets = cfg.lora_modules();
                    let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
                    let mut lc = LoraConfig::new(cfg.lora_rank, cfg.lora_alpha, &targets);
                    lc.lora_dropout = cfg.lora_dropout;
                    lc.base_model_name_or_path = Some(cfg.model_name_or_path.display().to_string());
                    if !cfg.additional_target.is_empty() || cfg.resize_vocab {
                        let mut m = cfg.additional_target.clone();
                        if cfg.resize_vocab {
                            for x in ["embed_tokens", "lm_head"] {
                                if !m.iter().any(|a| a == x) {
                                    m.push(x.into());
                                }
                            }
                        }
                        lc.modules_to_save = Some(m);
                    }
                    model.add_lora(ADAPTER, &lc, cfg.seed, train_kind)?;
                }
            }
            for (_, t) in model.lora_parameters(ADAPTER) {
                let _ = t.set_requires_grad(true);
            }
        }
        FinetuningType::Full => {
            if let Some(dir) = resume {
                ferrotune_model::load_weights(&model, dir)?;
            }
            model.set_base_trainable(|_| true);
        }
        FinetuningType::Freeze => {
            if let Some(dir) = resume {
                ferrotune_model::load_weights(&model, dir)?;
            }
            let frozen = cfg.num_freeze_layers.unwrap_or(0);
            let n_layers = model.config.num_hidden_layers as usize;
            if frozen >= n_layers {
                return Err(TrainError::Config(format!(
                    "`num_freeze_layers` = {frozen} leaves nothing to train (the model has {n_layers} layers)"
                )));
            }
            let resize = cfg.resize_vocab;
            model.set_base_trainable(|k| match layer_index(k) {
                Some(i) => i >= frozen,
                None => {
                    k == "model.norm.weight"
                        || resize && (k.contains("embed_tokens") || k.starts_with("lm_head"))
                }
            });
        }
    }
    Ok(TrainModel {
        model,
        _vs: vs,
        device,
        unloaded,
    })
}

impl TrainModel {
    /// The tensors the optimizer updates, by checkpoint (or PEFT) key, in a stable order.
    pub fn trainable(&self) -> Vec<(String, Tensor)> {
        self.model.trainable_parameters()
    }

    /// Writes the trained weights into `dir`: the PEFT adapter (LoRA) or an HF checkpoint (full/freeze).
    pub fn save_weights(&self, cfg: &TrainConfig, dir: &Path) -> Result<(), TrainError> {
        match cfg.finetuning_type {
            FinetuningType::Lora => self.model.save_lora(ADAPTER, dir, None)?,
            _ => {
                let tmp = dir.join("model");
                ferrotune_model::save_pretrained(
                    &self.model,
                    &tmp,
                    None,
                    ferrotune_model::DEFAULT_MAX_SHARD_SIZE,
                )?;
                // save_pretrained writes a whole directory; lift its files into `dir`.
                for e in std::fs::read_dir(&tmp).map_err(|e| TrainError::io(&tmp, e))? {
                    let p = e.map_err(|e| TrainError::io(&tmp, e))?.path();
                    let to = dir.join(p.file_name().expect("a file name"));
                    std::fs::rename(&p, &to).map_err(|e| TrainError::io(&to, e))?;
                }
                std::fs::remove_dir(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
                copy_tokenizer_files(&cfg.model_name_or_path, dir);
            }
        }
        Ok(())
    }

    /// Parameter counts (trainable, total) for the start-of-run log line.
    pub fn parameter_counts(&self) -> (i64, i64) {
        let trainable: i64 = self.trainable().iter().map(|(_, t)| t.numel() as i64).sum();
        let base: i64 = self
            .model
            .named_parameters()
            .iter()
            .filter(|(_, t)| !t.requires_grad())
            .map(|(_, t)| t.numel() as i64)
            .sum();
        (trainable, trainable + base)
    }
}

/// Copies tokenizer files next to saved full weights so the directory loads on its own.
pub fn copy_tokenizer_files(from: &Path, to: &Path) {
    for name in [
        "tokenizer.model",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        let src = from.join(name);
        if src.is_file() {
            let _ = std::fs::copy(&src, to.join(name));
        }
    }
}
