//! Shared fixtures of the model tests: the oracle checkpoints (generated once per test binary by
//! tests/oracle/model_make.py into the target's tmp dir) and comparison helpers.

use ferrotune_core::testkit::run_oracle;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tch::{Kind, Tensor};

/// The directory of oracle checkpoints (see model_make.py), generated on first use.
pub fn oracle_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch("oracle");
        run_oracle("model_make.py", &[dir.to_str().unwrap()]);
        dir
    })
}

/// A fresh scratch directory under the target's tmp dir (left for inspection; removed on the next run).
pub fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("model-tests-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.parent().unwrap()).unwrap();
    d
}

pub fn read_st(p: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .into_iter()
        .collect()
}

/// max |a - b| over positions where `mask` [B,T] is 1 (all positions when None).
pub fn max_abs_diff(a: &Tensor, b: &Tensor, mask: Option<&Tensor>) -> f64 {
    let d = (a.to_kind(Kind::Float) - b.to_kind(Kind::Float)).abs();
    let d = match mask {
        Some(m) => d * m.unsqueeze(-1).to_kind(Kind::Float),
        None => d,
    };
    d.max().double_value(&[])
}
