//! The id ↔ piece table shared by both backends, with each piece's kind (byte-fallback pieces carry their
//! byte), built from a `ModelProto` or from an HF tokenizer's vocabulary.

use crate::proto::{ModelProto, PieceType};
use std::collections::HashMap;

/// What a vocabulary entry is, as far as decoding cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PieceKind {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    /// A byte-fallback piece `<0xNN>`.
    Byte(u8),
}

/// Pieces by id plus the reverse index.
#[derive(Clone, Debug, Default)]
pub struct Vocab {
    pieces: Vec<String>,
    kinds: Vec<PieceKind>,
    index: HashMap<String, u32>,
}

/// `<0xNN>` → the byte.
pub fn parse_byte_piece(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

impl Vocab {
    /// From a SentencePiece model (the first occurrence of a duplicated piece wins in the index, as in
    /// sentencepiece itself).
    pub fn from_proto(proto: &ModelProto) -> Vocab {
        let mut v = Vocab::default();
        for p in &proto.pieces {
            let kind = match p.kind() {
                PieceType::Normal => PieceKind::Normal,
                PieceType::Unknown => PieceKind::Unknown,
                PieceType::Control => PieceKind::Control,
                PieceType::UserDefined => PieceKind::UserDefined,
                PieceType::Unused => PieceKind::Unused,
                PieceType::Byte => parse_byte_piece(p.text())
                    .map(PieceKind::Byte)
                    .unwrap_or(PieceKind::Normal),
            };
            v.push(p.text().to_owned(), kind);
        }
        v
    }

    /// From an id-indexed list of pieces where `special` marks the added special tokens.
    pub fn from_pieces(pieces: Vec<String>, special: &[bool]) -> Vocab {
        let mut v = Vocab::default();
        for (i, p) in pieces.into_iter().enumerate() {
            let kind = if special.get(i).copied().unwrap_or(false) {
                PieceKind::Control
            } else if let Some(b) = parse_byte_piece(&p) {
                PieceKind::Byte(b)
            } else {
                PieceKind::Normal
            };
            v.push(p, kind);
        }
        v
    }

    fn push(&mut self, piece: String, kind: PieceKind) {
        let id = self.pieces.len() as u32;
        self.index.entry(piece.clone()).or_insert(id);
        self.pieces.push(piece);
        self.kinds.push(kind);
    }

    pub fn len(&self) -> usize {
        self.pieces.len()
    }
    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }
    pub fn id(&self, piece: &str) -> Option<u32> {
        self.index.get(piece).copied()
    }
    pub fn piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize).map(String::as_str)
    }
    pub fn kind(&self, id: u32) -> Option<PieceKind> {
        self.kinds.get(id as usize).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_pieces_parse_only_exact_form() {
        assert_eq!(parse_byte_piece("<0xE4>"), Some(0xE4));
        assert_eq!(parse_byte_piece("<0x0a>"), Some(0x0A));
        assert_eq!(parse_byte_piece("<0xE>"), None);
        assert_eq!(parse_byte_piece("0xE4"), None);
        let v = Vocab::from_pieces(vec!["<unk>".into(), "<0x41>".into(), "a".into()], &[true]);
        assert_eq!(v.kind(1), Some(PieceKind::Byte(0x41)));
        assert_eq!(v.kind(0), Some(PieceKind::Control));
        assert_eq!(v.id("a"), Some(2));
    }
}
