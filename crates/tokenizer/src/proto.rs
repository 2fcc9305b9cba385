//! SentencePiece's `ModelProto` (sentencepiece_model.proto, proto2) as hand-written prost messages.
//!
//! Field numbers follow Google's public schema. Fields are declared in ascending field-number order so prost
//! serializes them in the same order as the C++ library; every field is `optional` (presence kept) so a
//! read → write round trip reproduces the file byte for byte. Bytes of fields this schema does not know are
//! not kept: [`ModelProto::decode_exact`] refuses such files instead of silently dropping data.

use prost::Message;

/// `ModelProto.SentencePiece.Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum PieceType {
    Normal = 1,
    Unknown = 2,
    Control = 3,
    UserDefined = 4,
    Unused = 5,
    Byte = 6,
}

/// `TrainerSpec.ModelType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ModelType {
    Unigram = 1,
    Bpe = 2,
    Word = 3,
    Char = 4,
}

/// One vocabulary entry.
#[derive(Clone, PartialEq, Message)]
pub struct SentencePiece {
    #[prost(string, optional, tag = "1")]
    pub piece: Option<String>,
    #[prost(float, optional, tag = "2")]
    pub score: Option<f32>,
    #[prost(enumeration = "PieceType", optional, tag = "3")]
    pub r#type: Option<i32>,
}

impl SentencePiece {
    /// A piece with an explicit score and type.
    pub fn new(piece: impl Into<String>, score: f32, ty: PieceType) -> Self {
        SentencePiece {
            piece: Some(piece.into()),
            score: Some(score),
            r#type: Some(ty as i32),
        }
    }
    /// The piece text (empty when absent).
    pub fn text(&self) -> &str {
        self.piece.as_deref().unwrap_or("")
    }
    /// The piece type (NORMAL when absent, as in the schema's default).
    pub fn kind(&self) -> PieceType {
        self.r#type
            .and_then(|t| PieceType::try_from(t).ok())
            .unwrap_or(PieceType::Normal)
    }
}

/// `TrainerSpec`: how the model was trained (and the special-token ids the processor uses).
#[derive(Clone, PartialEq, Message)]
pub struct TrainerSpec {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, optional, tag = "2")]
    pub model_prefix: Option<String>,
    #[prost(enumeration = "ModelType", optional, tag = "3")]
    pub model_type: Option<i32>,
    #[prost(int32, optional, tag = "4")]
    pub vocab_size: Option<i32>,
    #[prost(string, repeated, tag = "5")]
    pub accept_language: Vec<String>,
    #[prost(int32, optional, tag = "6")]
    pub self_test_sample_size: Option<i32>,
    #[prost(string, optional, tag = "7")]
    pub input_format: Option<String>,
    #[prost(float, optional, tag = "10")]
    pub character_coverage: Option<f32>,
    #[prost(uint64, optional, tag = "11")]
    pub input_sentence_size: Option<u64>,
    #[prost(int32, optional, tag = "12")]
    pub mining_sentence_size: Option<i32>,
    #[prost(int32, optional, tag = "13")]
    pub training_sentence_size: Option<i32>,
    #[prost(int32, optional, tag = "14")]
    pub seed_sentencepiece_size: Option<i32>,
    #[prost(float, optional, tag = "15")]
    pub shrinking_factor: Option<f32>,
    #[prost(int32, optional, tag = "16")]
    pub num_threads: Option<i32>,
    #[prost(int32, optional, tag = "17")]
    pub num_sub_iterations: Option<i32>,
    #[prost(int32, optional, tag = "18")]
    pub max_sentence_length: Option<i32>,
    #[prost(bool, optional, tag = "19")]
    pub shuffle_input_sentence: Option<bool>,
    #[prost(int32, optional, tag = "20")]
    pub max_sentencepiece_length: Option<i32>,
    #[prost(bool, optional, tag = "21")]
    pub split_by_unicode_script: Option<bool>,
    #[prost(bool, optional, tag = "22")]
    pub split_by_whitespace: Option<bool>,
    #[prost(bool, optional, tag = "23")]
    pub split_by_number: Option<bool>,
    #[prost(bool, optional, tag = "24")]
    pub treat_whitespace_as_suffix: Option<bool>,
    #[prost(bool, optional, tag = "25")]
    pub split_digits: Option<bool>,
    #[prost(bool, optional, tag = "26")]
    pub allow_whitespace_only_pieces: Option<bool>,
    #[prost(string, repeated, tag = "30")]
    pub control_symbols: Vec<String>,
    #[prost(string, repeated, tag = "31")]
    pub user_defined_symbols: Vec<String>,
    #[prost(bool, optional, tag = "32")]
    pub vocabulary_output_piece_score: Option<bool>,
    #[prost(bool, optional, tag = "33")]
    pub hard_vocab_limit: Option<bool>,
    #[prost(bool, optional, tag = "34")]
    pub use_all_vocab: Option<bool>,
    #[prost(bool, optional, tag = "35")]
    pub byte_fallback: Option<bool>,
    #[prost(string, optional, tag = "36")]
    pub required_chars: Option<String>,
    #[prost(int32, optional, tag = "40")]
    pub unk_id: Option<i32>,
    #[prost(int32, optional, tag = "41")]
    pub bos_id: Option<i32>,
    #[prost(int32, optional, tag = "42")]
    pub eos_id: Option<i32>,
    #[prost(int32, optional, tag = "43")]
    pub pad_id: Option<i32>,
    #[prost(string, optional, tag = "44")]
    pub unk_surface: Option<String>,
    #[prost(string, optional, tag = "45")]
    pub unk_piece: Option<String>,
    #[prost(string, optional, tag = "46")]
    pub bos_piece: Option<String>,
    #[prost(string, optional, tag = "47")]
    pub eos_piece: Option<String>,
    #[prost(string, optional, tag = "48")]
    pub pad_piece: Option<String>,
    #[prost(bool, optional, tag = "49")]
    pub train_extremely_large_corpus: Option<bool>,
    #[prost(bool, optional, tag = "50")]
    pub enable_differential_privacy: Option<bool>,
    #[prost(float, optional, tag = "51")]
    pub differential_privacy_noise_level: Option<f32>,
    #[prost(uint64, optional, tag = "52")]
    pub differential_privacy_clipping_threshold: Option<u64>,
    #[prost(string, optional, tag = "53")]
    pub pretokenization_delimiter: Option<String>,
    #[prost(string, optional, tag = "54")]
    pub seed_sentencepieces_file: Option<String>,
}

impl TrainerSpec {
    /// The model type (UNIGRAM when absent, the schema's default).
    pub fn kind(&self) -> ModelType {
        self.model_type
            .and_then(|t| ModelType::try_from(t).ok())
            .unwrap_or(ModelType::Unigram)
    }
}

/// `NormalizerSpec` (also used for the optional denormalizer).
#[derive(Clone, PartialEq, Message)]
pub struct NormalizerSpec {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(bytes = "vec", optional, tag = "2")]
    pub precompiled_charsmap: Option<Vec<u8>>,
    #[prost(bool, optional, tag = "3")]
    pub add_dummy_prefix: Option<bool>,
    #[prost(bool, optional, tag = "4")]
    pub remove_extra_whitespaces: Option<bool>,
    #[prost(bool, optional, tag = "5")]
    pub escape_whitespaces: Option<bool>,
    #[prost(string, optional, tag = "6")]
    pub normalization_rule_tsv: Option<String>,
}

/// `SelfTestData.Sample`.
#[derive(Clone, PartialEq, Message)]
pub struct SelfTestSample {
    #[prost(string, optional, tag = "1")]
    pub input: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub expected: Option<String>,
}

/// `SelfTestData`.
#[derive(Clone, PartialEq, Message)]
pub struct SelfTestData {
    #[prost(message, repeated, tag = "1")]
    pub samples: Vec<SelfTestSample>,
}

/// `ModelProto`: a whole SentencePiece `.model` file.
#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    #[prost(message, repeated, tag = "1")]
    pub pieces: Vec<SentencePiece>,
    #[prost(message, optional, tag = "2")]
    pub trainer_spec: Option<TrainerSpec>,
    #[prost(message, optional, tag = "3")]
    pub normalizer_spec: Option<NormalizerSpec>,
    #[prost(message, optional, tag = "4")]
    pub self_test_data: Option<SelfTestData>,
    #[prost(message, optional, tag = "5")]
    pub denormalizer_spec: Option<NormalizerSpec>,
}

/// Why bytes are not a usable `ModelProto`.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("not a SentencePiece model (protobuf decode failed: {0})")]
    Decode(#[from] prost::DecodeError),
    #[error("not a SentencePiece model: it has no pieces")]
    Empty,
    #[error("truncated or incomplete SentencePiece model: no {missing} after {pieces} pieces")]
    Incomplete {
        missing: &'static str,
        pieces: usize,
    },
    #[error("holds fields this reader does not know ({len} bytes would re-encode as {reencoded}); refusing to drop them")]
    UnknownFields { len: usize, reencoded: usize },
}

impl ModelProto {
    /// Decodes a `.model` file's bytes; fails on garbage, on an empty vocabulary, and when re-encoding would
    /// not reproduce the input exactly (unknown fields, or a writer that ordered fields differently).
    pub fn decode_exact(bytes: &[u8]) -> Result<ModelProto, ProtoError> {
        let proto = ModelProto::decode_lenient(bytes)?;
        let again = proto.encode_to_vec();
        if again != bytes {
            return Err(ProtoError::UnknownFields {
                len: bytes.len(),
                reencoded: again.len(),
            });
        }
        Ok(proto)
    }

    /// Decodes without the byte-exactness check. Refused: garbage, an empty vocabulary, and a model without
    /// its trainer or normalizer spec (sentencepiece always writes both after the pieces, so their absence
    /// means the file was cut short at a field boundary).
    pub fn decode_lenient(bytes: &[u8]) -> Result<ModelProto, ProtoError> {
        let proto = ModelProto::decode(bytes)?;
        if proto.pieces.is_empty() {
            return Err(ProtoError::Empty);
        }
        for (present, missing) in [
            (proto.trainer_spec.is_some(), "trainer_spec"),
            (proto.normalizer_spec.is_some(), "normalizer_spec"),
        ] {
            if !present {
                return Err(ProtoError::Incomplete {
                    missing,
                    pieces: proto.pieces.len(),
                });
            }
        }
        Ok(proto)
    }

    /// The serialized `.model` bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode_to_vec()
    }

    /// The trainer spec, or the schema's defaults when absent.
    pub fn trainer(&self) -> TrainerSpec {
        self.trainer_spec.clone().unwrap_or_default()
    }

    /// The normalizer spec, or the schema's defaults when absent.
    pub fn normalizer(&self) -> NormalizerSpec {
        self.normalizer_spec.clone().unwrap_or_default()
    }
}
