//! The knobs of data preparation that are not about templates: packing mode, validation size, how several
//! datasets are mixed and what happens to bad records. Each parses from the command line and from TOML
//! (`packing = true` or `packing = "concat"`, `val_size = 0.1` or `val_size = 200`).

use serde::{Deserialize, Deserializer, Serialize};
use std::str::FromStr;

/// How samples are laid out in rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Packing {
    /// One sample per row.
    #[default]
    None,
    /// Several whole samples per `cutoff_len` row, positions restarting per sample (`packing = true`).
    Pack,
    /// Pre-training: all tokens concatenated and cut into `cutoff_len` blocks (`packing = "concat"`).
    Concat,
}

impl FromStr for Packing {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "false" | "none" | "no" => Ok(Packing::None),
            "true" | "pack" | "yes" => Ok(Packing::Pack),
            "concat" => Ok(Packing::Concat),
            o => Err(format!("unknown packing `{o}` (false, true or concat)")),
        }
    }
}

impl<'de> Deserialize<'de> for Packing {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            B(bool),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::B(true) => Ok(Packing::Pack),
            Raw::B(false) => Ok(Packing::None),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// How much of the data becomes the validation split.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ValSize {
    /// A count of samples.
    Count(u64),
    /// A fraction in (0, 1).
    Fraction(f64),
}

impl ValSize {
    /// The number of validation samples out of `n` (a fraction rounds up, like `train_test_split`).
    pub fn count(self, n: usize) -> usize {
        match self {
            ValSize::Count(c) => (c as usize).min(n),
            ValSize::Fraction(f) => ((n as f64 * f).ceil() as usize).min(n),
        }
    }
}

impl FromStr for ValSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(c) = s.parse::<u64>() {
            return Ok(ValSize::Count(c));
        }
        match s.parse::<f64>() {
            Ok(f) if f > 0.0 && f < 1.0 => Ok(ValSize::Fraction(f)),
            _ => Err(format!("val size `{s}`: a fraction in (0, 1) or a count")),
        }
    }
}

/// How several datasets are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MixStrategy {
    /// One after the other.
    #[default]
    Concat,
    /// Records drawn from a randomly chosen (seeded) non-exhausted dataset each step.
    Interleave,
}

impl FromStr for MixStrategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "concat" => Ok(MixStrategy::Concat),
            "interleave" => Ok(MixStrategy::Interleave),
            o => Err(format!("unknown mix strategy `{o}` (concat or interleave)")),
        }
    }
}

/// What to do with a record that cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnBadRecord {
    /// Stop with an error naming the file, position/record and field.
    #[default]
    Error,
    /// Skip it, count it and keep the first reasons.
    Skip,
}

impl FromStr for OnBadRecord {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "error" => Ok(OnBadRecord::Error),
            "skip" => Ok(OnBadRecord::Skip),
            o => Err(format!("unknown --on-bad-record `{o}` (error or skip)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_cli_and_toml_forms() {
        #[derive(Deserialize)]
        struct C {
            packing: Packing,
            val_size: ValSize,
        }
        let c: C = toml::from_str("packing = true\nval_size = 0.1").unwrap();
        assert_eq!(
            (c.packing, c.val_size),
            (Packing::Pack, ValSize::Fraction(0.1))
        );
        let c: C = toml::from_str("packing = \"concat\"\nval_size = 20").unwrap();
        assert_eq!(
            (c.packing, c.val_size),
            (Packing::Concat, ValSize::Count(20))
        );
        assert_eq!("0.25".parse::<ValSize>().unwrap().count(10), 3);
        assert!("1.5".parse::<ValSize>().is_err());
    }
}
