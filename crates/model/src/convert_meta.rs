//! Meta's original LLaMA / Llama-2 checkpoint (`consolidated.NN.pth` + `params.json`) → HF Llama directory.
//!
//! Model-parallel shards are merged as Meta's fairscale layers split them: column-parallel weights
//! (`wq`, `wk`, `wv`, `w1`, `w3`, `output`) along dim 0, row-parallel ones (`wo`, `w2`) along dim 1, the
//! `ParallelEmbedding` along dim 1; norms are replicated (taken from shard 0). q/k rows are permuted from
//! Meta's interleaved (complex) rotary pairs to HF's halves, with the KV head count for `wk`. Dimensions come
//! from `params.json` and the merged tensor shapes (vocab from the embedding, intermediate from `w1`).
//! The `.pth` files are read by [`crate::convert_pickle`].

use crate::convert::{write_hf_dir, ConvertError, LlamaDims, RawTensor};
use crate::convert_pickle::load_torch_state_dict;
use crate::convert_vocab::tokenizer_files;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The fields of Meta's `params.json` the conversion uses.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct MetaParams {
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    #[serde(default)]
    pub n_kv_heads: Option<usize>,
    #[serde(default = "default_eps")]
    pub norm_eps: f64,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub max_seq_len: Option<usize>,
}

fn default_eps() -> f64 {
    1e-5
}

/// How a weight's shards are joined: `Some(dim)` to concatenate, `None` when replicated.
fn shard_dim(meta_name: &str) -> Option<usize> {
    let leaf = meta_name
        .trim_end_matches(".weight")
        .rsplit('.')
        .next()
        .unwrap_or("");
    match leaf {
        "wq" | "wk" | "wv" | "w1" | "w3" | "output" => Some(0),
        "wo" | "w2" | "tok_embeddings" => Some(1),
        _ => None,
    }
}

fn hf_name(meta: &str) -> Option<String> {
    match meta {
        "tok_embeddings.weight" => return Some("model.embed_tokens.weight".into()),
        "norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = meta.strip_prefix("layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let sub = match part {
        "attention.wq.weight" => "self_attn.q_proj",
        "attention.wk.weight" => "self_attn.k_proj",
        "attention.wv.weight" => "self_attn.v_proj",
        "attention.wo.weight" => "self_attn.o_proj",
        "feed_forward.w1.weight" => "mlp.gate_proj",
        "feed_forward.w2.weight" => "mlp.down_proj",
        "feed_forward.w3.weight" => "mlp.up_proj",
        "attention_norm.weight" => "input_layernorm",
        "ffn_norm.weight" => "post_attention_layernorm",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{sub}.weight"))
}

/// The `consolidated.*.pth` shards of `dir`, in shard order.
pub fn find_shards(dir: &Path) -> Result<Vec<PathBuf>, ConvertError> {
    let mut shards: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| ConvertError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            n.starts_with("consolidated.") && n.ends_with(".pth")
        })
        .collect();
    shards.sort();
    if shards.is_empty() {
        return Err(ConvertError::format(dir, "no consolidated.*.pth shards"));
    }
    Ok(shards)
}

/// Reads and merges a Meta checkpoint directory into HF-named tensors and dims.
pub fn read_meta(dir: &Path) -> Result<(LlamaDims, BTreeMap<String, RawTensor>), ConvertError> {
    let params_path = dir.join("params.json");
    let text =
        std::fs::read_to_string(&params_path).map_err(|e| ConvertError::io(&params_path, e))?;
    let p: MetaParams = serde_json::from_str(&text)
        .map_err(|e| ConvertError::format(&params_path, e.to_string()))?;
    let n_kv = p.n_kv_heads.unwrap_or(p.n_heads);
    let shards = find_shards(dir)?;
    let mut per_name: BTreeMap<String, Vec<RawTensor>> = BTreeMap::new();
    for s in &shards {
        tracing::info!(shard = %s.display(), "reading");
        for (k, v) in load_torch_state_dict(s)? {
            per_name.entry(k).or_default().push(v);
        }
    }
    let mut tensors = BTreeMap::new();
    for (meta, parts) in per_name {
        let Some(name) = hf_name(&meta) else {
            tracing::debug!(tensor = %meta, "skipping (no HF counterpart)");
            continue;
        };
        if parts.len() != shards.len() {
            return Err(ConvertError::tensor(
                &meta,
                format!("in {} of {} shards", parts.len(), shards.len()),
            ));
        }
        let merged = match shard_dim(&meta) {
            Some(d) => RawTensor::cat(&meta, &parts, d)?,
            None => parts.into_iter().next().expect("at least one shard"),
        };
        let merged = if name.ends_with("q_proj.weight") {
            merged.permute_rotary_to_hf(&name, p.n_heads)?
        } else if name.ends_with("k_proj.weight") {
            merged.permute_rotary_to_hf(&name, n_kv)?
        } else {
            merged
        };
        tensors.insert(name, merged);
    }
    let shape0 = |n: &str| {
        tensors
            .get(n)
            .map(|t: &RawTensor| t.shape[0])
            .ok_or_else(|| ConvertError::tensor(n, "missing from the Meta checkpoint"))
    };
    let embed = tensors.get("model.embed_tokens.weight").ok_or_else(|| {
        ConvertError::tensor("tok_embeddings.weight", "missing from the Meta checkpoint")
    })?;
    if embed.shape.get(1) != Some(&p.dim) {
        return Err(ConvertError::format(
            &params_path,
            format!(
                "dim {} but the merged embedding is {:?}",
                p.dim, embed.shape
            ),
        ));
    }
    let dims = LlamaDims {
        hidden_size: p.dim,
        intermediate_size: shape0("model.layers.0.mlp.gate_proj.weight")?,
        num_hidden_layers: p.n_layers,
        num_attention_heads: p.n_heads,
        num_key_value_heads: n_kv,
        vocab_size: embed.shape[0],
        max_position_embeddings: p.max_seq_len.unwrap_or(4096),
        rms_norm_eps: p.norm_eps,
        rope_theta: p.rope_theta.unwrap_or(10000.0),
        tie_word_embeddings: false,
        bos_token_id: 1,
        eos_token_id: 2,
    };
    Ok((dims, tensors))
}

/// `ferrotune convert --from meta`: writes the HF directory `out`, with `tokenizer` (a SentencePiece
/// `tokenizer.model`) copied beside the weights.
pub fn convert_meta(
    dir: &Path,
    tokenizer: Option<&Path>,
    out: &Path,
) -> Result<LlamaDims, ConvertError> {
    let (dims, tensors) = read_meta(dir)?;
    let tok = tokenizer.map(Path::to_path_buf).or_else(|| {
        let p = dir.join("tokenizer.model");
        p.is_file().then_some(p)
    });
    let extra = match tok {
        Some(p) => {
            let bytes = std::fs::read(&p).map_err(|e| ConvertError::io(&p, e))?;
            tokenizer_files(bytes, "<s>", "</s>", "<unk>")
        }
        None => {
            tracing::warn!(
                "no --tokenizer given and no tokenizer.model in the input: no tokenizer written"
            );
            Vec::new()
        }
    };
    write_hf_dir(out, &dims, &tensors, &extra)?;
    Ok(dims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_shard_dims() {
        assert_eq!(
            hf_name("layers.3.attention.wk.weight").unwrap(),
            "model.layers.3.self_attn.k_proj.weight"
        );
        assert_eq!(
            hf_name("layers.0.feed_forward.w2.weight").unwrap(),
            "model.layers.0.mlp.down_proj.weight"
        );
        assert!(hf_name("rope.freqs").is_none());
        assert_eq!(shard_dim("layers.0.attention.wo.weight"), Some(1));
        assert_eq!(shard_dim("layers.0.feed_forward.w3.weight"), Some(0));
        assert_eq!(shard_dim("tok_embeddings.weight"), Some(1));
        assert_eq!(shard_dim("output.weight"), Some(0));
        assert_eq!(shard_dim("layers.0.ffn_norm.weight"), None);
    }
}
