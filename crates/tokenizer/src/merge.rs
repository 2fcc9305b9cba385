//! Vocabulary extension by the Chinese-LLaMA-Alpaca method (`merge_tokenizers.py`): every piece of the
//! added models, then every word of an optional word list, that the base lacks is appended in order with
//! score 0 and the default type (NORMAL); the base's trainer and normalizer specs are kept unchanged.

use crate::error::TokenizerError;
use crate::proto::{ModelProto, SentencePiece};
use std::collections::HashSet;
use std::path::Path;

/// What one source contributed to a merge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergeSource {
    /// The added model or word list, as given.
    pub name: String,
    /// Pieces it offered.
    pub offered: usize,
    /// Pieces appended (those neither in the base nor added by an earlier source).
    pub added: usize,
}

/// Summary of a merge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergeReport {
    pub base_pieces: usize,
    pub total_pieces: usize,
    pub sources: Vec<MergeSource>,
}

impl MergeReport {
    /// Pieces appended in total.
    pub fn added(&self) -> usize {
        self.total_pieces - self.base_pieces
    }
}

/// Builds a merged model step by step: start from the base, then [`Merger::add_model`] /
/// [`Merger::add_words`] in the order the user gave them.
#[derive(Debug)]
pub struct Merger {
    proto: ModelProto,
    seen: HashSet<String>,
    report: MergeReport,
}

impl Merger {
    pub fn new(base: ModelProto) -> Merger {
        let seen: HashSet<String> = base.pieces.iter().map(|p| p.text().to_owned()).collect();
        let n = base.pieces.len();
        Merger {
            proto: base,
            seen,
            report: MergeReport {
                base_pieces: n,
                total_pieces: n,
                sources: Vec::new(),
            },
        }
    }

    fn append(&mut self, piece: &str) -> bool {
        if piece.is_empty() || self.seen.contains(piece) {
            return false;
        }
        self.seen.insert(piece.to_owned());
        // Score 0 set explicitly, type left at its default (NORMAL), exactly as merge_tokenizers.py does.
        self.proto.pieces.push(SentencePiece {
            piece: Some(piece.to_owned()),
            score: Some(0.0),
            r#type: None,
        });
        true
    }

    /// Appends the pieces of `other` the model lacks (all types, in `other`'s order, as upstream does).
    pub fn add_model(&mut self, name: &str, other: &ModelProto) -> &mut Self {
        let mut added = 0;
        for p in &other.pieces {
            added += usize::from(self.append(p.text()));
        }
        self.finish_source(name, other.pieces.len(), added)
    }

    /// Appends words (one per item; surrounding whitespace trimmed, inner spaces become `▁` as sentencepiece's
    /// normalizer escapes them, empty lines skipped).
    pub fn add_words<'w>(
        &mut self,
        name: &str,
        words: impl IntoIterator<Item = &'w str>,
    ) -> &mut Self {
        let (mut offered, mut added) = (0, 0);
        for w in words {
            let w = w.trim();
            if w.is_empty() {
                continue;
            }
            offered += 1;
            added += usize::from(self.append(&w.replace(' ', "\u{2581}")));
        }
        self.finish_source(name, offered, added)
    }

    fn finish_source(&mut self, name: &str, offered: usize, added: usize) -> &mut Self {
        tracing::info!("{name}: {added} of {offered} pieces added");
        self.report.total_pieces = self.proto.pieces.len();
        self.report.sources.push(MergeSource {
            name: name.to_owned(),
            offered,
            added,
        });
        self
    }

    /// The merged model and what was added.
    pub fn finish(self) -> (ModelProto, MergeReport) {
        (self.proto, self.report)
    }
}

/// Reads a `.model` file into a `ModelProto`, naming the file in errors.
pub fn read_model(path: &Path) -> Result<ModelProto, TokenizerError> {
    let bytes = std::fs::read(path).map_err(|e| TokenizerError::read(path, e))?;
    let proto = ModelProto::decode_lenient(&bytes).map_err(|e| TokenizerError::Proto {
        path: path.to_owned(),
        source: e,
    })?;
    if proto.to_bytes() != bytes {
        tracing::warn!(
            "{}: holds protobuf fields this reader does not model; they are not carried into outputs",
            path.display()
        );
    }
    Ok(proto)
}

/// Reads a word list (one word per line, UTF-8).
pub fn read_word_list(path: &Path) -> Result<String, TokenizerError> {
    std::fs::read_to_string(path).map_err(|e| TokenizerError::read(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::PieceType;

    fn model(pieces: &[&str]) -> ModelProto {
        ModelProto {
            pieces: pieces
                .iter()
                .map(|p| SentencePiece::new(*p, -1.0, PieceType::Normal))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn appends_missing_in_order_once() {
        let mut m = Merger::new(model(&["<unk>", "a", "b"]));
        m.add_model("x", &model(&["b", "c", "a", "d"]))
            .add_words("w", ["  c ", "", "e f", "d"]);
        let (p, r) = m.finish();
        let texts: Vec<&str> = p.pieces.iter().map(|p| p.text()).collect();
        assert_eq!(texts, ["<unk>", "a", "b", "c", "d", "e\u{2581}f"]);
        assert_eq!(r.added(), 3);
        assert_eq!(r.sources[0].added, 2);
        assert_eq!(r.sources[1].offered, 3);
        assert_eq!(r.sources[1].added, 1);
        assert_eq!(p.pieces[3].score, Some(0.0));
        assert_eq!(p.pieces[3].kind(), PieceType::Normal);
    }
}
