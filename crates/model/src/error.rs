//! The error type of `ferrotune-model`: every variant names the file, tensor or config field involved.

use std::path::PathBuf;

/// Anything that can go wrong while configuring, loading, saving or adapting a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("reading {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: invalid JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("config field `{field}`: {msg}")]
    Config { field: String, msg: String },
    #[error("{}: {msg}", path.display())]
    Checkpoint { path: PathBuf, msg: String },
    #[error("tensor `{name}`: {msg}")]
    Tensor { name: String, msg: String },
    #[error("LoRA: {0}")]
    Lora(String),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error(transparent)]
    Fs(#[from] ferrotune_core::FsError),
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn config(field: &str, msg: impl Into<String>) -> Self {
        ModelError::Config {
            field: field.to_string(),
            msg: msg.into(),
        }
    }
    pub(crate) fn ckpt(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        ModelError::Checkpoint {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub(crate) fn tensor(name: &str, msg: impl Into<String>) -> Self {
        ModelError::Tensor {
            name: name.to_string(),
            msg: msg.into(),
        }
    }
}
