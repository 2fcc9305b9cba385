//! The tokenizer as the engine sees it ([`TextCodec`]), and incremental decoding of a growing id list into
//! text deltas that never split a UTF-8 character and keep SentencePiece's word-boundary spaces right.

use crate::error::Result;

/// Text ⇄ token ids, plus the special ids generation needs.
pub trait TextCodec: Send + Sync {
    /// Ids of `text`, with BOS first when `add_bos`.
    fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>>;
    /// Text of `ids` (special tokens dropped).
    fn decode(&self, ids: &[u32]) -> Result<String>;
    /// Beginning-of-sequence id.
    fn bos_id(&self) -> Option<u32>;
    /// End-of-sequence id.
    fn eos_id(&self) -> Option<u32>;
    /// Id of a piece, if the vocabulary has it (used for template stop tokens such as `<|eot_id|>`).
    fn piece_id(&self, piece: &str) -> Option<u32>;
}

/// Turns ids pushed one at a time into text deltas.
///
/// It decodes a short window (`ids[prefix..]`) and compares it with the window without the newest ids
/// (`ids[prefix..read]`): the difference is new text unless it ends in U+FFFD (an incomplete byte sequence,
/// held until the next id completes it). Decoding from a window start, rather than id by id, keeps the
/// spaces SentencePiece attaches to word starts.
#[derive(Debug, Clone, Default)]
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
}

impl IncrementalDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `id`; returns the newly complete text, if any.
    pub fn push(&mut self, codec: &dyn TextCodec, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let before = codec.decode(&self.ids[self.prefix..self.read])?;
        let now = codec.decode(&self.ids[self.prefix..])?;
        if now.len() > before.len() && !now.ends_with('\u{FFFD}') {
            let delta = match now.get(before.len()..) {
                Some(d) if now.starts_with(&before) => d.to_string(),
                // The window's text changed shape (rare normalisation effects): send what is new by chars.
                _ => now.chars().skip(before.chars().count()).collect(),
            };
            self.prefix = self.read;
            self.read = self.ids.len();
            return Ok(Some(delta));
        }
        Ok(None)
    }

    /// Text still held back (an unfinished byte sequence, shown as U+FFFD as a full decode would).
    pub fn finish(&mut self, codec: &dyn TextCodec) -> Result<String> {
        let before = codec.decode(&self.ids[self.prefix..self.read])?;
        let now = codec.decode(&self.ids[self.prefix..])?;
        self.prefix = self.read;
        self.read = self.ids.len();
        Ok(match now.get(before.len()..) {
            Some(d) if now.starts_with(&before) => d.to_string(),
            _ => String::new(),
        })
    }
}
