//! Export of a SentencePiece BPE model as Hugging Face files: `tokenizer.json` (a `tokenizers` BPE model with
//! byte fallback, laid out as transformers' own `LlamaTokenizer` builds it: no normalizer, a Metaspace
//! pre-tokenizer with `prepend_scheme: first` and no split, BOS post-processor, Replace/ByteFallback/Fuse/
//! Strip decoder), `tokenizer_config.json` and `special_tokens_map.json`.
//!
//! Merges: for each NORMAL/USER_DEFINED piece, every split into two pieces that are both in the vocabulary;
//! ordered by the merged piece's score (high first, as sentencepiece picks the highest-scoring pair), then
//! by its id, then by the left part's id. sentencepiece breaks ties between equal scores by position
//! (leftmost pair first) while `tokenizers` ranks every pair strictly, so pieces sharing a score (the
//! score-0 pieces a vocabulary merge appends) can segment differently where two of them overlap.

use crate::error::TokenizerError;
use crate::proto::{ModelProto, ModelType, PieceType};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::path::Path;

/// The three HF files as JSON values.
#[derive(Clone, Debug)]
pub struct HfFiles {
    pub tokenizer_json: Value,
    pub tokenizer_config: Value,
    pub special_tokens_map: Value,
}

/// BPE merges for a SentencePiece BPE vocabulary, in the priority order described in the module docs.
pub fn bpe_merges(proto: &ModelProto) -> Vec<(String, String)> {
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(proto.pieces.len());
    for (i, p) in proto.pieces.iter().enumerate() {
        if matches!(
            p.kind(),
            PieceType::Normal | PieceType::UserDefined | PieceType::Unused
        ) {
            index.entry(p.text()).or_insert(i);
        }
    }
    // (score, merged id, left id, right id)
    let mut merges: Vec<(f32, usize, usize, usize)> = Vec::new();
    for (id, p) in proto.pieces.iter().enumerate() {
        if !matches!(p.kind(), PieceType::Normal | PieceType::UserDefined) {
            continue;
        }
        let text = p.text();
        for (cut, _) in text.char_indices().skip(1) {
            let (l, r) = text.split_at(cut);
            if let (Some(&li), Some(&ri)) = (index.get(l), index.get(r)) {
                merges.push((p.score.unwrap_or(0.0), id, li, ri));
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    merges
        .into_iter()
        .map(|(_, _, l, r)| {
            (
                proto.pieces[l].text().to_owned(),
                proto.pieces[r].text().to_owned(),
            )
        })
        .collect()
}

fn special_piece(proto: &ModelProto, id: Option<i32>) -> Option<(u32, String)> {
    let id = u32::try_from(id?).ok()?;
    let p = proto.pieces.get(id as usize)?;
    Some((id, p.text().to_owned()))
}

/// Builds the HF files for a SentencePiece BPE model (`source` names it in errors).
pub fn hf_files(proto: &ModelProto, source: &Path) -> Result<HfFiles, TokenizerError> {
    let trainer = proto.trainer();
    if trainer.kind() != ModelType::Bpe {
        return Err(TokenizerError::invalid(
            source,
            format!(
                "HF export supports BPE SentencePiece models (this one is {:?})",
                trainer.kind()
            ),
        ));
    }
    let norm = proto.normalizer();
    if !matches!(norm.name.as_deref(), None | Some("identity")) {
        return Err(TokenizerError::invalid(
            source,
            format!(
                "HF export needs the identity normalizer (LLaMA's); this model uses {:?}",
                norm.name.unwrap_or_default()
            ),
        ));
    }
    let add_prefix = norm.add_dummy_prefix.unwrap_or(true);
    let unk = special_piece(proto, Some(trainer.unk_id.unwrap_or(0)));
    let bos = special_piece(proto, Some(trainer.bos_id.unwrap_or(1)));
    let eos = special_piece(proto, Some(trainer.eos_id.unwrap_or(2)));
    let pad = special_piece(proto, Some(trainer.pad_id.unwrap_or(-1)));

    let mut vocab = Map::with_capacity(proto.pieces.len());
    for (i, p) in proto.pieces.iter().enumerate() {
        vocab.entry(p.text().to_owned()).or_insert(json!(i));
    }
    let merges: Vec<Value> = bpe_merges(proto)
        .into_iter()
        .map(|(l, r)| json!([l, r]))
        .collect();

    let mut added = Vec::new();
    for (i, p) in proto.pieces.iter().enumerate() {
        let special = match p.kind() {
            PieceType::Control | PieceType::Unknown => true,
            PieceType::UserDefined => false,
            _ => continue,
        };
        added.push(json!({
            "id": i, "content": p.text(), "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": special,
        }));
    }

    let post_processor = match &bos {
        Some((id, piece)) => json!({
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": piece, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}}
            ],
            "pair": [
                {"SpecialToken": {"id": piece, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": piece, "type_id": 1}},
                {"Sequence": {"id": "B", "type_id": 1}}
            ],
            "special_tokens": {piece.clone(): {"id": piece, "ids": [id], "tokens": [piece]}}
        }),
        None => Value::Null,
    };
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if add_prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    let tokenizer_json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {
            "type": "Metaspace", "replacement": "\u{2581}",
            "prepend_scheme": if add_prefix { "first" } else { "never" }, "split": false
        },
        "post_processor": post_processor,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {
            "type": "BPE", "dropout": null,
            "unk_token": unk.as_ref().map(|u| u.1.clone()),
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": true, "byte_fallback": trainer.byte_fallback.unwrap_or(false),
            "ignore_merges": false, "vocab": vocab, "merges": merges
        }
    });

    let name = |t: &Option<(u32, String)>| t.as_ref().map(|t| t.1.clone());
    let special_tokens_map = json!({
        "bos_token": name(&bos), "eos_token": name(&eos), "unk_token": name(&unk), "pad_token": name(&pad),
    });
    let special_tokens_map = Value::Object(
        special_tokens_map
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    );
    let tokenizer_config = json!({
        "add_bos_token": bos.is_some(),
        "add_eos_token": false,
        "add_prefix_space": add_prefix,
        "bos_token": name(&bos),
        "eos_token": name(&eos),
        "unk_token": name(&unk),
        "pad_token": name(&pad),
        "clean_up_tokenization_spaces": false,
        "legacy": false,
        "model_max_length": 1_000_000_000_000_000_000u64,
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
    });
    Ok(HfFiles {
        tokenizer_json,
        tokenizer_config,
        special_tokens_map,
    })
}

impl HfFiles {
    /// Checks that `tokenizers` accepts the JSON, returning the loaded tokenizer.
    pub fn load(&self, source: &Path) -> Result<tokenizers::Tokenizer, TokenizerError> {
        let text = self.tokenizer_json.to_string();
        text.parse::<tokenizers::Tokenizer>().map_err(|e| {
            TokenizerError::invalid(source, format!("exported tokenizer.json is invalid: {e}"))
        })
    }

    /// Writes the three files into `dir` (each atomically).
    pub fn write(&self, dir: &Path) -> Result<(), TokenizerError> {
        for (file, value) in [
            ("tokenizer.json", &self.tokenizer_json),
            ("tokenizer_config.json", &self.tokenizer_config),
            ("special_tokens_map.json", &self.special_tokens_map),
        ] {
            let mut text = serde_json::to_string_pretty(value)
                .map_err(|e| TokenizerError::invalid(dir.join(file), e.to_string()))?;
            text.push('\n');
            ferrotune_core::write_atomic(dir.join(file), text.as_bytes())?;
        }
        Ok(())
    }
}
