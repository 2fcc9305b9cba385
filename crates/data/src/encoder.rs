//! The tokenizer as the data pipeline sees it: encode one text segment without special tokens, and the ids
//! of BOS / EOS / PAD and of named special tokens. Implemented for `ferrotune_tokenizer::Tokenizer`; tests
//! and other callers can plug their own.

/// What templates and packing need from a tokenizer. `encode` must not add BOS/EOS: templates place them.
pub trait TextEncoder: Send + Sync {
    /// Token ids of `text` (the tokenizer's own normalisation, e.g. SentencePiece's dummy prefix, applies).
    fn encode(&self, text: &str) -> Result<Vec<u32>, String>;
    fn bos_id(&self) -> Option<u32>;
    fn eos_id(&self) -> Option<u32>;
    fn pad_id(&self) -> Option<u32>;
    /// The id of a whole piece (`<|im_end|>`), if the vocabulary has it.
    fn token_to_id(&self, piece: &str) -> Option<u32>;
}

impl TextEncoder for ferrotune_tokenizer::Tokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        ferrotune_tokenizer::Tokenizer::encode(self, text, false, false).map_err(|e| e.to_string())
    }
    fn bos_id(&self) -> Option<u32> {
        ferrotune_tokenizer::Tokenizer::bos_id(self)
    }
    fn eos_id(&self) -> Option<u32> {
        ferrotune_tokenizer::Tokenizer::eos_id(self)
    }
    fn pad_id(&self) -> Option<u32> {
        ferrotune_tokenizer::Tokenizer::pad_id(self)
    }
    fn token_to_id(&self, piece: &str) -> Option<u32> {
        ferrotune_tokenizer::Tokenizer::token_to_id(self, piece)
    }
}

/// A toy byte-level encoder for tests: each UTF-8 byte is id `byte + 3`; 0/1/2 are PAD(unk)/BOS/EOS and
/// extra named tokens follow at 259.. .
#[derive(Debug, Clone, Default)]
pub struct ByteEncoder {
    pub specials: Vec<String>,
}

impl TextEncoder for ByteEncoder {
    fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        Ok(text.bytes().map(|b| b as u32 + 3).collect())
    }
    fn bos_id(&self) -> Option<u32> {
        Some(1)
    }
    fn eos_id(&self) -> Option<u32> {
        Some(2)
    }
    fn pad_id(&self) -> Option<u32> {
        Some(0)
    }
    fn token_to_id(&self, piece: &str) -> Option<u32> {
        self.specials
            .iter()
            .position(|s| s == piece)
            .map(|i| 259 + i as u32)
    }
}

impl ByteEncoder {
    /// Decodes ids back to text, showing BOS/EOS/specials by name (for test assertions).
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            match id {
                0 => bytes.extend_from_slice(b"<pad>"),
                1 => bytes.extend_from_slice(b"<s>"),
                2 => bytes.extend_from_slice(b"</s>"),
                3..=258 => bytes.push((id - 3) as u8),
                _ => bytes.extend_from_slice(self.specials[(id - 259) as usize].as_bytes()),
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}
