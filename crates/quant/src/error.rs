//! The quant crate's error type: every variant names the file, tensor or setting it is about.

use std::path::PathBuf;

/// Errors of quantizing, saving and loading quantized weights.
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    /// A setting that cannot be used (unknown method, bad block size, ...).
    #[error("quantization spec: {0}")]
    Spec(String),
    /// A tensor that cannot be quantized as asked (`name`: what is wrong).
    #[error("tensor `{name}`: {msg}")]
    Tensor { name: String, msg: String },
    /// A quantized checkpoint that is missing something or inconsistent.
    #[error("{}: {msg}", path.display())]
    Checkpoint { path: PathBuf, msg: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: invalid JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Fs(#[from] ferrotune_core::FsError),
    #[error(transparent)]
    Model(#[from] ferrotune_model::ModelError),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

impl QuantError {
    pub fn tensor(name: impl Into<String>, msg: impl Into<String>) -> Self {
        QuantError::Tensor {
            name: name.into(),
            msg: msg.into(),
        }
    }
    pub fn ckpt(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        QuantError::Checkpoint {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        QuantError::Io {
            path: path.into(),
            source,
        }
    }
}
