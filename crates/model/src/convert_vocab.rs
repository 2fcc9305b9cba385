//! Vocabularies embedded in llama2.c `tokenizer.bin` files and GGUF metadata, written back out as a
//! SentencePiece `tokenizer.model` (a serialized `ModelProto`, BPE, byte_fallback when the vocabulary has
//! `<0xXX>` pieces) plus the small HF tokenizer JSON files, so that sentencepiece, transformers and
//! ferrotune's tokenizer crate all load the converted directory.
//!
//! Only the `ModelProto` fields a BPE model needs are declared here (prost, proto2 field numbers of
//! sentencepiece_model.proto); absent optional fields take sentencepiece's defaults when read.

use crate::convert::{ConvertError, ExtraFile};
use prost::Message;
use serde_json::json;
use std::path::Path;

/// SentencePiece piece types (`ModelProto.SentencePiece.Type`); llama.cpp's GGUF token types use the same numbers.
pub const NORMAL: i32 = 1;
pub const UNKNOWN: i32 = 2;
pub const CONTROL: i32 = 3;
pub const BYTE: i32 = 6;

#[derive(Clone, PartialEq, prost::Message)]
struct Piece {
    #[prost(string, optional, tag = "1")]
    piece: Option<String>,
    #[prost(float, optional, tag = "2")]
    score: Option<f32>,
    #[prost(int32, optional, tag = "3")]
    kind: Option<i32>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TrainerSpec {
    #[prost(int32, optional, tag = "3")]
    model_type: Option<i32>,
    #[prost(int32, optional, tag = "4")]
    vocab_size: Option<i32>,
    #[prost(bool, optional, tag = "25")]
    split_digits: Option<bool>,
    #[prost(bool, optional, tag = "26")]
    allow_whitespace_only_pieces: Option<bool>,
    #[prost(bool, optional, tag = "35")]
    byte_fallback: Option<bool>,
    #[prost(int32, optional, tag = "40")]
    unk_id: Option<i32>,
    #[prost(int32, optional, tag = "41")]
    bos_id: Option<i32>,
    #[prost(int32, optional, tag = "42")]
    eos_id: Option<i32>,
    #[prost(int32, optional, tag = "43")]
    pad_id: Option<i32>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct NormalizerSpec {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(bool, optional, tag = "3")]
    add_dummy_prefix: Option<bool>,
    #[prost(bool, optional, tag = "4")]
    remove_extra_whitespaces: Option<bool>,
    #[prost(bool, optional, tag = "5")]
    escape_whitespaces: Option<bool>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ModelProto {
    #[prost(message, repeated, tag = "1")]
    pieces: Vec<Piece>,
    #[prost(message, optional, tag = "2")]
    trainer_spec: Option<TrainerSpec>,
    #[prost(message, optional, tag = "3")]
    normalizer_spec: Option<NormalizerSpec>,
}

/// One vocabulary entry.
#[derive(Debug, Clone, PartialEq)]
pub struct VocabEntry {
    pub piece: String,
    pub score: f32,
    pub kind: i32,
}

/// A Llama-style vocabulary: pieces with scores and types, and the special ids.
#[derive(Debug, Clone, PartialEq)]
pub struct Vocab {
    pub entries: Vec<VocabEntry>,
    pub unk_id: i32,
    pub bos_id: i32,
    pub eos_id: i32,
    pub pad_id: i32,
}

fn is_byte_piece(p: &str) -> bool {
    p.len() == 6
        && p.starts_with("<0x")
        && p.ends_with('>')
        && u8::from_str_radix(&p[3..5], 16).is_ok()
}

/// The type a piece from a vocabulary without type information gets.
pub fn infer_kind(id: usize, piece: &str, unk: usize, bos: usize, eos: usize) -> i32 {
    if id == unk {
        UNKNOWN
    } else if id == bos || id == eos {
        CONTROL
    } else if is_byte_piece(piece) {
        BYTE
    } else {
        NORMAL
    }
}

/// Reads llama2.c's `tokenizer.bin` (u32 max_token_length; per token: f32 score, i32 length, bytes) for
/// `vocab_size` tokens. llama2.c's exporter wrote `▁` as a space and BOS/EOS as `\n<s>\n` / `\n</s>\n`;
/// both are undone here (ids 0/1/2 = unk/bos/eos, as in every llama2.c vocabulary).
pub fn read_llama2c_tokenizer(path: &Path, vocab_size: usize) -> Result<Vocab, ConvertError> {
    let bytes = std::fs::read(path).map_err(|e| ConvertError::io(path, e))?;
    let mut off = 4usize;
    let mut entries = Vec::with_capacity(vocab_size);
    for id in 0..vocab_size {
        let head = bytes.get(off..off + 8).ok_or_else(|| {
            ConvertError::format(path, format!("ends at token {id} of {vocab_size}"))
        })?;
        let score = f32::from_le_bytes(head[0..4].try_into().expect("4 bytes"));
        let len = i32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
        let len = usize::try_from(len)
            .map_err(|_| ConvertError::format(path, format!("token {id} has length {len}")))?;
        off += 8;
        let text = bytes
            .get(off..off + len)
            .ok_or_else(|| ConvertError::format(path, format!("token {id} runs past the end")))?;
        off += len;
        let text = String::from_utf8(text.to_vec())
            .map_err(|_| ConvertError::format(path, format!("token {id} is not UTF-8")))?;
        let piece = match id {
            0 if text == "<unk>" => text,
            1 => "<s>".to_string(),
            2 => "</s>".to_string(),
            _ => text.replace(' ', "\u{2581}"),
        };
        let kind = infer_kind(id, &piece, 0, 1, 2);
        entries.push(VocabEntry { piece, score, kind });
    }
    if off != bytes.len() {
        tracing::warn!(file = %path.display(), extra = bytes.len() - off, "tokenizer.bin has more tokens than the model's vocabulary");
    }
    Ok(Vocab {
        entries,
        unk_id: 0,
        bos_id: 1,
        eos_id: 2,
        pad_id: -1,
    })
}

impl Vocab {
    /// The serialized SentencePiece `ModelProto` (BPE; identity normalizer with dummy prefix, as Llama's).
    pub fn to_sentencepiece_model(&self) -> Vec<u8> {
        let byte_fallback = self.entries.iter().any(|e| e.kind == BYTE);
        let model = ModelProto {
            pieces: self
                .entries
                .iter()
                .map(|e| Piece {
                    piece: Some(e.piece.clone()),
                    score: Some(e.score),
                    kind: Some(e.kind),
                })
                .collect(),
            trainer_spec: Some(TrainerSpec {
                model_type: Some(2),
                vocab_size: Some(self.entries.len() as i32),
                split_digits: Some(true),
                allow_whitespace_only_pieces: Some(true),
                byte_fallback: Some(byte_fallback),
                unk_id: Some(self.unk_id),
                bos_id: Some(self.bos_id),
                eos_id: Some(self.eos_id),
                pad_id: Some(self.pad_id),
            }),
            normalizer_spec: Some(NormalizerSpec {
                name: Some("identity".into()),
                add_dummy_prefix: Some(true),
                remove_extra_whitespaces: Some(false),
                escape_whitespaces: Some(true),
            }),
        };
        model.encode_to_vec()
    }

    fn piece(&self, id: i32) -> Option<&str> {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.entries.get(i))
            .map(|e| e.piece.as_str())
    }

    /// `tokenizer.model`, `tokenizer_config.json` and `special_tokens_map.json` for the output directory.
    pub fn hf_files(&self) -> Vec<ExtraFile> {
        tokenizer_files(
            self.to_sentencepiece_model(),
            self.piece(self.bos_id).unwrap_or("<s>"),
            self.piece(self.eos_id).unwrap_or("</s>"),
            self.piece(self.unk_id).unwrap_or("<unk>"),
        )
    }
}

/// The HF tokenizer files around a SentencePiece model (`LlamaTokenizer`, BOS added, no EOS).
pub fn tokenizer_files(model: Vec<u8>, bos: &str, eos: &str, unk: &str) -> Vec<ExtraFile> {
    let config = json!({
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": true,
        "add_eos_token": false,
        "bos_token": bos,
        "eos_token": eos,
        "unk_token": unk,
        "pad_token": null,
        "clean_up_tokenization_spaces": false,
        "legacy": true,
        "model_max_length": 1_000_000_000_000_000_000u64,
        "sp_model_kwargs": {},
    });
    let special = json!({ "bos_token": bos, "eos_token": eos, "unk_token": unk });
    let pretty =
        |v: &serde_json::Value| serde_json::to_vec_pretty(v).expect("json values serialize");
    vec![
        ExtraFile {
            name: "tokenizer.model".into(),
            bytes: model,
        },
        ExtraFile {
            name: "tokenizer_config.json".into(),
            bytes: pretty(&config),
        },
        ExtraFile {
            name: "special_tokens_map.json".into(),
            bytes: pretty(&special),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_byte_pieces() {
        assert!(is_byte_piece("<0x0A>"));
        assert!(!is_byte_piece("<0xZZ>"));
        assert_eq!(infer_kind(0, "<unk>", 0, 1, 2), UNKNOWN);
        assert_eq!(infer_kind(2, "</s>", 0, 1, 2), CONTROL);
        assert_eq!(infer_kind(3, "<0x00>", 0, 1, 2), BYTE);
        assert_eq!(infer_kind(300, "\u{2581}the", 0, 1, 2), NORMAL);
    }

    #[test]
    fn model_proto_round_trips_through_prost() {
        let v = Vocab {
            entries: vec![
                VocabEntry {
                    piece: "<unk>".into(),
                    score: 0.0,
                    kind: UNKNOWN,
                },
                VocabEntry {
                    piece: "<s>".into(),
                    score: 0.0,
                    kind: CONTROL,
                },
                VocabEntry {
                    piece: "</s>".into(),
                    score: 0.0,
                    kind: CONTROL,
                },
                VocabEntry {
                    piece: "\u{2581}a".into(),
                    score: -1.5,
                    kind: NORMAL,
                },
            ],
            unk_id: 0,
            bos_id: 1,
            eos_id: 2,
            pad_id: -1,
        };
        let m = ModelProto::decode(v.to_sentencepiece_model().as_slice()).unwrap();
        assert_eq!(m.pieces.len(), 4);
        assert_eq!(m.pieces[3].piece.as_deref(), Some("\u{2581}a"));
        assert_eq!(m.pieces[3].score, Some(-1.5));
        assert_eq!(m.trainer_spec.unwrap().byte_fallback, Some(false));
    }
}
