//! The shape of a Llama-family decoder as far as memory arithmetic needs it: the Llama-2 presets (7b, 13b,
//! 70b with grouped-query attention), the few fields of an HF `config.json`, and parameter counts split into
//! the seven projections per layer (what QLoRA quantizes and LoRA wraps) and the rest (embeddings, norms,
//! `lm_head`).
//!
//! Kept free of tch (and of the model crate) so the estimator runs anywhere in microseconds.

use serde_json::Value;

/// The seven projections of a decoder layer, in checkpoint order.
pub const PROJECTIONS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// The module path of each projection inside a decoder layer (`model.layers.{i}.<path>.weight`), in
/// [`PROJECTIONS`] order.
pub const PROJECTION_PATHS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// Hyper-parameters that determine parameter counts and activation sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelShape {
    /// A short label for tables (`7b`, or the directory name).
    pub name: String,
    pub vocab_size: u64,
    pub hidden_size: u64,
    pub intermediate_size: u64,
    pub num_hidden_layers: u64,
    pub num_attention_heads: u64,
    pub num_key_value_heads: u64,
    pub head_dim: u64,
    pub tie_word_embeddings: bool,
}

/// A `config.json` that lacks a field the estimator needs, or is not JSON.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {message}")]
pub struct ShapeError {
    pub source_name: String,
    pub message: String,
}

impl ModelShape {
    /// Llama-2 7B / 13B / 70B (`7b`, `13b`, `70b`, case-insensitive, `llama2-` prefix allowed).
    pub fn preset(name: &str) -> Option<ModelShape> {
        let n = name.to_ascii_lowercase();
        let n = n
            .trim_start_matches("llama-2-")
            .trim_start_matches("llama2-");
        let (h, i, l, nh, nkv) = match n {
            "7b" => (4096, 11008, 32, 32, 32),
            "13b" => (5120, 13824, 40, 40, 40),
            "70b" => (8192, 28672, 80, 64, 8),
            _ => return None,
        };
        Some(ModelShape {
            name: n.to_string(),
            vocab_size: 32000,
            hidden_size: h,
            intermediate_size: i,
            num_hidden_layers: l,
            num_attention_heads: nh,
            num_key_value_heads: nkv,
            head_dim: h / nh,
            tie_word_embeddings: false,
        })
    }

    /// Reads the fields of an HF `config.json` text; `source_name` labels errors and the table.
    pub fn from_config_json(text: &str, source_name: &str) -> Result<ModelShape, ShapeError> {
        let err = |m: String| ShapeError {
            source_name: source_name.to_string(),
            message: m,
        };
        let v: Value = serde_json::from_str(text).map_err(|e| err(format!("not JSON: {e}")))?;
        let get = |k: &str| v.get(k).and_then(Value::as_u64);
        let req =
            |k: &str| get(k).ok_or_else(|| err(format!("`{k}` is missing or not an integer")));
        let hidden = req("hidden_size")?;
        let heads = req("num_attention_heads")?;
        if heads == 0 {
            return Err(err("`num_attention_heads` is 0".into()));
        }
        Ok(ModelShape {
            name: source_name.to_string(),
            vocab_size: req("vocab_size")?,
            hidden_size: hidden,
            intermediate_size: req("intermediate_size")?,
            num_hidden_layers: req("num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: get("num_key_value_heads").unwrap_or(heads),
            head_dim: get("head_dim").unwrap_or(hidden / heads),
            tie_word_embeddings: v
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
    }

    /// `(out_features, in_features)` of projection `name` (one of [`PROJECTIONS`]).
    pub fn projection_shape(&self, name: &str) -> (u64, u64) {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        match name {
            "q_proj" => (q, h),
            "k_proj" | "v_proj" => (kv, h),
            "o_proj" => (h, q),
            "gate_proj" | "up_proj" => (i, h),
            "down_proj" => (h, i),
            other => panic!("not a Llama projection: {other}"),
        }
    }

    /// Parameters of the seven projections of one layer.
    pub fn layer_projection_params(&self) -> u64 {
        PROJECTIONS
            .iter()
            .map(|p| {
                let (o, i) = self.projection_shape(p);
                o * i
            })
            .sum()
    }

    /// Parameters that are not in a projection: embeddings, `lm_head` (unless tied), all RMSNorm weights.
    pub fn other_params(&self) -> u64 {
        let emb = self.vocab_size * self.hidden_size;
        let head = if self.tie_word_embeddings { 0 } else { emb };
        emb + head + (2 * self.num_hidden_layers + 1) * self.hidden_size
    }

    /// Every parameter of the model.
    pub fn total_params(&self) -> u64 {
        self.num_hidden_layers * self.layer_projection_params() + self.other_params()
    }

    /// LoRA parameters of rank `r` on `targets` (projection names) in every layer: `r·(in + out)` each.
    pub fn lora_params(&self, r: u64, targets: &[String]) -> u64 {
        let per_layer: u64 = PROJECTIONS
            .iter()
            .filter(|p| targets.iter().any(|t| t == *p))
            .map(|p| {
                let (o, i) = self.projection_shape(p);
                r * (o + i)
            })
            .sum();
        per_layer * self.num_hidden_layers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama2_presets_have_the_published_parameter_counts() {
        // Meta's model card rounds to 7B / 13B / 70B; the exact counts of the HF checkpoints are
        // 6,738,415,616 / 13,015,864,320 / 68,976,648,192.
        let p = |n: &str| ModelShape::preset(n).unwrap().total_params();
        assert_eq!(p("7b"), 6_738_415_616);
        assert_eq!(p("13B"), 13_015_864_320);
        assert_eq!(p("llama2-70b"), 68_976_648_192);
        assert!(ModelShape::preset("8b").is_none());
    }

    #[test]
    fn config_json_and_lora_counts() {
        let s = ModelShape::from_config_json(
            r#"{"vocab_size": 100, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": true}"#,
            "tiny",
        )
        .unwrap();
        assert_eq!(s.head_dim, 8);
        assert_eq!(s.projection_shape("k_proj"), (16, 32));
        // q 32x32, k/v 16x32, o 32x32, gate/up 64x32, down 32x64
        assert_eq!(
            s.layer_projection_params(),
            1024 + 2 * 512 + 1024 + 3 * 2048
        );
        assert_eq!(s.other_params(), 3200 + 5 * 32);
        // PEFT counts r*(in+out) per wrapped module: q (32+32), v (32+16) at r=4, two layers.
        let t = vec!["q_proj".to_string(), "v_proj".to_string()];
        assert_eq!(s.lora_params(4, &t), 2 * 4 * (64 + 48));
        let e = ModelShape::from_config_json(r#"{"hidden_size": 4}"#, "x/config.json").unwrap_err();
        assert!(e.to_string().contains("x/config.json"), "{e}");
    }
}
