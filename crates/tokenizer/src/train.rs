//! Training a new SentencePiece model from a text corpus.
//!
//! The `sentencepiece` crate exposes no trainer, so the `tokenizers` crate's Unigram / BPE trainers learn
//! the pieces and the result is written as a SentencePiece `ModelProto` that Google's sentencepiece loads:
//! `<unk>`, `<s>`, `</s>`, the 256 byte-fallback pieces (when enabled), then the learned pieces with their
//! scores (Unigram: log-probabilities; BPE: minus the merge rank, characters last), identity normalizer with
//! a dummy prefix. Text is pre-split like sentencepiece's trainer: spaces become `▁`, every line gets a
//! leading `▁`, words split before each `▁`. Characters outside `character_coverage` are left to byte
//! fallback (they split words during training).

use crate::error::TokenizerError;
use crate::proto::{ModelProto, ModelType, NormalizerSpec, PieceType, SentencePiece, TrainerSpec};
use std::collections::{HashMap, HashSet};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::unigram::{Unigram, UnigramTrainerBuilder};
use tokenizers::Trainer;

/// Training options (mirrors the sentencepiece trainer flags that matter here).
#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub vocab_size: usize,
    pub model_type: ModelType,
    /// Fraction of character occurrences the vocabulary must cover (sentencepiece's default 0.9995).
    pub character_coverage: f64,
    /// Add the 256 `<0xNN>` pieces so uncovered characters encode as bytes.
    pub byte_fallback: bool,
    pub max_piece_length: usize,
    /// Shown as a progress bar on stderr.
    pub show_progress: bool,
    /// Names recorded in `trainer_spec.input`.
    pub input_names: Vec<String>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            vocab_size: 8000,
            model_type: ModelType::Unigram,
            character_coverage: 0.9995,
            byte_fallback: true,
            max_piece_length: 16,
            show_progress: false,
            input_names: Vec::new(),
        }
    }
}

const SPACE: char = '\u{2581}';

/// The characters kept: most frequent first until `coverage` of all occurrences is reached, and at most
/// `max_chars` of them (a vocabulary must leave room for multi-character pieces; the rest fall back to bytes).
fn covered_chars(lines: &[String], coverage: f64, max_chars: usize) -> HashSet<char> {
    let mut counts: HashMap<char, u64> = HashMap::new();
    let mut total = 0u64;
    for l in lines {
        for c in l.chars().filter(|c| !c.is_whitespace()) {
            *counts.entry(c).or_default() += 1;
            total += 1;
        }
    }
    let mut by_freq: Vec<(char, u64)> = counts.into_iter().collect();
    by_freq.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let need = (total as f64 * coverage.clamp(0.0, 1.0)).ceil() as u64;
    let mut kept = HashSet::new();
    let mut acc = 0u64;
    for (c, n) in by_freq {
        if acc >= need {
            break;
        }
        if kept.len() >= max_chars {
            tracing::warn!(
                "the vocabulary leaves room for {max_chars} characters: coverage is {:.4} instead of {coverage}",
                acc as f64 / total.max(1) as f64
            );
            break;
        }
        acc += n;
        kept.insert(c);
    }
    kept.insert(SPACE);
    kept
}

/// Splits a line into training words: `▁`-prefixed, broken at uncovered characters.
fn pre_split(line: &str, kept: &HashSet<char>) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let text = format!("{SPACE}{}", line.trim().replace(' ', &SPACE.to_string()));
    for c in text.chars() {
        if c == SPACE && !cur.is_empty() {
            words.push(std::mem::take(&mut cur));
        }
        if kept.contains(&c) {
            cur.push(c);
        } else if !cur.is_empty() {
            words.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

fn train_err(e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Train(e.to_string())
}

/// Learned pieces with sentencepiece scores, best first.
fn learn(
    lines: &[String],
    budget: usize,
    opts: &TrainOptions,
) -> Result<Vec<(String, f32)>, TokenizerError> {
    let kept = covered_chars(lines, opts.character_coverage, budget * 3 / 4);
    let process = |l: &str| -> tokenizers::Result<Vec<String>> { Ok(pre_split(l, &kept)) };
    match opts.model_type {
        ModelType::Unigram => {
            let mut trainer = UnigramTrainerBuilder::default()
                .vocab_size(budget as u32)
                .show_progress(opts.show_progress)
                .max_piece_length(opts.max_piece_length)
                .build()
                .map_err(train_err)?;
            trainer.feed(lines.iter(), process).map_err(train_err)?;
            let mut model = Unigram::default();
            trainer.train(&mut model).map_err(train_err)?;
            let mut pieces: Vec<(String, f32)> = model
                .iter()
                .filter(|(p, _)| p.as_str() != "<unk>")
                .map(|(p, s)| (p.clone(), *s as f32))
                .collect();
            pieces.sort_by(|a, b| b.1.total_cmp(&a.1));
            Ok(pieces)
        }
        ModelType::Bpe => {
            let mut trainer = BpeTrainerBuilder::new()
                .vocab_size(budget)
                .show_progress(opts.show_progress)
                .max_token_length(Some(opts.max_piece_length))
                .build();
            trainer.feed(lines.iter(), process).map_err(train_err)?;
            let mut model = BPE::default();
            trainer.train(&mut model).map_err(train_err)?;
            let json = serde_json::to_value(&model).map_err(train_err)?;
            let merges = json["merges"].as_array().cloned().unwrap_or_default();
            let mut pieces = Vec::new();
            let mut seen = HashSet::new();
            for (rank, m) in merges.iter().enumerate() {
                let pair: Option<(&str, &str)> = match m {
                    serde_json::Value::Array(a) => a
                        .first()
                        .and_then(|l| l.as_str())
                        .zip(a.get(1).and_then(|r| r.as_str())),
                    serde_json::Value::String(s) => s.split_once(' '),
                    _ => None,
                };
                let (l, r) = pair.ok_or_else(|| train_err(format!("unexpected merge {m}")))?;
                let merged = format!("{l}{r}");
                if seen.insert(merged.clone()) {
                    pieces.push((merged, -(rank as f32)));
                }
            }
            // Characters after every merge, most frequent first (as sentencepiece's BPE trainer orders them).
            let mut vocab: Vec<(String, u32)> = model.get_vocab().into_iter().collect();
            vocab.sort_by_key(|(_, id)| *id);
            for (p, _) in vocab {
                if p.chars().count() == 1 && seen.insert(p.clone()) {
                    let score = -(pieces.len() as f32);
                    pieces.push((p, score));
                }
            }
            Ok(pieces)
        }
        other => Err(train_err(format!(
            "model type {other:?} is not supported (use unigram or bpe)"
        ))),
    }
}

/// Trains a SentencePiece model on `lines` (one sentence per item).
pub fn train(lines: &[String], opts: &TrainOptions) -> Result<ModelProto, TokenizerError> {
    let reserved = 3 + if opts.byte_fallback { 256 } else { 0 };
    if opts.vocab_size <= reserved + 1 {
        return Err(train_err(format!(
            "vocab size {} is too small: {reserved} pieces are reserved for specials{}",
            opts.vocab_size,
            if opts.byte_fallback { " and bytes" } else { "" }
        )));
    }
    if lines.iter().all(|l| l.trim().is_empty()) {
        return Err(train_err("the corpus is empty"));
    }
    let learned = learn(lines, opts.vocab_size - reserved, opts)?;
    let mut pieces = vec![
        SentencePiece::new("<unk>", 0.0, PieceType::Unknown),
        SentencePiece::new("<s>", 0.0, PieceType::Control),
        SentencePiece::new("</s>", 0.0, PieceType::Control),
    ];
    if opts.byte_fallback {
        pieces.extend(
            (0..=255u8).map(|b| SentencePiece::new(format!("<0x{b:02X}>"), 0.0, PieceType::Byte)),
        );
    }
    let mut seen: HashSet<String> = pieces.iter().map(|p| p.text().to_owned()).collect();
    for (p, score) in learned {
        if pieces.len() >= opts.vocab_size {
            break;
        }
        if seen.insert(p.clone()) {
            pieces.push(SentencePiece::new(p, score, PieceType::Normal));
        }
    }
    let trainer_spec = TrainerSpec {
        input: opts.input_names.clone(),
        model_type: Some(opts.model_type as i32),
        vocab_size: Some(pieces.len() as i32),
        character_coverage: Some(opts.character_coverage as f32),
        max_sentencepiece_length: Some(opts.max_piece_length as i32),
        byte_fallback: Some(opts.byte_fallback),
        unk_id: Some(0),
        bos_id: Some(1),
        eos_id: Some(2),
        pad_id: Some(-1),
        ..Default::default()
    };
    let normalizer_spec = NormalizerSpec {
        name: Some("identity".into()),
        precompiled_charsmap: Some(Vec::new()),
        add_dummy_prefix: Some(true),
        remove_extra_whitespaces: Some(true),
        escape_whitespaces: Some(true),
        normalization_rule_tsv: None,
    };
    Ok(ModelProto {
        pieces,
        trainer_spec: Some(trainer_spec),
        normalizer_spec: Some(normalizer_spec),
        self_test_data: None,
        denormalizer_spec: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pre_split_marks_words_and_drops_uncovered() {
        let kept: HashSet<char> = "ab▁".chars().collect();
        assert_eq!(pre_split("ab a", &kept), ["▁ab", "▁a"]);
        assert_eq!(pre_split("aXb", &kept), ["▁a", "b"]);
    }

    #[test]
    fn coverage_keeps_frequent_chars() {
        let lines = vec!["aaaaaaaaab".to_string()];
        let k = covered_chars(&lines, 0.9, 10);
        assert!(k.contains(&'a') && !k.contains(&'b'));
        let k = covered_chars(&lines, 1.0, 10);
        assert!(k.contains(&'b'));
        let k = covered_chars(&lines, 1.0, 1);
        assert!(k.contains(&'a') && !k.contains(&'b'));
    }
}
