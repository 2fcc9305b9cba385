//! [`Tokenizer`]: one type over two backends. A SentencePiece `.model` gives exactly sentencepiece's ids:
//! LLaMA-style BPE models (identity normalizer) are encoded by a Rust port of sentencepiece's BPE loop
//! (`fast_bpe`), every other model by Google's C++ library through the `sentencepiece` crate, which also
//! decodes. An HF `tokenizer.json` is encoded and decoded by the `tokenizers` crate. A directory with both
//! prefers `tokenizer.model`; its `tokenizer_config.json` / `special_tokens_map.json` may name specials.

use crate::error::TokenizerError;
use crate::fast_bpe::FastBpe;
use crate::proto::ModelProto;
use crate::specials::{SpecialIds, SpecialNames};
use crate::stream::DecodeStream;
use crate::vocab::{PieceKind, Vocab};
use rayon::prelude::*;
use sentencepiece::SentencePieceProcessor;
use std::path::{Path, PathBuf};

enum Backend {
    SentencePiece {
        spp: Box<SentencePieceProcessor>,
        proto: Box<ModelProto>,
        fast: Option<Box<FastBpe>>,
    },
    HuggingFace(Box<tokenizers::Tokenizer>),
}

/// A loaded tokenizer (Send + Sync: share it across threads by reference or `Arc`).
pub struct Tokenizer {
    backend: Backend,
    vocab: Vocab,
    special: SpecialIds,
    source: PathBuf,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("source", &self.source)
            .field("backend", &self.backend_name())
            .field("vocab_size", &self.vocab.len())
            .field("special", &self.special)
            .finish()
    }
}

impl Tokenizer {
    /// Loads a SentencePiece `.model`, an HF `tokenizer.json`, or a directory holding `tokenizer.model`
    /// and/or `tokenizer.json` (with `tokenizer_config.json` / `special_tokens_map.json` naming specials).
    pub fn from_path(path: &Path) -> Result<Tokenizer, TokenizerError> {
        if path.is_dir() {
            let names = SpecialNames::from_dir(path);
            let model = path.join("tokenizer.model");
            let json = path.join("tokenizer.json");
            let mut tok = if model.is_file() {
                Tokenizer::from_sentencepiece_file(&model)?
            } else if json.is_file() {
                Tokenizer::from_hf_json_file(&json)?
            } else {
                return Err(TokenizerError::NothingToLoad {
                    path: path.to_owned(),
                });
            };
            tok.apply_names(&names);
            return Ok(tok);
        }
        let bytes = std::fs::read(path).map_err(|e| TokenizerError::read(path, e))?;
        let looks_json = bytes
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|&b| b == b'{');
        if looks_json {
            let mut tok = Tokenizer::from_hf_json_bytes(&bytes, path)?;
            if let Some(dir) = path.parent() {
                tok.apply_names(&SpecialNames::from_dir(dir));
            }
            Ok(tok)
        } else {
            Tokenizer::from_sentencepiece_bytes(&bytes, path)
        }
    }

    /// Loads a SentencePiece `.model` file.
    pub fn from_sentencepiece_file(path: &Path) -> Result<Tokenizer, TokenizerError> {
        let bytes = std::fs::read(path).map_err(|e| TokenizerError::read(path, e))?;
        Tokenizer::from_sentencepiece_bytes(&bytes, path)
    }

    /// A SentencePiece model from its serialized bytes; `source` names it in errors.
    pub fn from_sentencepiece_bytes(
        bytes: &[u8],
        source: &Path,
    ) -> Result<Tokenizer, TokenizerError> {
        let proto = ModelProto::decode_lenient(bytes).map_err(|e| TokenizerError::Proto {
            path: source.to_owned(),
            source: e,
        })?;
        Tokenizer::from_proto_with_bytes(proto, bytes, source)
    }

    /// A SentencePiece model from a decoded `ModelProto` (e.g. a freshly merged one).
    pub fn from_proto(proto: ModelProto, source: &Path) -> Result<Tokenizer, TokenizerError> {
        let bytes = proto.to_bytes();
        Tokenizer::from_proto_with_bytes(proto, &bytes, source)
    }

    fn from_proto_with_bytes(
        proto: ModelProto,
        bytes: &[u8],
        source: &Path,
    ) -> Result<Tokenizer, TokenizerError> {
        let spp = SentencePieceProcessor::from_serialized_proto(bytes).map_err(|e| {
            TokenizerError::SentencePiece {
                path: source.to_owned(),
                msg: e.to_string(),
            }
        })?;
        let vocab = Vocab::from_proto(&proto);
        let special = SpecialIds {
            bos: spp.bos_id(),
            eos: spp.eos_id(),
            pad: spp.pad_id(),
            unk: Some(spp.unk_id()),
        };
        let fast = FastBpe::new(&proto).map(Box::new);
        Ok(Tokenizer {
            backend: Backend::SentencePiece {
                spp: Box::new(spp),
                proto: Box::new(proto),
                fast,
            },
            vocab,
            special,
            source: source.to_owned(),
        })
    }

    /// Loads an HF `tokenizer.json` file.
    pub fn from_hf_json_file(path: &Path) -> Result<Tokenizer, TokenizerError> {
        let bytes = std::fs::read(path).map_err(|e| TokenizerError::read(path, e))?;
        Tokenizer::from_hf_json_bytes(&bytes, path)
    }

    fn from_hf_json_bytes(bytes: &[u8], source: &Path) -> Result<Tokenizer, TokenizerError> {
        let hf = tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|e| TokenizerError::invalid(source, format!("not a tokenizer.json: {e}")))?;
        let size = hf.get_vocab_size(true);
        let mut pieces = vec![String::new(); size];
        let mut special = vec![false; size];
        for (piece, id) in hf.get_vocab(true) {
            let slot = pieces.get_mut(id as usize).ok_or_else(|| {
                TokenizerError::invalid(source, format!("token {piece:?} has id {id} ≥ {size}"))
            })?;
            *slot = piece;
        }
        for (id, added) in hf.get_added_tokens_decoder() {
            if added.special {
                if let Some(s) = special.get_mut(id as usize) {
                    *s = true;
                }
            }
        }
        let vocab = Vocab::from_pieces(pieces, &special);
        let by_name = |name: &str| vocab.id(name);
        let unk = match hf.get_model() {
            tokenizers::ModelWrapper::BPE(bpe) => bpe.unk_token.as_deref().and_then(by_name),
            _ => None,
        }
        .or_else(|| by_name("<unk>"));
        let special = SpecialIds {
            bos: by_name("<s>"),
            eos: by_name("</s>"),
            pad: None,
            unk,
        };
        Ok(Tokenizer {
            backend: Backend::HuggingFace(Box::new(hf)),
            vocab,
            special,
            source: source.to_owned(),
        })
    }

    /// Lets the HF side files name (or rename) specials, where the named piece exists.
    fn apply_names(&mut self, names: &SpecialNames) {
        let lookup = |n: &Option<String>| n.as_deref().and_then(|p| self.vocab.id(p));
        let (bos, eos, pad, unk) = (
            lookup(&names.bos),
            lookup(&names.eos),
            lookup(&names.pad),
            lookup(&names.unk),
        );
        self.special.bos = bos.or(self.special.bos);
        self.special.eos = eos.or(self.special.eos);
        self.special.pad = pad.or(self.special.pad);
        self.special.unk = unk.or(self.special.unk);
    }

    /// `"sentencepiece"` or `"tokenizers"`: which library encodes.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::SentencePiece { .. } => "sentencepiece",
            Backend::HuggingFace(_) => "tokenizers",
        }
    }

    /// The file this tokenizer was loaded from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The SentencePiece model, when that is the backend.
    pub fn model_proto(&self) -> Option<&ModelProto> {
        match &self.backend {
            Backend::SentencePiece { proto, .. } => Some(proto),
            Backend::HuggingFace(_) => None,
        }
    }

    /// Token ids of `text`, optionally framed by BOS / EOS (skipped when the model has none).
    pub fn encode(
        &self,
        text: &str,
        add_bos: bool,
        add_eos: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        let mut ids = Vec::with_capacity(text.len() / 2 + 2);
        if add_bos {
            ids.extend(self.special.bos);
        }
        match &self.backend {
            Backend::SentencePiece {
                fast: Some(fast), ..
            } => fast.encode_into(text, &mut ids),
            Backend::SentencePiece { spp, .. } => {
                let pieces = spp
                    .encode(text)
                    .map_err(|e| TokenizerError::Encode(e.to_string()))?;
                ids.extend(pieces.into_iter().map(|p| p.id));
            }
            Backend::HuggingFace(hf) => {
                let enc = hf
                    .encode_fast(text, false)
                    .map_err(|e| TokenizerError::Encode(e.to_string()))?;
                ids.extend_from_slice(enc.get_ids());
            }
        }
        if add_eos {
            ids.extend(self.special.eos);
        }
        Ok(ids)
    }

    /// Ids of `text` (no BOS/EOS) from the backend library itself, bypassing the Rust BPE fast path — for
    /// cross-checks and benchmarks.
    pub fn encode_with_library(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        match &self.backend {
            Backend::SentencePiece { spp, .. } => Ok(spp
                .encode(text)
                .map_err(|e| TokenizerError::Encode(e.to_string()))?
                .into_iter()
                .map(|p| p.id)
                .collect()),
            Backend::HuggingFace(_) => self.encode(text, false, false),
        }
    }

    /// Whether encoding runs through the pure-Rust sentencepiece BPE path.
    pub fn uses_fast_path(&self) -> bool {
        matches!(self.backend, Backend::SentencePiece { fast: Some(_), .. })
    }

    /// [`Tokenizer::encode`] over many texts in parallel (rayon), results in input order.
    pub fn encode_batch<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
        add_bos: bool,
        add_eos: bool,
    ) -> Result<Vec<Vec<u32>>, TokenizerError> {
        texts
            .par_iter()
            .map(|t| self.encode(t.as_ref(), add_bos, add_eos))
            .collect()
    }

    /// The text of `ids`; BOS / EOS / PAD (and other control tokens) are skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        let size = self.vocab.len();
        let mut kept = Vec::with_capacity(ids.len());
        for &id in ids {
            if id as usize >= size {
                return Err(TokenizerError::IdOutOfRange { id, size });
            }
            if self.is_skipped_special(id) {
                continue;
            }
            kept.push(id);
        }
        match &self.backend {
            Backend::SentencePiece { spp, .. } => spp
                .decode_piece_ids(&kept)
                .map_err(|e| TokenizerError::Decode(e.to_string())),
            Backend::HuggingFace(hf) => hf
                .decode(&kept, true)
                .map_err(|e| TokenizerError::Decode(e.to_string())),
        }
    }

    fn is_skipped_special(&self, id: u32) -> bool {
        let s = &self.special;
        Some(id) == s.bos
            || Some(id) == s.eos
            || Some(id) == s.pad
            || self.vocab.kind(id) == Some(PieceKind::Control)
    }

    /// An incremental decoder for streaming generation (see [`DecodeStream`]).
    pub fn decode_stream(&self) -> DecodeStream<'_> {
        DecodeStream::new(self)
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.special.bos
    }
    pub fn eos_id(&self) -> Option<u32> {
        self.special.eos
    }
    pub fn pad_id(&self) -> Option<u32> {
        self.special.pad
    }
    pub fn unk_id(&self) -> Option<u32> {
        self.special.unk
    }
    /// All special ids at once.
    pub fn special_ids(&self) -> SpecialIds {
        self.special
    }

    /// Number of pieces (ids are `0..vocab_size`).
    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }
    pub fn token_to_id(&self, piece: &str) -> Option<u32> {
        self.vocab.id(piece)
    }
    pub fn id_to_piece(&self, id: u32) -> Option<String> {
        self.vocab.piece(id).map(str::to_owned)
    }
    /// The kind of piece `id` is (byte-fallback pieces carry their byte).
    pub fn piece_kind(&self, id: u32) -> Option<PieceKind> {
        self.vocab.kind(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Tokenizer>();
    }
}
