//! The crate's error type: every variant that concerns a file names it.

use std::path::PathBuf;

/// Errors from loading, encoding, decoding, merging, exporting and training tokenizers.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Proto {
        path: PathBuf,
        source: crate::proto::ProtoError,
    },
    #[error("{}: sentencepiece cannot load it: {msg}", path.display())]
    SentencePiece { path: PathBuf, msg: String },
    #[error("{}: {msg}", path.display())]
    Invalid { path: PathBuf, msg: String },
    #[error("{}: holds neither tokenizer.model nor tokenizer.json", path.display())]
    NothingToLoad { path: PathBuf },
    #[error("encoding text failed: {0}")]
    Encode(String),
    #[error("decoding ids failed: {0}")]
    Decode(String),
    #[error("token id {id} is out of range (vocabulary of {size} pieces)")]
    IdOutOfRange { id: u32, size: usize },
    #[error(transparent)]
    Write(#[from] ferrotune_core::FsError),
    #[error("training a tokenizer failed: {0}")]
    Train(String),
}

impl TokenizerError {
    pub(crate) fn invalid(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        TokenizerError::Invalid {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub(crate) fn read(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TokenizerError::Read {
            path: path.into(),
            source,
        }
    }
}
