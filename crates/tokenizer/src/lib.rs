//! `ferrotune-tokenizer`: SentencePiece and Hugging Face tokenizers without libtorch.
//!
//! Reads and writes SentencePiece `ModelProto` files, extends a LLaMA vocabulary with the pieces of another
//! model (the Chinese-LLaMA-Alpaca method), exports `tokenizer.json` for transformers, and encodes/decodes
//! text — including incremental decoding for streaming that never emits half a UTF-8 character.

pub mod corpus;
pub mod error;
mod fast_bpe;
pub mod hf_export;
pub mod merge;
pub mod proto;
pub mod specials;
pub mod stream;
pub mod tokenizer;
pub mod train;
pub mod vocab;

pub use error::TokenizerError;
pub use hf_export::{hf_files, HfFiles};
pub use merge::{MergeReport, Merger};
pub use proto::{ModelProto, ModelType, PieceType, SentencePiece};
pub use specials::SpecialIds;
pub use stream::DecodeStream;
pub use tokenizer::Tokenizer;
pub use vocab::PieceKind;
