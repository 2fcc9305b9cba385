//! `LlamaConfig`: the HF `config.json` of Llama / Mistral / Qwen2-style decoders.
//!
//! Both forms found in the wild are read: the classic one (`rope_theta` + `rope_scaling`, every Llama-2
//! checkpoint) and transformers ≥ 5's (`rope_parameters` with `rope_type`, `rope_theta`, `factor`, ...).
//! Unknown keys are kept and written back by `to_json`, which always writes the classic form (transformers 5
//! reads it).

use crate::error::ModelError;
use ferrotune_core::DType;
use serde_json::{json, Map, Value};
use std::path::Path;

/// How rotary frequencies are rescaled for long contexts (transformers' `rope_type`).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Positions divided by `factor`.
    Linear { factor: f64 },
    /// NTK-aware base rescaling once a sequence exceeds `max_position_embeddings`.
    Dynamic { factor: f64 },
    /// Llama 3.1's per-frequency smoothing.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: i64,
    },
}

/// A decoder's architecture hyper-parameters, with HF's field names.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub model_type: String,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub head_dim: i64,
    pub hidden_act: String,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: i64,
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v/o (Llama's `attention_bias`); Qwen2 has bias on q/k/v only, see [`LlamaConfig::o_proj_bias`].
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub bos_token_id: Option<i64>,
    /// One or several end-of-sequence ids (HF allows an int or a list).
    pub eos_token_id: Vec<i64>,
    pub pad_token_id: Option<i64>,
    pub torch_dtype: Option<DType>,
    /// Every other key of the file, written back unchanged.
    pub extra: Map<String, Value>,
}

fn take(m: &mut Map<String, Value>, k: &str) -> Option<Value> {
    m.remove(k).filter(|v| !v.is_null())
}

fn int(m: &mut Map<String, Value>, k: &str) -> Result<Option<i64>, ModelError> {
    take(m, k)
        .map(|v| {
            v.as_i64()
                .ok_or_else(|| ModelError::config(k, format!("expected an integer, got {v}")))
        })
        .transpose()
}

fn req_int(m: &mut Map<String, Value>, k: &str) -> Result<i64, ModelError> {
    int(m, k)?.ok_or_else(|| ModelError::config(k, "missing"))
}

fn float(m: &mut Map<String, Value>, k: &str) -> Result<Option<f64>, ModelError> {
    take(m, k)
        .map(|v| {
            v.as_f64()
                .ok_or_else(|| ModelError::config(k, format!("expected a number, got {v}")))
        })
        .transpose()
}

fn boolean(m: &mut Map<String, Value>, k: &str) -> Result<Option<bool>, ModelError> {
    take(m, k)
        .map(|v| {
            v.as_bool()
                .ok_or_else(|| ModelError::config(k, format!("expected true/false, got {v}")))
        })
        .transpose()
}

fn parse_rope(v: &Value, field: &str) -> Result<(Option<f64>, Option<RopeScaling>), ModelError> {
    let obj = v
        .as_object()
        .ok_or_else(|| ModelError::config(field, "expected an object"))?;
    let theta = obj.get("rope_theta").and_then(Value::as_f64);
    let ty = obj
        .get("rope_type")
        .or_else(|| obj.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let f = |k: &str| -> Result<f64, ModelError> {
        obj.get(k)
            .and_then(Value::as_f64)
            .ok_or_else(|| ModelError::config(&format!("{field}.{k}"), "missing or not a number"))
    };
    let scaling = match ty {
        "default" => None,
        "linear" => Some(RopeScaling::Linear {
            factor: f("factor")?,
        }),
        "dynamic" => Some(RopeScaling::Dynamic {
            factor: f("factor")?,
        }),
        "llama3" => Some(RopeScaling::Llama3 {
            factor: f("factor")?,
            low_freq_factor: f("low_freq_factor")?,
            high_freq_factor: f("high_freq_factor")?,
            original_max_position_embeddings: f("original_max_position_embeddings")? as i64,
        }),
        other => {
            return Err(ModelError::config(
                &format!("{field}.rope_type"),
                format!("`{other}` is not supported (expected default, linear, dynamic or llama3)"),
            ))
        }
    };
    Ok((theta, scaling))
}

impl LlamaConfig {
    /// Reads `config.json`.
    pub fn from_json_file(p: &Path) -> Result<Self, ModelError> {
        let s = std::fs::read_to_string(p).map_err(|e| ModelError::io(p, e))?;
        Self::from_json_str(&s).map_err(|e| match e {
            ModelError::Config { field, msg } => {
                ModelError::ckpt(p, format!("field `{field}`: {msg}"))
            }
            other => other,
        })
    }

    /// Parses the text of a `config.json`.
    pub fn from_json_str(s: &str) -> Result<Self, ModelError> {
        let v: Value = serde_json::from_str(s).map_err(|e| ModelError::Json {
            path: "config.json".into(),
            source: e,
        })?;
        let Value::Object(mut m) = v else {
            return Err(ModelError::config("<root>", "expected a JSON object"));
        };
        let model_type = take(&mut m, "model_type")
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "llama".into());
        let hidden_size = req_int(&mut m, "hidden_size")?;
        let num_attention_heads = req_int(&mut m, "num_attention_heads")?;
        let num_key_value_heads =
            int(&mut m, "num_key_value_heads")?.unwrap_or(num_attention_heads);
        let head_dim = int(&mut m, "head_dim")?.unwrap_or(hidden_size / num_attention_heads.max(1));
        if num_attention_heads <= 0
            || num_key_value_heads <= 0
            || num_attention_heads % num_key_value_heads != 0
        {
            return Err(ModelError::config(
                "num_key_value_heads",
                format!(
                    "{num_key_value_heads} must divide num_attention_heads {num_attention_heads}"
                ),
            ));
        }
        let mut rope_theta = float(&mut m, "rope_theta")?;
        let mut rope_scaling = None;
        if let Some(rs) = take(&mut m, "rope_scaling") {
            let (t, s) = parse_rope(&rs, "rope_scaling")?;
            rope_theta = rope_theta.or(t);
            rope_scaling = s;
        }
        if let Some(rp) = take(&mut m, "rope_parameters") {
            let (t, s) = parse_rope(&rp, "rope_parameters")?;
            rope_theta = t.or(rope_theta);
            rope_scaling = s.or(rope_scaling);
        }
        let eos_token_id = match take(&mut m, "eos_token_id") {
            None => vec![],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_i64).collect(),
            Some(v) => vec![v.as_i64().ok_or_else(|| {
                ModelError::config("eos_token_id", format!("expected an id, got {v}"))
            })?],
        };
        let torch_dtype = match take(&mut m, "torch_dtype").or_else(|| take(&mut m, "dtype")) {
            None => None,
            Some(v) => v.as_str().and_then(|s| s.parse::<DType>().ok()),
        };
        let hidden_act = take(&mut m, "hidden_act")
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "silu".into());
        if hidden_act != "silu" {
            return Err(ModelError::config(
                "hidden_act",
                format!("`{hidden_act}` is not supported (silu only)"),
            ));
        }
        let cfg = LlamaConfig {
            vocab_size: req_int(&mut m, "vocab_size")?,
            intermediate_size: req_int(&mut m, "intermediate_size")?,
            num_hidden_layers: req_int(&mut m, "num_hidden_layers")?,
            rms_norm_eps: float(&mut m, "rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta: rope_theta.unwrap_or(10000.0),
            max_position_embeddings: int(&mut m, "max_position_embeddings")?.unwrap_or(2048),
            tie_word_embeddings: boolean(&mut m, "tie_word_embeddings")?.unwrap_or(false),
            attention_bias: boolean(&mut m, "attention_bias")?.unwrap_or(model_type == "qwen2"),
            mlp_bias: boolean(&mut m, "mlp_bias")?.unwrap_or(false),
            bos_token_id: int(&mut m, "bos_token_id")?,
            pad_token_id: int(&mut m, "pad_token_id")?,
            model_type,
            hidden_size,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            hidden_act,
            rope_scaling,
            eos_token_id,
            torch_dtype,
            extra: m,
        };
        Ok(cfg)
    }

    /// Whether `o_proj` has a bias (Qwen2 puts bias on q/k/v only).
    pub fn o_proj_bias(&self) -> bool {
        self.attention_bias && self.model_type != "qwen2"
    }

    /// The `config.json` content (classic rope form), unknown keys included.
    pub fn to_json(&self) -> Value {
        let mut m = self.extra.clone();
        let mut put = |k: &str, v: Value| {
            m.insert(k.to_string(), v);
        };
        put("model_type", json!(self.model_type));
        put("vocab_size", json!(self.vocab_size));
        put("hidden_size", json!(self.hidden_size));
        put("intermediate_size", json!(self.intermediate_size));
        put("num_hidden_layers", json!(self.num_hidden_layers));
        put("num_attention_heads", json!(self.num_attention_heads));
        put("num_key_value_heads", json!(self.num_key_value_heads));
        put("head_dim", json!(self.head_dim));
        put("hidden_act", json!(self.hidden_act));
        put("rms_norm_eps", json!(self.rms_norm_eps));
        put("rope_theta", json!(self.rope_theta));
        put(
            "rope_scaling",
            match &self.rope_scaling {
                None => Value::Null,
                Some(RopeScaling::Linear { factor }) => {
                    json!({"rope_type": "linear", "factor": factor})
                }
                Some(RopeScaling::Dynamic { factor }) => {
                    json!({"rope_type": "dynamic", "factor": factor})
                }
                Some(RopeScaling::Llama3 {
                    factor,
                    low_freq_factor,
                    high_freq_factor,
                    original_max_position_embeddings,
                }) => {
                    json!({"rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                    "high_freq_factor": high_freq_factor,
                    "original_max_position_embeddings": original_max_position_embeddings})
                }
            },
        );
        put(
            "max_position_embeddings",
            json!(self.max_position_embeddings),
        );
        put("tie_word_embeddings", json!(self.tie_word_embeddings));
        if self.model_type != "qwen2" {
            put("attention_bias", json!(self.attention_bias));
            put("mlp_bias", json!(self.mlp_bias));
        }
        put("bos_token_id", json!(self.bos_token_id));
        put(
            "eos_token_id",
            match self.eos_token_id.as_slice() {
                [] => Value::Null,
                [one] => json!(one),
                many => json!(many),
            },
        );
        put("pad_token_id", json!(self.pad_token_id));
        if let Some(d) = self.torch_dtype {
            put("torch_dtype", json!(d.hf_name()));
        }
        if !m.contains_key("architectures") {
            let arch = match self.model_type.as_str() {
                "mistral" => "MistralForCausalLM",
                "qwen2" => "Qwen2ForCausalLM",
                _ => "LlamaForCausalLM",
            };
            m.insert("architectures".into(), json!([arch]));
        }
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLASSIC: &str = r#"{"architectures":["LlamaForCausalLM"],"hidden_size":64,"intermediate_size":128,
        "num_attention_heads":4,"num_hidden_layers":2,"vocab_size":100,"rms_norm_eps":1e-5,"rope_theta":500000.0,
        "rope_scaling":{"factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
        "original_max_position_embeddings":8192,"rope_type":"llama3"},"eos_token_id":[1,2],"torch_dtype":"bfloat16",
        "custom_key":7}"#;

    #[test]
    fn reads_classic_and_v5_forms_alike() {
        let a = LlamaConfig::from_json_str(CLASSIC).unwrap();
        assert_eq!(a.num_key_value_heads, 4);
        assert_eq!(a.head_dim, 16);
        assert_eq!(a.rope_theta, 500000.0);
        assert!(matches!(
            a.rope_scaling,
            Some(RopeScaling::Llama3 {
                original_max_position_embeddings: 8192,
                ..
            })
        ));
        assert_eq!(a.eos_token_id, vec![1, 2]);
        assert_eq!(a.torch_dtype, Some(DType::BF16));
        let v5 = CLASSIC
            .replace(r#""rope_theta":500000.0,"#, "")
            .replace("rope_scaling", "rope_parameters")
            .replace(
                r#""rope_type":"llama3""#,
                r#""rope_type":"llama3","rope_theta":500000.0"#,
            );
        let b = LlamaConfig::from_json_str(&v5).unwrap();
        assert_eq!(a, b);
        let back = LlamaConfig::from_json_str(&a.to_json().to_string()).unwrap();
        assert_eq!(back, a);
        assert_eq!(a.to_json()["custom_key"], 7);
    }

    #[test]
    fn errors_name_the_field() {
        let e =
            LlamaConfig::from_json_str(&CLASSIC.replace(r#""hidden_size":64,"#, "")).unwrap_err();
        assert!(e.to_string().contains("hidden_size"), "{e}");
        let e = LlamaConfig::from_json_str(&CLASSIC.replace("llama3", "yarn")).unwrap_err();
        assert!(e.to_string().contains("yarn"), "{e}");
    }
}
