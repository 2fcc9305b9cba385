//! The shared vocabulary of quantized weights: [`QuantSpec`] / [`QuantMethod`] (what to quantize to), the
//! [`QuantKernel`] trait every quantized projection implements (NF4/FP4/int8 here, GPTQ/RTN int4 in `gptq*`),
//! [`QuantWeight`], the box a model projection holds so that saving can find the kernel again, and the
//! HF-style `quantization_config` of `config.json`.

use crate::error::QuantError;
use ferrotune_model::{BaseWeight, LinearKernel};
use serde_json::{json, Value};
use tch::{Kind, Tensor};

/// A quantized base weight. Implementors dequantize on the fly in [`LinearKernel::matmul`] (no gradient reaches
/// their tensors; the input's gradient flows, so LoRA on top trains) and return the dense weight for merging.
pub trait QuantKernel: LinearKernel {
    /// The method name as in `quantization_config.quant_method` terms: `nf4`, `fp4`, `int8`, `gptq`, `rtn`.
    fn method(&self) -> &'static str;
    /// The tensors to store, keyed `{prefix}.{name}` (prefix = the projection key without `.weight`,
    /// e.g. `model.layers.0.self_attn.q_proj`). Loading them back is [`crate::load::kernel_from_tensors`].
    fn tensors(&self, prefix: &str) -> Vec<(String, Tensor)>;
    /// Bytes this kernel keeps resident (packed weights + all quantization state).
    fn resident_bytes(&self) -> usize;
}

/// What a projection holds when quantized: `BaseWeight::Kernel(Box<QuantWeight>)`. [`quant_kernel`] finds it again.
#[derive(Debug)]
pub struct QuantWeight(pub Box<dyn QuantKernel>);

impl LinearKernel for QuantWeight {
    fn matmul(&self, x: &Tensor) -> Tensor {
        self.0.matmul(x)
    }
    fn dense_weight(&self, kind: Kind) -> Tensor {
        self.0.dense_weight(kind)
    }
    fn shape(&self) -> (i64, i64) {
        self.0.shape()
    }
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

impl QuantWeight {
    /// The base weight of a projection holding `k`.
    pub fn base(k: Box<dyn QuantKernel>) -> BaseWeight {
        BaseWeight::Kernel(Box::new(QuantWeight(k)))
    }
}

/// The quantized kernel of a projection's base weight, if it is one.
pub fn quant_kernel(w: &BaseWeight) -> Option<&dyn QuantKernel> {
    match w {
        BaseWeight::Kernel(k) => k
            .as_any()?
            .downcast_ref::<QuantWeight>()
            .map(|q| q.0.as_ref()),
        BaseWeight::Dense(_) => None,
    }
}

/// The quantization method and its own settings.
#[derive(Debug, Clone, PartialEq)]
pub enum QuantMethod {
    /// LLM.int8-style: int8 per output row, absmax scaled (`round(127·w/absmax)`). With `threshold`, input
    /// columns holding a weight with |w| ≥ threshold stay 16-bit and are multiplied separately.
    Int8 { threshold: Option<f32> },
    /// 4-bit NormalFloat, blockwise absmax (bitsandbytes' table and packing).
    Nf4,
    /// 4-bit float (bitsandbytes' FP4 table: sign + 3 bits, bias 3), blockwise absmax.
    Fp4,
    /// Round-to-nearest int`bits` with groups of `group_size` input columns (the `rtn*` files).
    Rtn { bits: u8, group_size: i64 },
    /// GPTQ int`bits` with groups of `group_size`, optional act-order (the `gptq*` files; needs calibration).
    Gptq {
        bits: u8,
        group_size: i64,
        act_order: bool,
    },
}

/// How to quantize a model's decoder projections.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantSpec {
    pub method: QuantMethod,
    /// 4-bit only: quantize the fp32 absmax again (mean removed, 8-bit dynamic code, blocks of 256).
    pub double_quant: bool,
    /// The dtype forwards dequantize to and multiply in (`Float`, `Half`, `BFloat16`).
    pub compute_dtype: Kind,
    /// 4-bit block size (elements sharing one absmax); bitsandbytes' default 64.
    pub block_size: i64,
}

/// bitsandbytes' 4-bit block size.
pub const DEFAULT_BLOCK_SIZE: i64 = 64;
/// bitsandbytes' block size for the double quantization of the absmax.
pub const DOUBLE_QUANT_BLOCK_SIZE: i64 = 256;

impl QuantSpec {
    /// `method` with bitsandbytes' defaults: no double quant, bf16 compute, block 64.
    pub fn new(method: QuantMethod) -> Self {
        QuantSpec {
            method,
            double_quant: false,
            compute_dtype: Kind::BFloat16,
            block_size: DEFAULT_BLOCK_SIZE,
        }
    }
    /// NF4 with double quantization (QLoRA's setting).
    pub fn nf4_double_quant() -> Self {
        QuantSpec {
            double_quant: true,
            ..QuantSpec::new(QuantMethod::Nf4)
        }
    }
    pub fn with_compute_dtype(mut self, k: Kind) -> Self {
        self.compute_dtype = k;
        self
    }

    /// The short method name (`nf4`, `fp4`, `int8`, `rtn`, `gptq`).
    pub fn method_name(&self) -> &'static str {
        match self.method {
            QuantMethod::Int8 { .. } => "int8",
            QuantMethod::Nf4 => "nf4",
            QuantMethod::Fp4 => "fp4",
            QuantMethod::Rtn { .. } => "rtn",
            QuantMethod::Gptq { .. } => "gptq",
        }
    }

    /// Bits per stored weight.
    pub fn bits(&self) -> u8 {
        match self.method {
            QuantMethod::Int8 { .. } => 8,
            QuantMethod::Nf4 | QuantMethod::Fp4 => 4,
            QuantMethod::Rtn { bits, .. } | QuantMethod::Gptq { bits, .. } => bits,
        }
    }

    /// Checks the settings before any work.
    pub fn validate(&self) -> Result<(), QuantError> {
        if !matches!(
            self.compute_dtype,
            Kind::Float | Kind::Half | Kind::BFloat16
        ) {
            return Err(QuantError::Spec(format!(
                "compute dtype {:?} is not one of fp32, fp16, bf16",
                self.compute_dtype
            )));
        }
        if self.block_size < 2 || self.block_size % 2 != 0 {
            return Err(QuantError::Spec(format!(
                "block size {} must be even and ≥ 2",
                self.block_size
            )));
        }
        if self.double_quant && !matches!(self.method, QuantMethod::Nf4 | QuantMethod::Fp4) {
            return Err(QuantError::Spec(format!(
                "double quantization applies to nf4/fp4, not {}",
                self.method_name()
            )));
        }
        Ok(())
    }

    /// The `quantization_config` object written into `config.json` (transformers' BitsAndBytesConfig keys for
    /// nf4/fp4/int8, plus `block_size`; GPTQ/RTN use `bits`, `group_size`, `desc_act`).
    pub fn to_hf_config(&self) -> Value {
        let compute = hf_dtype_name(self.compute_dtype);
        match &self.method {
            QuantMethod::Nf4 | QuantMethod::Fp4 => json!({
                "quant_method": "bitsandbytes",
                "bits": 4,
                "load_in_4bit": true,
                "load_in_8bit": false,
                "bnb_4bit_quant_type": self.method_name(),
                "bnb_4bit_use_double_quant": self.double_quant,
                "bnb_4bit_compute_dtype": compute,
                "bnb_4bit_quant_storage": "uint8",
                "block_size": self.block_size,
                "ferrotune_method": self.method_name(),
            }),
            QuantMethod::Int8 { threshold } => json!({
                "quant_method": "bitsandbytes",
                "bits": 8,
                "load_in_4bit": false,
                "load_in_8bit": true,
                "llm_int8_threshold": threshold.unwrap_or(0.0),
                "bnb_4bit_compute_dtype": compute,
                "ferrotune_method": "int8",
            }),
            QuantMethod::Rtn { bits, group_size } => json!({
                "quant_method": "rtn",
                "bits": bits,
                "group_size": group_size,
                "compute_dtype": compute,
                "ferrotune_method": "rtn",
            }),
            QuantMethod::Gptq {
                bits,
                group_size,
                act_order,
            } => json!({
                "quant_method": "gptq",
                "bits": bits,
                "group_size": group_size,
                "desc_act": act_order,
                "sym": false,
                "compute_dtype": compute,
                "ferrotune_method": "gptq",
            }),
        }
    }

    /// Reads a `quantization_config` written by [`QuantSpec::to_hf_config`]; `field` errors name the key.
    pub fn from_hf_config(v: &Value) -> Result<Self, QuantError> {
        let bad =
            |k: &str| QuantError::Spec(format!("quantization_config: missing or invalid `{k}`"));
        let str_of = |k: &str| v.get(k).and_then(Value::as_str);
        let int_of = |k: &str| v.get(k).and_then(Value::as_i64);
        let compute = str_of("bnb_4bit_compute_dtype")
            .or_else(|| str_of("compute_dtype"))
            .map(|s| kind_from_name(s).ok_or_else(|| bad("compute_dtype")))
            .transpose()?
            .unwrap_or(Kind::BFloat16);
        let method = str_of("ferrotune_method").or_else(|| str_of("quant_method"));
        let method = match method {
            Some("bitsandbytes") | None => {
                if v.get("load_in_8bit").and_then(Value::as_bool) == Some(true) {
                    "int8"
                } else {
                    str_of("bnb_4bit_quant_type").unwrap_or("fp4")
                }
            }
            Some(m) => m,
        };
        let bits = |default: u8| int_of("bits").map(|b| b as u8).unwrap_or(default);
        let group = || int_of("group_size").ok_or_else(|| bad("group_size"));
        let method = match method {
            "nf4" => QuantMethod::Nf4,
            "fp4" => QuantMethod::Fp4,
            "int8" | "llm_int8" => QuantMethod::Int8 {
                threshold: v
                    .get("llm_int8_threshold")
                    .and_then(Value::as_f64)
                    .filter(|t| *t > 0.0)
                    .map(|t| t as f32),
            },
            "rtn" => QuantMethod::Rtn {
                bits: bits(4),
                group_size: group()?,
            },
            "gptq" => QuantMethod::Gptq {
                bits: bits(4),
                group_size: group()?,
                act_order: v.get("desc_act").and_then(Value::as_bool).unwrap_or(false),
            },
            other => {
                return Err(QuantError::Spec(format!(
                    "quantization_config: unsupported method `{other}` (expected nf4, fp4, int8, rtn, gptq)"
                )))
            }
        };
        let spec = QuantSpec {
            method,
            double_quant: v
                .get("bnb_4bit_use_double_quant")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            compute_dtype: compute,
            block_size: int_of("block_size").unwrap_or(DEFAULT_BLOCK_SIZE),
        };
        spec.validate()?;
        Ok(spec)
    }
}

/// `float32` / `float16` / `bfloat16` for a compute kind.
pub fn hf_dtype_name(k: Kind) -> &'static str {
    match k {
        Kind::Half => "float16",
        Kind::BFloat16 => "bfloat16",
        _ => "float32",
    }
}

/// The compute kind named by any spelling ferrotune accepts (`bf16`, `bfloat16`, `torch.float16`, ...).
pub fn kind_from_name(s: &str) -> Option<Kind> {
    s.parse::<ferrotune_core::DType>()
        .ok()
        .map(ferrotune_model::kind_of)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_config_round_trips_every_method() {
        let specs = [
            QuantSpec::nf4_double_quant(),
            QuantSpec::new(QuantMethod::Fp4).with_compute_dtype(Kind::Float),
            QuantSpec::new(QuantMethod::Int8 {
                threshold: Some(6.0),
            }),
            QuantSpec::new(QuantMethod::Int8 { threshold: None }).with_compute_dtype(Kind::Half),
            QuantSpec::new(QuantMethod::Rtn {
                bits: 4,
                group_size: 128,
            }),
            QuantSpec::new(QuantMethod::Gptq {
                bits: 4,
                group_size: 128,
                act_order: true,
            }),
        ];
        for s in specs {
            let back = QuantSpec::from_hf_config(&s.to_hf_config()).unwrap();
            assert_eq!(back, s, "{}", s.to_hf_config());
        }
        // transformers' own BitsAndBytesConfig (no ferrotune keys) reads too.
        let hf = json!({"quant_method": "bitsandbytes", "load_in_4bit": true, "bnb_4bit_quant_type": "nf4",
                        "bnb_4bit_use_double_quant": true, "bnb_4bit_compute_dtype": "bfloat16"});
        assert_eq!(
            QuantSpec::from_hf_config(&hf).unwrap(),
            QuantSpec::nf4_double_quant()
        );
        let err = QuantSpec::from_hf_config(&json!({"quant_method": "awq"})).unwrap_err();
        assert!(err.to_string().contains("awq"), "{err}");
    }
}
