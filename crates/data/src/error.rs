//! The error type of `ferrotune-data`. Every variant names where the problem is: the file, and the line and
//! column (malformed JSON, invalid UTF-8) or the record index and field (missing or wrongly typed values).

use std::path::PathBuf;

/// Why a dataset could not be read, converted, tokenized, cached or served.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Malformed JSON at a position of the file (1-based line and byte column).
    #[error("{}:{line}:{column}: malformed JSON: {msg}", path.display())]
    Json {
        path: PathBuf,
        line: u64,
        column: u64,
        msg: String,
    },
    /// Bytes that are not UTF-8 (1-based line and byte column of the first bad byte).
    #[error("{}:{line}:{column}: invalid UTF-8 in record {index}", path.display())]
    Utf8 {
        path: PathBuf,
        line: u64,
        column: u64,
        index: u64,
    },
    /// A record that parsed but does not fit its format (missing/empty/wrongly typed field).
    #[error("{}: record {index}{}: {msg}", path.display(), field.as_ref().map(|f| format!(", field `{f}`")).unwrap_or_default())]
    Record {
        path: PathBuf,
        index: u64,
        field: Option<String>,
        msg: String,
    },
    #[error("dataset registry {}: {msg}", path.display())]
    Registry { path: PathBuf, msg: String },
    #[error("template `{name}`: {msg}")]
    Template { name: String, msg: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("cache {}: {msg}", path.display())]
    Cache { path: PathBuf, msg: String },
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Fs(#[from] ferrotune_core::FsError),
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn record(
        path: impl Into<PathBuf>,
        index: u64,
        field: Option<&str>,
        msg: impl Into<String>,
    ) -> Self {
        DataError::Record {
            path: path.into(),
            index,
            field: field.map(str::to_string),
            msg: msg.into(),
        }
    }

    pub(crate) fn cache(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        DataError::Cache {
            path: path.into(),
            msg: msg.into(),
        }
    }

    /// Whether this error concerns one record only, so that `--on-bad-record skip` may skip it and go on.
    pub fn is_bad_record(&self) -> bool {
        matches!(
            self,
            DataError::Json { .. } | DataError::Utf8 { .. } | DataError::Record { .. }
        )
    }
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;
