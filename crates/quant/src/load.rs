//! Loading quantized models. [`load_quantized`] streams a 16-bit checkpoint and quantizes each decoder
//! projection as its tensor is read, so the peak memory is the quantized model plus about one 16-bit layer
//! (one tensor's temporaries; the model skeleton is declared on the CPU without touching its pages and moved
//! to the device at the end);
//! [`load_prequantized`] reads a directory written by [`crate::save::save_quantized`]; [`load_model`] takes
//! either kind of directory, quantizing at load when asked.

use crate::format::{QuantKernel, QuantMethod, QuantSpec, QuantWeight};
use crate::quant_linear::QuantLinear;
use crate::quantize::{quantize_weight, release};
use crate::QuantError;
use ferrotune_core::DType;
use ferrotune_model::pretrained::{checkpoint_files, copy_into_param, for_each_tensor};
use ferrotune_model::rope::Rotary;
use ferrotune_model::{kind_of, BaseWeight, LlamaConfig, LlamaForCausalLM, ModelError};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tch::{Device, Tensor};

/// A loaded model with its var store and config (as `ferrotune_model::load_pretrained` returns).
pub type Loaded = (LlamaForCausalLM, tch::nn::VarStore, LlamaConfig);

/// The quantization a model directory was saved with (`quantization_config` of its `config.json`).
pub fn dir_quantization(dir: &Path) -> Result<Option<QuantSpec>, QuantError> {
    let p = dir.join("config.json");
    let text = std::fs::read_to_string(&p).map_err(|e| QuantError::io(&p, e))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| QuantError::Json {
        path: p.clone(),
        source: e,
    })?;
    match v.get("quantization_config") {
        None | Some(Value::Null) => Ok(None),
        Some(q) => QuantSpec::from_hf_config(q)
            .map(Some)
            .map_err(|e| QuantError::ckpt(&p, e.to_string())),
    }
}

/// Rebuilds a stored quantized kernel of shape (out, in) under `prefix` (`model.layers.0.self_attn.q_proj`);
/// `get(key)` hands out the stored tensors by full key. Methods other than nf4/fp4/int8 plug in here.
pub fn kernel_from_tensors(
    spec: &QuantSpec,
    prefix: &str,
    shape: (i64, i64),
    get: &mut dyn FnMut(&str) -> Option<Tensor>,
) -> Result<Box<dyn QuantKernel>, QuantError> {
    match &spec.method {
        QuantMethod::Nf4 | QuantMethod::Fp4 | QuantMethod::Int8 { .. } => Ok(Box::new(
            QuantLinear::from_tensors(prefix, shape, spec, get)?,
        )),
        QuantMethod::Rtn { group_size, .. } | QuantMethod::Gptq { group_size, .. } => {
            Ok(Box::new(crate::gptq_linear::Int4GroupLinear::load(
                prefix,
                shape,
                *group_size,
                spec.method_name(),
                get,
            )?))
        }
    }
}

/// Loads `dir` whatever it holds: a pre-quantized checkpoint as stored (`quantize` must then be `None` or
/// the same method), or a 16-bit one, quantized while streaming when `quantize` is given. Returns the spec
/// in effect.
pub fn load_model(
    dir: &Path,
    dtype: DType,
    device: Device,
    quantize: Option<&QuantSpec>,
) -> Result<(Loaded, Option<QuantSpec>), QuantError> {
    match (dir_quantization(dir)?, quantize) {
        (Some(stored), asked) => {
            if let Some(a) = asked.filter(|a| a.method_name() != stored.method_name()) {
                return Err(QuantError::ckpt(
                    dir,
                    format!(
                        "is already quantized ({}); cannot quantize it again as {}",
                        stored.method_name(),
                        a.method_name()
                    ),
                ));
            }
            Ok((load_prequantized(dir, dtype, device)?, Some(stored)))
        }
        (None, Some(spec)) => Ok((
            load_quantized(dir, spec, dtype, device)?,
            Some(spec.clone()),
        )),
        (None, None) => Ok((ferrotune_model::load_pretrained(dir, dtype, device)?, None)),
    }
}

/// Loads a 16-bit checkpoint quantizing each decoder projection as it is read (converted to `dtype` first,
/// so the result equals `load_pretrained(dir, dtype)` + [`crate::quantize_model`] bit for bit, quantized on
/// `device`). Everything else is loaded in `dtype`.
pub fn load_quantized(
    dir: &Path,
    spec: &QuantSpec,
    dtype: DType,
    device: Device,
) -> Result<Loaded, QuantError> {
    spec.validate()?;
    stream(dir, dtype, device, Source::Quantize(spec))
}

/// Loads a directory written by [`crate::save::save_quantized`].
pub fn load_prequantized(dir: &Path, dtype: DType, device: Device) -> Result<Loaded, QuantError> {
    let spec = dir_quantization(dir)?
        .ok_or_else(|| QuantError::ckpt(dir.join("config.json"), "no `quantization_config`"))?;
    stream(dir, dtype, device, Source::Stored(&spec))
}

enum Source<'a> {
    Quantize(&'a QuantSpec),
    Stored(&'a QuantSpec),
}

/// `model.layers.{i}.{proj}` and the rest of a key, when `key` belongs to a decoder projection.
fn projection_of(key: &str) -> Option<(usize, &'static str, usize)> {
    let rest = key.strip_prefix("model.layers.")?;
    let (i, rest) = rest.split_once('.')?;
    let i: usize = i.parse().ok()?;
    const NAMES: [&str; 7] = ferrotune_core::model_shape::PROJECTION_PATHS;
    let name = NAMES
        .iter()
        .find(|n| rest.starts_with(*n) && rest[n.len()..].starts_with('.'))?;
    let prefix_len =
        "model.layers.".len() + key["model.layers.".len()..].find('.')? + 1 + name.len();
    Some((i, *name, prefix_len))
}

fn ckpt_err(path: &Path, msg: String) -> ModelError {
    ModelError::Checkpoint {
        path: path.to_path_buf(),
        msg,
    }
}

fn stream(dir: &Path, dtype: DType, device: Device, src: Source) -> Result<Loaded, QuantError> {
    let _g = tch::no_grad_guard();
    let mut cfg = LlamaConfig::from_json_file(&dir.join("config.json"))?;
    cfg.extra.remove("quantization_config");
    // The skeleton lives on the CPU: `Tensor::empty` pages are never touched for the projections, which are
    // replaced before anything is written into them.
    let mut vs = tch::nn::VarStore::new(Device::Cpu);
    vs.set_kind(kind_of(dtype));
    let mut model = LlamaForCausalLM::load(vs.root(), &cfg)?;
    let mut dense: HashMap<String, Tensor> = model
        .named_parameters()
        .into_iter()
        .filter(|(k, _)| projection_of(k).is_none())
        .collect();
    let mut seen = std::collections::HashSet::new();
    let mut pending: BTreeMap<String, Tensor> = BTreeMap::new();
    let files = checkpoint_files(dir)?;
    let bar = indicatif::ProgressBar::new(7 * cfg.num_hidden_layers as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "{msg} {bar:40} {pos}/{len} projections [{elapsed}<{eta}]",
        )
        .expect("a valid template"),
    );
    bar.set_message(match &src {
        Source::Quantize(s) => format!("quantizing to {}", s.method_name()),
        Source::Stored(s) => format!("loading {}", s.method_name()),
    });
    for file in &files {
        tracing::debug!(file = %file.display(), "streaming weights");
        for_each_tensor(file, &mut |name, t| {
            let key = name.strip_prefix("module.").unwrap_or(name);
            if let Some((i, proj, plen)) = projection_of(key) {
                let layer = model.model.layers.get_mut(i).ok_or_else(|| {
                    ckpt_err(
                        file,
                        format!("`{key}`: the config has {} layers", cfg.num_hidden_layers),
                    )
                })?;
                let lin = layer
                    .projections_mut()
                    .into_iter()
                    .find(|(n, _)| *n == proj)
                    .map(|(_, l)| l)
                    .expect("a projection name from the list");
                match (&src, &key[plen..]) {
                    (Source::Quantize(spec), ".weight") => {
                        let (o, inf) = lin.weight.shape();
                        if t.size() != [o, inf] {
                            return Err(ckpt_err(
                                file,
                                format!(
                                    "`{key}` has shape {:?}, the config implies {:?}",
                                    t.size(),
                                    [o, inf]
                                ),
                            ));
                        }
                        let w = t.to_device(device).to_kind(kind_of(dtype));
                        let k = quantize_weight(key, &w, spec).map_err(|e| ModelError::Tensor {
                            name: key.to_string(),
                            msg: e.to_string(),
                        })?;
                        if let BaseWeight::Dense(old) =
                            std::mem::replace(&mut lin.weight, QuantWeight::base(k))
                        {
                            release(old);
                        }
                        bar.inc(1);
                        seen.insert(key.to_string());
                    }
                    (Source::Quantize(_), ".bias") => {
                        if let Some(b) = &mut lin.bias {
                            b.copy_(t);
                            seen.insert(key.to_string());
                        }
                    }
                    _ => {
                        pending.insert(key.to_string(), t.to_device(device).copy());
                    }
                }
                return Ok(());
            }
            copy_into_param(&model, &mut dense, &mut seen, file, key, t)
        })?;
    }
    if let Source::Stored(spec) = src {
        attach_stored(&mut model, spec, &mut pending, &mut seen, dtype, device)?;
    }
    bar.finish_and_clear();
    for k in pending.keys() {
        tracing::warn!("ignoring unexpected tensor `{k}`");
    }
    let mut missing: Vec<String> = model
        .named_parameters()
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| !seen.contains(k))
        .collect();
    for (i, layer) in model.model.layers.iter().enumerate() {
        for (n, l) in layer.projections() {
            let k = format!("model.layers.{i}.{n}.weight");
            if l.weight.dense().is_some() && !seen.contains(&k) {
                missing.push(k);
            }
        }
    }
    missing.sort();
    missing.dedup();
    if let Some(first) = missing.first() {
        return Err(QuantError::ckpt(
            dir,
            format!(
                "{} weights missing from the checkpoint, e.g. `{first}`",
                missing.len()
            ),
        ));
    }
    drop_quantized_vars(&vs, &model);
    if device != Device::Cpu {
        vs.set_device(device);
        model.model.rotary = Rotary::new(&cfg, device);
    }
    Ok((model, vs, cfg))
}

/// Builds the stored kernels of a pre-quantized checkpoint from `pending` (tensors by key, on the device).
fn attach_stored(
    model: &mut LlamaForCausalLM,
    spec: &QuantSpec,
    pending: &mut BTreeMap<String, Tensor>,
    seen: &mut std::collections::HashSet<String>,
    dtype: DType,
    device: Device,
) -> Result<(), QuantError> {
    for (i, layer) in model.model.layers.iter_mut().enumerate() {
        for (name, lin) in layer.projections_mut() {
            let prefix = format!("model.layers.{i}.{name}");
            let wkey = format!("{prefix}.weight");
            if let Some(b) = &mut lin.bias {
                if let Some(t) = pending.remove(&format!("{prefix}.bias")) {
                    b.copy_(&t);
                    seen.insert(format!("{prefix}.bias"));
                }
            }
            let Some(w) = pending.get(&wkey) else {
                continue;
            };
            let stored_dense = w.is_floating_point()
                && !pending.contains_key(&format!("{prefix}.SCB"))
                && !pending.contains_key(&format!("{wkey}.absmax"));
            if stored_dense {
                let w = pending.remove(&wkey).expect("present");
                if let BaseWeight::Dense(d) = &mut lin.weight {
                    let mut d = d.shallow_clone();
                    d.set_data(&w.to_kind(kind_of(dtype)).to_device(device));
                }
                seen.insert(wkey);
                continue;
            }
            let shape = lin.weight.shape();
            let k = kernel_from_tensors(spec, &prefix, shape, &mut |key| pending.remove(key))?;
            if let BaseWeight::Dense(old) = std::mem::replace(&mut lin.weight, QuantWeight::base(k))
            {
                release(old);
            }
            seen.insert(wkey);
        }
    }
    Ok(())
}

/// Removes the var-store entries of projections whose base weight is quantized (their dense tensors were
/// released), so nothing that walks the var store sees them.
pub fn drop_quantized_vars(vs: &tch::nn::VarStore, model: &LlamaForCausalLM) {
    let mut vars = vs.variables_.lock().expect("var store poisoned");
    for (i, layer) in model.model.layers.iter().enumerate() {
        for (n, l) in layer.projections() {
            if l.weight.dense().is_none() {
                vars.named_variables
                    .remove(&format!("model.layers.{i}.{n}.weight"));
            }
        }
    }
}
