//! [`TextCodec`] for `ferrotune-tokenizer`'s [`Tokenizer`] (SentencePiece or HF `tokenizer.json`).
//!
//! Streaming uses [`crate::codec::IncrementalDecoder`], the same window algorithm as the tokenizer's
//! `DecodeStream` (decode a short window with and without the newest ids, hold back text ending in U+FFFD),
//! kept on the engine side because the engine's sequences outlive any borrow of the tokenizer.

use crate::codec::TextCodec;
use crate::error::{InferError, Result};
use ferrotune_tokenizer::Tokenizer;

impl TextCodec for Tokenizer {
    fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        Tokenizer::encode(self, text, add_bos, false)
            .map_err(|e| InferError::Tokenizer(e.to_string()))
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        Tokenizer::decode(self, ids).map_err(|e| InferError::Tokenizer(e.to_string()))
    }

    fn bos_id(&self) -> Option<u32> {
        Tokenizer::bos_id(self)
    }

    fn eos_id(&self) -> Option<u32> {
        Tokenizer::eos_id(self)
    }

    fn piece_id(&self, piece: &str) -> Option<u32> {
        self.token_to_id(piece)
    }
}
