//! [`DecodeStream`]: incremental decoding for streaming generation.
//!
//! Keeps a short window of ids and emits the difference between the decoding of the window with and
//! without the newest ids. Text is held back while the decoding ends in U+FFFD (a UTF-8 character still split
//! across byte-fallback pieces), so a Chinese character or an emoji is emitted whole, once its last byte
//! arrives. Decoding the window instead of single pieces keeps the backend's rules (leading-space strip,
//! byte fusion) intact, so the concatenated output equals [`Tokenizer::decode`] of all ids.

use crate::error::TokenizerError;
use crate::tokenizer::Tokenizer;

/// Incremental decoder; get one from [`Tokenizer::decode_stream`].
#[derive(Debug)]
pub struct DecodeStream<'a> {
    tok: &'a Tokenizer,
    ids: Vec<u32>,
    /// Start of the window whose text was already (partly) emitted.
    prefix_offset: usize,
    /// End of the ids whose text was emitted.
    read_offset: usize,
}

impl<'a> DecodeStream<'a> {
    pub(crate) fn new(tok: &'a Tokenizer) -> Self {
        DecodeStream {
            tok,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
        }
    }

    /// Adds one id; returns the text it completes (`None` while a character is still incomplete, or for
    /// ids that decode to nothing such as BOS/EOS).
    pub fn push(&mut self, id: u32) -> Result<Option<String>, TokenizerError> {
        let size = self.tok.vocab_size();
        if id as usize >= size {
            return Err(TokenizerError::IdOutOfRange { id, size });
        }
        self.ids.push(id);
        let prefix = self
            .tok
            .decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = self.tok.decode(&self.ids[self.prefix_offset..])?;
        if full.len() > prefix.len()
            && !full.ends_with('\u{FFFD}')
            && full.is_char_boundary(prefix.len())
        {
            let new = full[prefix.len()..].to_owned();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(Some(new))
        } else {
            Ok(None)
        }
    }

    /// Flushes whatever is still held back (an unfinished byte sequence decodes to U+FFFD here, exactly
    /// as in a full decode).
    pub fn finish(mut self) -> Result<Option<String>, TokenizerError> {
        let prefix = self
            .tok
            .decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = self.tok.decode(&self.ids[self.prefix_offset..])?;
        self.read_offset = self.ids.len();
        if full.len() > prefix.len() && full.is_char_boundary(prefix.len()) {
            Ok(Some(full[prefix.len()..].to_owned()))
        } else {
            Ok(None)
        }
    }

    /// All ids pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}
