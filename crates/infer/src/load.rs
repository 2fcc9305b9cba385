//! Opening a model directory for generation: the Llama weights (+ LoRA adapters), its tokenizer, the chat
//! template (the `template` recorded in a training run's `resolved_config.toml` beside the model or adapter,
//! else the one asked for, else `default`) and the ids that end a generation.

use crate::chat::ChatFormatter;
use crate::error::{InferError, Result};
use crate::llama::LlamaEngineModel;
use crate::model::CausalLm;
use crate::templates::DataTemplate;
use ferrotune_core::{DType, DeviceSpec};
use ferrotune_tokenizer::Tokenizer;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What to load besides the model directory.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Weight dtype (default f32).
    pub dtype: Option<DType>,
    /// Device (default: CUDA when available, else CPU).
    pub device: Option<DeviceSpec>,
    /// `(name, PEFT adapter dir)` pairs.
    pub adapters: Vec<(String, PathBuf)>,
    /// Chat template name (overrides the one recorded in a run's config).
    pub template: Option<String>,
    /// A TOML file with extra templates.
    pub template_file: Option<PathBuf>,
    /// Tokenizer path (default: the model directory).
    pub tokenizer: Option<PathBuf>,
}

/// Everything generation needs.
pub struct Loaded {
    /// The model.
    pub model: LlamaEngineModel,
    /// Its tokenizer.
    pub tokenizer: Arc<Tokenizer>,
    /// Chat prompt rendering.
    pub chat: Arc<dyn ChatFormatter>,
    /// Ids that end a generation besides the tokenizer's EOS (the config's `eos_token_id` list).
    pub stop_ids: Vec<u32>,
    /// Name of the base model (the directory name).
    pub name: String,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("name", &self.name)
            .field("template", &self.chat.name())
            .finish()
    }
}

/// The `template` key of the first `resolved_config.toml` found beside `dirs` (or one level up).
pub fn recorded_template(dirs: &[&Path]) -> Option<(String, PathBuf)> {
    for d in dirs {
        for cand in [
            d.join("resolved_config.toml"),
            d.join("../resolved_config.toml"),
        ] {
            let Ok(text) = std::fs::read_to_string(&cand) else {
                continue;
            };
            let Ok(v) = text.parse::<toml::Value>() else {
                continue;
            };
            if let Some(t) = find_key(&v, "template") {
                return Some((t, cand));
            }
        }
    }
    None
}

fn find_key(v: &toml::Value, key: &str) -> Option<String> {
    let t = v.as_table()?;
    if let Some(s) = t.get(key).and_then(|x| x.as_str()) {
        return Some(s.to_string());
    }
    t.values().find_map(|x| find_key(x, key))
}

/// Loads `dir` for generation.
pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Loaded> {
    let tok_path = opts.tokenizer.clone().unwrap_or_else(|| dir.to_path_buf());
    let tokenizer = Arc::new(
        Tokenizer::from_path(&tok_path).map_err(|e| InferError::Load {
            what: format!("tokenizer {}", tok_path.display()),
            reason: e.to_string(),
        })?,
    );
    let device = ferrotune_model::resolve_device(opts.device.unwrap_or(DeviceSpec::Auto));
    let model = LlamaEngineModel::load(
        dir,
        opts.dtype.unwrap_or(DType::F32),
        device,
        &opts.adapters,
    )?;
    let mut dirs: Vec<&Path> = opts.adapters.iter().map(|(_, p)| p.as_path()).collect();
    dirs.push(dir);
    let recorded = recorded_template(&dirs);
    let name = match (&opts.template, &recorded) {
        (Some(t), Some((r, src))) if t != r => {
            tracing::warn!("using --template {t}; {} records `{r}`", src.display());
            t.clone()
        }
        (Some(t), _) => t.clone(),
        (None, Some((r, src))) => {
            tracing::info!("chat template `{r}` from {}", src.display());
            r.clone()
        }
        (None, None) => "default".to_string(),
    };
    let chat = Arc::new(DataTemplate::load(
        &name,
        opts.template_file.as_deref(),
        tokenizer.clone(),
    )?);
    let stop_ids = model
        .config()
        .eos_token_id
        .iter()
        .filter(|&&i| i >= 0)
        .map(|&i| i as u32)
        .collect();
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".to_string());
    tracing::debug!(context = model.max_context(), "loaded {name}");
    Ok(Loaded {
        model,
        tokenizer,
        chat,
        stop_ids,
        name,
    })
}
