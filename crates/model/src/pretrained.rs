//! HF checkpoint directories: `config.json` + `model.safetensors`, sharded `model-0000x-of-0000N.safetensors`
//! with `model.safetensors.index.json`, or `pytorch_model*.bin`; loaded straight into the target dtype and
//! device. Saving writes the same layout (shards of at most `max_shard_size` bytes + index),
//! `config.json` and `generation_config.json`, into a temporary directory committed in one rename.

use crate::device::kind_of;
use crate::error::ModelError;
use crate::llama::LlamaForCausalLM;
use crate::safetensors_io::{read_safetensors, write_safetensors};
use crate::LlamaConfig;
use ferrotune_core::DType;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// The default shard size of `save_pretrained` (transformers' "5GB").
pub const DEFAULT_MAX_SHARD_SIZE: u64 = 5_000_000_000;

/// The weight files of a checkpoint directory, in load order.
pub fn checkpoint_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    for index in [
        "model.safetensors.index.json",
        "pytorch_model.bin.index.json",
    ] {
        let p = dir.join(index);
        if p.is_file() {
            let text = std::fs::read_to_string(&p).map_err(|e| ModelError::io(&p, e))?;
            let v: Value = serde_json::from_str(&text).map_err(|e| ModelError::Json {
                path: p.clone(),
                source: e,
            })?;
            let map = v["weight_map"]
                .as_object()
                .ok_or_else(|| ModelError::ckpt(&p, "no `weight_map` object"))?;
            let mut files: Vec<String> = map
                .values()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect();
            files.sort();
            files.dedup();
            return Ok(files.into_iter().map(|f| dir.join(f)).collect());
        }
    }
    for single in ["model.safetensors", "pytorch_model.bin"] {
        if dir.join(single).is_file() {
            return Ok(vec![dir.join(single)]);
        }
    }
    Err(ModelError::ckpt(
        dir,
        "no model.safetensors, model.safetensors.index.json, pytorch_model.bin or pytorch_model.bin.index.json",
    ))
}

/// Calls `f(name, tensor)` for every tensor of a weight file: .safetensors memory-mapped; `pytorch_model*.bin`
/// (torch.save zip) read whole by [`crate::convert_pickle`] (tch 0.24's loaders only take TorchScript archives).
pub fn for_each_tensor(
    path: &Path,
    f: &mut dyn FnMut(&str, &Tensor) -> Result<(), ModelError>,
) -> Result<(), ModelError> {
    if path.extension().is_some_and(|e| e == "bin") {
        let tensors = crate::convert_pickle::load_torch_state_dict(path)
            .map_err(|e| ModelError::ckpt(path, format!("reading torch pickle: {e}")))?;
        for (k, raw) in tensors {
            let kind = crate::safetensors_io::kind_of_st(&format!("{:?}", raw.dtype)).ok_or_else(
                || ModelError::ckpt(path, format!("`{k}`: unsupported dtype {:?}", raw.dtype)),
            )?;
            let shape: Vec<i64> = raw.shape.iter().map(|&d| d as i64).collect();
            let t = Tensor::f_from_data_size(&raw.data, &shape, kind)?;
            f(&k, &t)?;
        }
        Ok(())
    } else {
        read_safetensors(path, |k, t| f(k, t))
    }
}

/// Loads `dir` (config + weights) with weights of `dtype` on `device`.
pub fn load_pretrained(
    dir: &Path,
    dtype: DType,
    device: Device,
) -> Result<(LlamaForCausalLM, tch::nn::VarStore, LlamaConfig), ModelError> {
    let cfg = LlamaConfig::from_json_file(&dir.join("config.json"))?;
    let mut vs = tch::nn::VarStore::new(device);
    vs.set_kind(kind_of(dtype));
    let model = LlamaForCausalLM::load(vs.root(), &cfg)?;
    load_weights(&model, dir)?;
    Ok((model, vs, cfg))
}

/// Copies the checkpoint tensors of `dir` into the model's (already declared) parameters, converting dtype
/// and device on the way; every parameter must be found, with its shape.
pub fn load_weights(model: &LlamaForCausalLM, dir: &Path) -> Result<(), ModelError> {
    let _g = tch::no_grad_guard();
    let mut params: HashMap<String, Tensor> = model.named_parameters().into_iter().collect();
    let mut seen = HashSet::new();
    let files = checkpoint_files(dir)?;
    for file in &files {
        tracing::debug!(file = %file.display(), "loading weights");
        for_each_tensor(file, &mut |name, t| {
            let key = name.strip_prefix("module.").unwrap_or(name);
            copy_into_param(model, &mut params, &mut seen, file, key, t)
        })?;
    }
    let mut missing: Vec<&String> = params.keys().filter(|k| !seen.contains(*k)).collect();
    missing.sort();
    if let Some(first) = missing.first() {
        return Err(ModelError::ckpt(
            dir,
            format!(
                "{} weights missing from the checkpoint, e.g. `{first}`",
                missing.len()
            ),
        ));
    }
    Ok(())
}

/// Copies checkpoint tensor `key` of `file` into its declared parameter in `params` (shapes must agree) and
/// records it in `seen`; a key with no parameter is warned about, except the ones HF checkpoints carry
/// without one (`rotary_emb.inv_freq`, a tied model's `lm_head.weight`).
pub fn copy_into_param(
    model: &LlamaForCausalLM,
    params: &mut HashMap<String, Tensor>,
    seen: &mut HashSet<String>,
    file: &Path,
    key: &str,
    t: &Tensor,
) -> Result<(), ModelError> {
    if let Some(dst) = params.get_mut(key) {
        if dst.size() != t.size() {
            return Err(ModelError::ckpt(
                file,
                format!(
                    "`{key}` has shape {:?}, the config implies {:?}",
                    t.size(),
                    dst.size()
                ),
            ));
        }
        tch::no_grad(|| dst.copy_(t));
        seen.insert(key.to_string());
    } else if !(key.ends_with("rotary_emb.inv_freq")
        || key == "lm_head.weight" && model.lm_head.is_none())
    {
        tracing::warn!(file = %file.display(), "ignoring unexpected tensor `{key}`");
    }
    Ok(())
}

/// Writes `model` as an HF checkpoint in `dir` (replaced atomically): safetensors shards of at most
/// `max_shard_size` bytes (one file when it fits, else `model-0000i-of-0000N.safetensors` + index),
/// `config.json` (with `torch_dtype`) and `generation_config.json`. `dtype` converts on the way (`None`: as is).
pub fn save_pretrained(
    model: &LlamaForCausalLM,
    dir: &Path,
    dtype: Option<DType>,
    max_shard_size: u64,
) -> Result<(), ModelError> {
    let params = model.named_parameters();
    let dtype = dtype
        .or_else(|| crate::device::dtype_of(params[0].1.kind()))
        .unwrap_or(DType::F32);
    let tmp = staging_dir(dir)?;
    let result = (|| -> Result<(), ModelError> {
        write_shards(
            &tmp,
            params,
            Some(kind_of(dtype)),
            max_shard_size,
            &[("format", "pt")],
        )?;
        let mut cfg = model.config.clone();
        cfg.torch_dtype = Some(dtype);
        write_json(&tmp.join("config.json"), &cfg.to_json())?;
        write_json(
            &tmp.join("generation_config.json"),
            &generation_config(&cfg),
        )
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    ferrotune_core::fsutil::commit_dir(&tmp, dir)?;
    Ok(())
}

/// A fresh staging directory beside `dir` (`.NAME.tmp-PID`, its parent created), to be filled and then
/// committed with [`ferrotune_core::fsutil::commit_dir`], so `dir` never holds a half-written checkpoint.
pub fn staging_dir(dir: &Path) -> Result<PathBuf, ModelError> {
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| ModelError::io(parent, e))?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
    Ok(tmp)
}

/// Writes `tensors` into `dir` as transformers does: `model.safetensors` when they fit in
/// `max_shard_size` bytes, else `model-0000i-of-0000N.safetensors` plus `model.safetensors.index.json`.
/// `kind` converts each shard as it is written (`None`: as is); `metadata` goes into every file's header.
pub fn write_shards(
    dir: &Path,
    tensors: Vec<(String, Tensor)>,
    kind: Option<Kind>,
    max_shard_size: u64,
    metadata: &[(&str, &str)],
) -> Result<(), ModelError> {
    let mut shards: Vec<Vec<(String, Tensor)>> = vec![vec![]];
    let (mut cur, mut total) = (0u64, 0u64);
    for (k, t) in tensors {
        let n = (t.numel() * kind.unwrap_or(t.kind()).elt_size_in_bytes()) as u64;
        if cur > 0 && cur + n > max_shard_size {
            shards.push(vec![]);
            cur = 0;
        }
        cur += n;
        total += n;
        shards.last_mut().expect("a shard").push((k, t));
    }
    let n = shards.len();
    let mut weight_map = BTreeMap::new();
    for (i, shard) in shards.into_iter().enumerate() {
        let file = if n == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{n:05}.safetensors", i + 1)
        };
        let shard: Vec<(String, Tensor)> = shard
            .into_iter()
            .map(|(k, t)| match kind {
                Some(kind) => (k, t.detach().to_kind(kind)),
                None => (k, t),
            })
            .collect();
        for (k, _) in &shard {
            weight_map.insert(k.clone(), Value::from(file.clone()));
        }
        write_safetensors(&dir.join(&file), &shard, metadata)?;
    }
    if n > 1 {
        let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        write_json(&dir.join("model.safetensors.index.json"), &index)?;
    }
    Ok(())
}

/// `generation_config.json` as transformers derives it from the model config.
pub fn generation_config(cfg: &LlamaConfig) -> Value {
    let mut gen = json!({"_from_model_config": true});
    if let Some(b) = cfg.bos_token_id {
        gen["bos_token_id"] = json!(b);
    }
    match cfg.eos_token_id.as_slice() {
        [] => {}
        [one] => gen["eos_token_id"] = json!(one),
        many => gen["eos_token_id"] = json!(many),
    }
    if let Some(p) = cfg.pad_token_id {
        gen["pad_token_id"] = json!(p);
    }
    gen
}

fn write_json(path: &Path, v: &Value) -> Result<(), ModelError> {
    let s = serde_json::to_string_pretty(v).expect("JSON");
    ferrotune_core::write_atomic(path, s.as_bytes())?;
    Ok(())
}
