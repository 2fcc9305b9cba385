//! Device specifications: `cpu`, `cuda`, `cuda:N`, `auto`.
//!
//! This is the spec as written by users; crates that run tensors turn it into a tch device (`auto` picks the
//! first CUDA device when one is available, else the CPU).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Where tensors live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    /// CUDA device 0 when available, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

/// A device string that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid device `{0}` (expected cpu, cuda, cuda:N or auto)")]
pub struct InvalidDevice(pub String);

impl FromStr for DeviceSpec {
    type Err = InvalidDevice;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            _ => t
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| InvalidDevice(s.to_string())),
        }
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = InvalidDevice;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        d.to_string()
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_devices() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("CUDA".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        assert_eq!(DeviceSpec::Cuda(3).to_string(), "cuda:3");
        assert_eq!(DeviceSpec::default(), DeviceSpec::Auto);
        for bad in ["cuda:", "cuda:x", "tpu", ""] {
            let e = bad.parse::<DeviceSpec>().unwrap_err().to_string();
            assert!(e.contains("expected cpu"), "{bad}: {e}");
        }
    }
}
