//! What the checkpoint converters share: a raw tensor (dtype, shape, little-endian bytes), the Meta→HF
//! rotary row permutation, shard concatenation, and writing a Hugging Face Llama directory (`config.json`
//! in the classic Llama-2 form, `model.safetensors`, `generation_config.json`, tokenizer files) in one
//! atomic directory commit.
//!
//! Meta's reference code, llama2.c and llama.cpp's GGUF keep the rotary pairs interleaved inside each head
//! (rows 2j and 2j+1 rotate together); HF's `rotate_half` pairs row j with row j + head_dim/2. The permutation
//! is the one of transformers' `convert_llama_weights_to_hf.py`:
//! `w.view(n_heads, head_dim/2, 2, in).transpose(1, 2).reshape(out, in)`.

use safetensors::tensor::{Dtype, View};
use serde_json::json;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Why a conversion failed; every variant names the file or tensor involved.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("reading {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    #[error("tensor {name}: {msg}")]
    Tensor { name: String, msg: String },
    #[error(transparent)]
    Fs(#[from] ferrotune_core::FsError),
    #[error("serializing safetensors: {0}")]
    Safetensors(#[from] safetensors::SafeTensorError),
}

impl ConvertError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        ConvertError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
    pub fn format(path: &Path, msg: impl Into<String>) -> Self {
        ConvertError::Format {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
    pub fn tensor(name: &str, msg: impl Into<String>) -> Self {
        ConvertError::Tensor {
            name: name.to_string(),
            msg: msg.into(),
        }
    }
}

/// Converted tensors by HF name.
pub type HfTensors = BTreeMap<String, RawTensor>;

/// A dense row-major tensor held as little-endian bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl RawTensor {
    pub fn new(dtype: Dtype, shape: Vec<usize>, data: Vec<u8>) -> Result<Self, String> {
        let want = shape.iter().product::<usize>() * dtype.bitsize() / 8;
        if data.len() != want {
            return Err(format!(
                "{} bytes for shape {shape:?} {dtype:?} (expected {want})",
                data.len()
            ));
        }
        Ok(RawTensor { dtype, shape, data })
    }

    /// A float32 tensor from values.
    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Self {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        RawTensor {
            dtype: Dtype::F32,
            shape,
            data,
        }
    }

    /// Bytes of one row (first dimension index) of a 2-D or higher tensor.
    fn row_bytes(&self) -> usize {
        self.shape.iter().skip(1).product::<usize>() * self.dtype.bitsize() / 8
    }

    /// Permutes the rows of a q/k projection from interleaved rotary pairs (Meta, llama2.c, GGUF) to HF's
    /// halves layout, for `n_heads` heads (the KV head count for `wk`).
    pub fn permute_rotary_to_hf(
        &self,
        name: &str,
        n_heads: usize,
    ) -> Result<RawTensor, ConvertError> {
        let rows = *self.shape.first().unwrap_or(&0);
        if self.shape.len() != 2
            || n_heads == 0
            || !rows.is_multiple_of(n_heads)
            || !(rows / n_heads).is_multiple_of(2)
        {
            return Err(ConvertError::tensor(
                name,
                format!(
                    "cannot split shape {:?} into {n_heads} rotary heads",
                    self.shape
                ),
            ));
        }
        let head_dim = rows / n_heads;
        let half = head_dim / 2;
        let rb = self.row_bytes();
        let mut out = vec![0u8; self.data.len()];
        for h in 0..n_heads {
            for i in 0..2 {
                for j in 0..half {
                    let dst = h * head_dim + i * half + j;
                    let src = h * head_dim + 2 * j + i;
                    out[dst * rb..(dst + 1) * rb]
                        .copy_from_slice(&self.data[src * rb..(src + 1) * rb]);
                }
            }
        }
        Ok(RawTensor {
            dtype: self.dtype,
            shape: self.shape.clone(),
            data: out,
        })
    }

    /// Concatenates 2-D tensors along `dim` (0: rows, 1: columns).
    pub fn cat(name: &str, parts: &[RawTensor], dim: usize) -> Result<RawTensor, ConvertError> {
        let first = parts
            .first()
            .ok_or_else(|| ConvertError::tensor(name, "no shards to concatenate"))?;
        if parts.len() == 1 {
            return Ok(first.clone());
        }
        let bad = parts.iter().any(|p| {
            p.dtype != first.dtype || p.shape.len() != 2 || p.shape[1 - dim] != first.shape[1 - dim]
        });
        if bad || dim > 1 {
            let shapes: Vec<_> = parts.iter().map(|p| (p.dtype, p.shape.clone())).collect();
            return Err(ConvertError::tensor(
                name,
                format!("shards {shapes:?} cannot be concatenated along dim {dim}"),
            ));
        }
        let total: usize = parts.iter().map(|p| p.shape[dim]).sum();
        let mut shape = first.shape.clone();
        shape[dim] = total;
        let mut data = Vec::with_capacity(parts.iter().map(|p| p.data.len()).sum());
        if dim == 0 {
            for p in parts {
                data.extend_from_slice(&p.data);
            }
        } else {
            for r in 0..first.shape[0] {
                for p in parts {
                    let rb = p.row_bytes();
                    data.extend_from_slice(&p.data[r * rb..(r + 1) * rb]);
                }
            }
        }
        Ok(RawTensor {
            dtype: first.dtype,
            shape,
            data,
        })
    }
}

impl View for &RawTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// The architecture numbers of a Llama checkpoint, as HF's `LlamaConfig` names them.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaDims {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub tie_word_embeddings: bool,
    pub bos_token_id: u32,
    pub eos_token_id: u32,
}

impl LlamaDims {
    /// `config.json` in the classic Llama-2 form (`rope_theta`, `rope_scaling: null`).
    pub fn config_json(&self, torch_dtype: &str) -> serde_json::Value {
        json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": null,
            "hidden_act": "silu",
            "initializer_range": 0.02,
            "attention_bias": false,
            "attention_dropout": 0.0,
            "mlp_bias": false,
            "pretraining_tp": 1,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "torch_dtype": torch_dtype,
            "use_cache": true,
        })
    }

    /// The HF names of every tensor a checkpoint with these dims must have, in a stable order.
    pub fn expected_names(&self) -> Vec<String> {
        let mut names = vec![
            "model.embed_tokens.weight".to_string(),
            "model.norm.weight".into(),
        ];
        if !self.tie_word_embeddings {
            names.push("lm_head.weight".into());
        }
        for l in 0..self.num_hidden_layers {
            let modules = ferrotune_core::model_shape::PROJECTION_PATHS
                .iter()
                .chain(&["input_layernorm", "post_attention_layernorm"]);
            for s in modules {
                names.push(format!("model.layers.{l}.{s}.weight"));
            }
        }
        names
    }
}

/// A tokenizer file to place in the output directory.
#[derive(Debug, Clone)]
pub struct ExtraFile {
    pub name: String,
    pub bytes: Vec<u8>,
}

fn dtype_name(d: Dtype) -> &'static str {
    match d {
        Dtype::F16 => "float16",
        Dtype::BF16 => "bfloat16",
        _ => "float32",
    }
}

/// Writes an HF Llama directory at `out`: checks that `tensors` holds exactly the tensors `dims` implies,
/// then writes everything into a temporary sibling directory and renames it over `out`.
pub fn write_hf_dir(
    out: &Path,
    dims: &LlamaDims,
    tensors: &BTreeMap<String, RawTensor>,
    extra: &[ExtraFile],
) -> Result<(), ConvertError> {
    let expected = dims.expected_names();
    for n in &expected {
        if !tensors.contains_key(n) {
            return Err(ConvertError::tensor(
                n,
                "missing from the converted checkpoint",
            ));
        }
    }
    if let Some(n) = tensors.keys().find(|k| !expected.contains(k)) {
        return Err(ConvertError::tensor(n, "unexpected in a Llama checkpoint"));
    }
    let dtype = tensors["model.embed_tokens.weight"].dtype;
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let st =
        safetensors::tensor::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), Some(meta))?;
    let gen = json!({
        "_from_model_config": true,
        "bos_token_id": dims.bos_token_id,
        "eos_token_id": dims.eos_token_id,
    });
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "converted".into());
    let tmp = out.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let pretty =
        |v: &serde_json::Value| serde_json::to_vec_pretty(v).expect("json values serialize");
    let result = (|| -> Result<(), ConvertError> {
        ferrotune_core::write_atomic(
            tmp.join("config.json"),
            &pretty(&dims.config_json(dtype_name(dtype))),
        )?;
        ferrotune_core::write_atomic(tmp.join("generation_config.json"), &pretty(&gen))?;
        ferrotune_core::write_atomic(tmp.join("model.safetensors"), &st)?;
        for f in extra {
            ferrotune_core::write_atomic(tmp.join(&f.name), &f.bytes)?;
        }
        ferrotune_core::fsutil::commit_dir(&tmp, out)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result?;
    tracing::info!(out = %out.display(), tensors = tensors.len(), "wrote HF checkpoint");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permute_matches_view_transpose_reshape() {
        // 2 heads, head_dim 4, 1 column: rows [h0: 0 1 2 3, h1: 4 5 6 7] -> [0 2 1 3, 4 6 5 7]
        let t = RawTensor::from_f32(vec![8, 1], &[0., 1., 2., 3., 4., 5., 6., 7.]);
        let p = t.permute_rotary_to_hf("q", 2).unwrap();
        assert_eq!(
            p,
            RawTensor::from_f32(vec![8, 1], &[0., 2., 1., 3., 4., 6., 5., 7.])
        );
        assert!(t.permute_rotary_to_hf("q", 3).is_err());
    }

    #[test]
    fn cat_along_rows_and_columns() {
        let a = RawTensor::from_f32(vec![2, 2], &[1., 2., 3., 4.]);
        let b = RawTensor::from_f32(vec![2, 1], &[5., 6.]);
        let c = RawTensor::cat("w", &[a.clone(), b.clone()], 1).unwrap();
        assert_eq!(
            c,
            RawTensor::from_f32(vec![2, 3], &[1., 2., 5., 3., 4., 6.])
        );
        let r = RawTensor::cat("w", &[a.clone(), a.clone()], 0).unwrap();
        assert_eq!(r.shape, vec![4, 2]);
        assert!(RawTensor::cat("w", &[a, b], 0).is_err());
    }
}
