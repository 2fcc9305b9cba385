//! `ferrotune-tokenizer`: SentencePiece and Hugging Face tokenizers without libtorch.
//!
//! Reads and writes SentencePiece `ModelProto` files, extends a LLaMA vocabulary with the pieces of another
//! model (the Chinese-LLaMA-Alpaca method), exports `tokenizer.json` for transformers, and encodes/decodes
//! text — including incremental decoding for streaming that never emits half a UTF-8 character.
