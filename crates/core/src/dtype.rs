//! Floating-point dtypes as they appear in configs and on the command line.
//!
//! Accepts the spellings users bring from transformers and LLaMA-Factory (`bf16`, `bfloat16`,
//! `torch.bfloat16`, `float32`, `fp16`, `half`, ...) and prints the short canonical name.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A floating-point element type for weights and compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// The name transformers writes into `config.json` (`torch_dtype` / `dtype`).
    pub fn hf_name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
        }
    }

    /// The name safetensors writes in its header.
    pub fn safetensors_name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
        }
    }
}

/// A dtype name that is not one of the accepted spellings.
#[derive(Debug, thiserror::Error)]
#[error("unknown dtype `{0}` (expected one of: fp32, fp16, bf16)")]
pub struct UnknownDType(pub String);

impl FromStr for DType {
    type Err = UnknownDType;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        let t = t.strip_prefix("torch.").unwrap_or(&t);
        match t {
            "f32" | "fp32" | "float32" | "float" => Ok(DType::F32),
            "f16" | "fp16" | "float16" | "half" => Ok(DType::F16),
            "bf16" | "bfloat16" => Ok(DType::BF16),
            _ => Err(UnknownDType(s.to_string())),
        }
    }
}

impl TryFrom<String> for DType {
    type Error = UnknownDType;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<DType> for String {
    fn from(d: DType) -> String {
        d.to_string()
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "fp32",
            DType::F16 => "fp16",
            DType::BF16 => "bf16",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_spellings_users_write() {
        for (s, d) in [
            ("bf16", DType::BF16),
            ("torch.bfloat16", DType::BF16),
            ("Float16", DType::F16),
            ("half", DType::F16),
            ("float32", DType::F32),
            ("fp32", DType::F32),
        ] {
            assert_eq!(s.parse::<DType>().unwrap(), d, "{s}");
        }
        let err = "int3".parse::<DType>().unwrap_err().to_string();
        assert!(err.contains("int3") && err.contains("bf16"), "{err}");
    }

    #[test]
    fn round_trips_through_serde_and_reports_sizes() {
        #[derive(Serialize, Deserialize)]
        struct C {
            dtype: DType,
        }
        let c: C = toml::from_str("dtype = \"bfloat16\"").unwrap();
        assert_eq!(c.dtype, DType::BF16);
        assert_eq!(toml::to_string(&c).unwrap().trim(), "dtype = \"bf16\"");
        assert_eq!(DType::BF16.size_in_bytes(), 2);
        assert_eq!(DType::F32.hf_name(), "float32");
        assert!(toml::from_str::<C>("dtype = \"q4\"").is_err());
    }
}
