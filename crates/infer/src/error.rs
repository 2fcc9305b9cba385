//! The error type of the inference crate: what failed, naming the request field, file or tensor involved.

use thiserror::Error;

/// Everything generation and serving can fail with.
#[derive(Debug, Error)]
pub enum InferError {
    /// A request or CLI parameter is out of range (`field` names it).
    #[error("invalid parameter `{field}`: {reason}")]
    InvalidParam { field: &'static str, reason: String },
    /// The prompt does not fit the model's context.
    #[error("prompt has {prompt_tokens} tokens but the model's context is {context} tokens")]
    PromptTooLong {
        prompt_tokens: usize,
        context: usize,
    },
    /// No base model or adapter of this name is loaded.
    #[error("unknown model `{0}`")]
    UnknownModel(String),
    /// Tokenizer failure (encode/decode), with its message.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A libtorch failure inside the model forward.
    #[error("model forward: {0}")]
    Torch(#[from] tch::TchError),
    /// Loading the model, tokenizer or template failed.
    #[error("loading {what}: {reason}")]
    Load { what: String, reason: String },
    /// The engine thread is gone (it panicked or was shut down).
    #[error("the generation engine has stopped")]
    EngineStopped,
}

/// Short alias used across the crate.
pub type Result<T, E = InferError> = std::result::Result<T, E>;

impl InferError {
    /// An [`InferError::InvalidParam`] for `field`.
    pub fn param(field: &'static str, reason: impl Into<String>) -> Self {
        InferError::InvalidParam {
            field,
            reason: reason.into(),
        }
    }
}
