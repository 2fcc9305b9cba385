//! Writing a pre-quantized checkpoint: `model.safetensors` (or shards + index) holding the dense tensors in
//! their dtype and each quantized projection's tensors (bitsandbytes' names: `weight`, `weight.absmax`,
//! `weight.quant_map`, `weight.nested_*`, `SCB`, ...), `config.json` with a transformers-style
//! `quantization_config`, `generation_config.json`, and the tokenizer files of the source directory; all in a
//! temporary directory committed in one rename.

use crate::format::{quant_kernel, QuantSpec};
use crate::QuantError;
use ferrotune_core::DType;
use ferrotune_model::{
    dtype_of, generation_config, kind_of, staging_dir, write_shards, LlamaForCausalLM,
};
use serde_json::Value;
use std::path::Path;
use tch::Tensor;

/// Files copied from a source model directory next to the weights (tokenizer and chat template).
pub const SIDE_FILES: &[&str] = &[
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "generation_config.json",
];

/// Every tensor of a (partly) quantized model under its checkpoint key: dense parameters (converted to
/// `dtype` when given) and the stored tensors of each quantized projection.
pub fn quantized_state_dict(
    model: &LlamaForCausalLM,
    dtype: Option<DType>,
) -> Vec<(String, Tensor)> {
    let mut out: Vec<(String, Tensor)> = model
        .named_parameters()
        .into_iter()
        .map(|(k, t)| {
            let t = t.detach();
            match dtype {
                Some(d) => (k, t.to_kind(kind_of(d))),
                None => (k, t),
            }
        })
        .collect();
    for (i, layer) in model.model.layers.iter().enumerate() {
        for (name, lin) in layer.projections() {
            if let Some(k) = quant_kernel(&lin.weight) {
                out.extend(k.tensors(&format!("model.layers.{i}.{name}")));
            }
        }
    }
    out
}

/// Writes `model` (quantized by `spec`) to `dir`, replacing it atomically; dense tensors in `dtype` (`None`:
/// as held). Tokenizer files are copied from `side_files_from` when given.
pub fn save_quantized(
    model: &LlamaForCausalLM,
    spec: &QuantSpec,
    dir: &Path,
    dtype: Option<DType>,
    side_files_from: Option<&Path>,
    max_shard_size: u64,
) -> Result<(), QuantError> {
    let tensors = quantized_state_dict(model, dtype);
    let dtype = dtype
        .or_else(|| {
            model
                .named_parameters()
                .first()
                .and_then(|(_, t)| dtype_of(t.kind()))
        })
        .unwrap_or(DType::F32);
    let tmp = staging_dir(dir)?;
    let result = (|| -> Result<(), QuantError> {
        let meta = [("format", "pt"), ("quant_method", spec.method_name())];
        write_shards(&tmp, tensors, None, max_shard_size, &meta)?;
        if let Some(src) = side_files_from {
            for f in SIDE_FILES {
                let p = src.join(f);
                if p.is_file() {
                    std::fs::copy(&p, tmp.join(f)).map_err(|e| QuantError::io(&p, e))?;
                }
            }
        }
        let mut cfg = model.config.clone();
        cfg.torch_dtype = Some(dtype);
        let mut v = cfg.to_json();
        v["quantization_config"] = spec.to_hf_config();
        write_json(&tmp.join("config.json"), &v)?;
        if !tmp.join("generation_config.json").is_file() {
            write_json(
                &tmp.join("generation_config.json"),
                &generation_config(&cfg),
            )?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    ferrotune_core::fsutil::commit_dir(&tmp, dir)?;
    Ok(())
}

fn write_json(path: &Path, v: &Value) -> Result<(), QuantError> {
    let s = serde_json::to_string_pretty(v).expect("JSON");
    ferrotune_core::write_atomic(path, s.as_bytes())?;
    Ok(())
}
