//! The error type of `ferrotune-train`: each variant says which file, key or step failed.

use std::path::{Path, PathBuf};

/// Why a training run stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("config: {0}")]
    Config(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("data: {0}")]
    Data(String),
    #[error(transparent)]
    Model(#[from] ferrotune_model::ModelError),
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error(transparent)]
    Fs(#[from] ferrotune_core::FsError),
    #[error(transparent)]
    Optim(#[from] crate::optim::OptimError),
    #[error(
        "the loss was NaN/inf for {count} steps in a row (up to step {step}); stopping. Lower `learning_rate`, \
         check the data, or use bf16 instead of fp16 (`max_nonfinite_steps` sets the limit)"
    )]
    NonFinite { count: u32, step: u64 },
    #[error("distributed: {0}")]
    Distributed(String),
    #[error("quantization: {0}")]
    Quant(#[from] ferrotune_quant::QuantError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl TrainError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
