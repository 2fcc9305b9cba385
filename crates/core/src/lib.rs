//! `ferrotune-core`: the types every other ferrotune crate shares and nothing heavier.
//!
//! It holds the dtype and device specifications written in configs (`bf16`, `cuda:1`), the layout of a run
//! directory (where checkpoints, metrics and the resolved config go), TOML config loading with `--set`
//! overrides and did-you-mean errors, and atomic file writes (temp file + rename) so that no job ever leaves
//! a half-written file under its final name. It must never depend on tch: `core`, `tokenizer` and `data`
//! build in seconds and are reusable alone (`just check` enforces it).

pub mod config;
pub mod device;
pub mod dtype;
pub mod estimate;
pub mod fsutil;
pub mod layout;
pub mod model_shape;
pub mod testkit;
pub mod train_config;

pub use device::DeviceSpec;
pub use dtype::DType;
pub use fsutil::{write_atomic, write_atomic_with, FsError};
pub use layout::RunDir;

/// The ferrotune version, as `ferrotune env` and saved configs report it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
