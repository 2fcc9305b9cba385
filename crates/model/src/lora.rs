//! LoRA: the adapter config in PEFT's `adapter_config.json` form and one adapter's weights.
//!
//! `lora_A` is [r, in], `lora_B` is [out, r]; the output gains `scaling · B(A(dropout(x)))` with
//! `scaling = lora_alpha / r` (or `/ √r` with rsLoRA), computed in the adapter's dtype as PEFT does.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tch::{Kind, Tensor};

/// The projections LoRA can wrap, in checkpoint order.
pub const ALL_TARGETS: [&str; 7] = ferrotune_core::model_shape::PROJECTIONS;

/// PEFT's LoRA `adapter_config.json` (reading ignores unknown keys; writing emits the keys PEFT 0.21 writes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    #[serde(default = "default_peft_type")]
    pub peft_type: String,
    #[serde(default)]
    pub task_type: Option<String>,
    pub r: i64,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    /// Module names (`q_proj`, ...); `["all"]` or `"all-linear"` mean all seven projections.
    #[serde(default, deserialize_with = "de_targets")]
    pub target_modules: Vec<String>,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    #[serde(default = "default_bias")]
    pub bias: String,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub layers_to_transform: Option<Vec<i64>>,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub rank_pattern: Map<String, Value>,
    #[serde(default)]
    pub alpha_pattern: Map<String, Value>,
    #[serde(default = "default_true")]
    pub inference_mode: bool,
}

fn default_peft_type() -> String {
    "LORA".into()
}
fn default_bias() -> String {
    "none".into()
}
fn default_true() -> bool {
    true
}

fn de_targets<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => vec![s],
        Value::Array(a) => a
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => vec![],
    })
}

impl LoraConfig {
    /// A config for `targets` (`all` allowed) with rank `r` and `lora_alpha`.
    pub fn new(r: i64, lora_alpha: f64, targets: &[&str]) -> Self {
        LoraConfig {
            peft_type: default_peft_type(),
            task_type: Some("CAUSAL_LM".into()),
            r,
            lora_alpha,
            lora_dropout: 0.0,
            target_modules: targets.iter().map(|s| s.to_string()).collect(),
            use_rslora: false,
            modules_to_save: None,
            bias: default_bias(),
            fan_in_fan_out: false,
            use_dora: false,
            layers_to_transform: None,
            base_model_name_or_path: None,
            rank_pattern: Map::new(),
            alpha_pattern: Map::new(),
            inference_mode: true,
        }
    }

    /// The output multiplier: `alpha / r`, or `alpha / √r` with rsLoRA.
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    /// The projection names wrapped (`all` / `all-linear` expanded), in checkpoint order.
    pub fn targets(&self) -> Vec<&'static str> {
        let all = self
            .target_modules
            .iter()
            .any(|t| t == "all" || t == "all-linear");
        ALL_TARGETS
            .into_iter()
            .filter(|t| {
                all || self
                    .target_modules
                    .iter()
                    .any(|m| m == t || m.ends_with(&format!(".{t}")))
            })
            .collect()
    }

    /// Whether layer `i` gets adapters (`layers_to_transform`).
    pub fn applies_to_layer(&self, i: usize) -> bool {
        self.layers_to_transform
            .as_ref()
            .is_none_or(|l| l.contains(&(i as i64)))
    }

    /// Rejects what ferrotune does not implement, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.peft_type != "LORA" {
            return Err(format!("peft_type `{}` is not LORA", self.peft_type));
        }
        if self.r <= 0 {
            return Err(format!("r = {} must be positive", self.r));
        }
        if self.use_dora || self.fan_in_fan_out || self.bias != "none" {
            return Err(
                "use_dora, fan_in_fan_out and bias other than `none` are not supported".into(),
            );
        }
        if !self.rank_pattern.is_empty() || !self.alpha_pattern.is_empty() {
            return Err("rank_pattern / alpha_pattern are not supported".into());
        }
        if self.targets().is_empty() {
            return Err(format!(
                "target_modules {:?} names none of {ALL_TARGETS:?}",
                self.target_modules
            ));
        }
        if let Some(m) = self
            .modules_to_save
            .iter()
            .flatten()
            .find(|m| *m != "embed_tokens" && *m != "lm_head")
        {
            return Err(format!(
                "modules_to_save `{m}`: only embed_tokens and lm_head are supported"
            ));
        }
        Ok(())
    }

    /// The `adapter_config.json` content with every key PEFT 0.21 writes.
    pub fn to_peft_json(&self) -> Value {
        let mut v = serde_json::to_value(self).expect("LoraConfig serializes");
        let m = v.as_object_mut().expect("an object");
        for (k, d) in [
            ("alora_invocation_tokens", Value::Null),
            ("arrow_config", Value::Null),
            ("auto_mapping", Value::Null),
            ("corda_config", Value::Null),
            ("ensure_weight_tying", Value::Bool(false)),
            ("eva_config", Value::Null),
            ("exclude_modules", Value::Null),
            ("init_lora_weights", Value::Bool(true)),
            ("kasa_config", Value::Null),
            ("layer_replication", Value::Null),
            ("layers_pattern", Value::Null),
            ("loftq_config", Value::Object(Map::new())),
            ("lora_bias", Value::Bool(false)),
            ("lora_ga_config", Value::Null),
            ("megatron_config", Value::Null),
            ("megatron_core", Value::String("megatron.core".into())),
            ("monteclora_config", Value::Null),
            ("peft_version", Value::String("0.21.2".into())),
            ("qalora_group_size", Value::from(16)),
            ("revision", Value::Null),
            ("target_parameters", Value::Null),
            ("trainable_token_indices", Value::Null),
            ("use_bdlora", Value::Null),
            ("use_qalora", Value::Bool(false)),
            ("velora_config", Value::Null),
        ] {
            m.entry(k).or_insert(d);
        }
        let targets: Vec<Value> = self.targets().into_iter().map(Value::from).collect();
        m.insert("target_modules".into(), Value::Array(targets));
        if self.lora_alpha.fract() == 0.0 {
            m.insert("lora_alpha".into(), Value::from(self.lora_alpha as i64));
        }
        v
    }
}

/// One adapter on one projection.
#[derive(Debug)]
pub struct LoraAdapter {
    /// [r, in]
    pub lora_a: Tensor,
    /// [out, r]
    pub lora_b: Tensor,
    pub scaling: f64,
    pub dropout: f64,
}

impl LoraAdapter {
    /// `scaling · B(A(dropout(x)))` in the adapter's dtype.
    pub fn delta(&self, x: &Tensor, training: bool) -> Tensor {
        let x = x.to_kind(self.lora_a.kind());
        let x = if training && self.dropout > 0.0 {
            x.dropout(self.dropout, true)
        } else {
            x
        };
        x.matmul(&self.lora_a.tr()).matmul(&self.lora_b.tr()) * self.scaling
    }

    /// `scaling · B A` [out, in].
    pub fn delta_weight(&self) -> Tensor {
        self.lora_b
            .to_kind(Kind::Float)
            .matmul(&self.lora_a.to_kind(Kind::Float))
            * self.scaling
    }
}

/// splitmix64: a tiny seeded generator so adapter init does not depend on (or disturb) torch's global RNG.
pub(crate) struct SplitMix(pub u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// `n` floats uniform in [-bound, bound).
    pub fn uniform(&mut self, n: usize, bound: f64) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let u = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                ((2.0 * u - 1.0) * bound) as f32
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_peft_config_and_writes_its_keys() {
        let j = r#"{"peft_type":"LORA","r":4,"lora_alpha":8,"target_modules":["v_proj","q_proj"],"use_rslora":true,
            "modules_to_save":["lm_head"],"some_future_key":{"x":1},"lora_dropout":0.05}"#;
        let c: LoraConfig = serde_json::from_str(j).unwrap();
        assert_eq!(c.targets(), vec!["q_proj", "v_proj"]);
        assert!((c.scaling() - 4.0).abs() < 1e-12);
        c.validate().unwrap();
        let out = c.to_peft_json();
        assert_eq!(out["lora_alpha"], 8);
        assert_eq!(out["peft_version"], "0.21.2");
        let all: LoraConfig =
            serde_json::from_str(r#"{"r":2,"lora_alpha":4,"target_modules":"all-linear"}"#)
                .unwrap();
        assert_eq!(all.targets().len(), 7);
        let bad: LoraConfig =
            serde_json::from_str(r#"{"r":2,"lora_alpha":4,"target_modules":["foo"]}"#).unwrap();
        assert!(bad.validate().unwrap_err().contains("foo"));
    }
}
