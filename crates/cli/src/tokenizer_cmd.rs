//! Tokenizer subcommands: `merge-tokenizer` (extend a LLaMA vocabulary, write SentencePiece + HF files),
//! `tokenize` (ids and pieces of texts, or token counts per line of a file) and `train-tokenizer`
//! (a new SentencePiece model from a corpus).

use anyhow::{bail, Context};
use ferrotune_tokenizer::merge::{read_model, read_word_list, Merger};
use ferrotune_tokenizer::train::{train, TrainOptions};
use ferrotune_tokenizer::{hf_files, ModelType, Tokenizer};
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct MergeTokenizerArgs {
    /// The base SentencePiece model (LLaMA's tokenizer.model).
    #[arg(long)]
    base: PathBuf,
    /// SentencePiece model(s) whose pieces are appended (in order) where the base lacks them.
    #[arg(long, num_args = 1..)]
    add: Vec<PathBuf>,
    /// Word list(s), one word per line, appended after the models.
    #[arg(long = "add-vocab")]
    add_vocab: Vec<PathBuf>,
    /// Output directory (tokenizer.model, tokenizer.json, tokenizer_config.json, special_tokens_map.json).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct TokenizeArgs {
    /// A .model, a tokenizer.json, or a directory holding them.
    #[arg(long)]
    tokenizer: PathBuf,
    /// One JSON object per text: {"ids": [...], "pieces": [...]} (with --file: counts per line).
    #[arg(long)]
    json: bool,
    /// Do not prepend BOS.
    #[arg(long)]
    no_bos: bool,
    /// Tokenize every line of this file and print token counts (tokens per character).
    #[arg(long, conflicts_with = "text")]
    file: Option<PathBuf>,
    /// Texts to tokenize.
    #[arg(required_unless_present = "file")]
    text: Vec<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ModelKind {
    Bpe,
    Unigram,
}

#[derive(Debug, clap::Args)]
pub struct TrainTokenizerArgs {
    /// Corpus file(s): .txt (one sentence per line), .json / .jsonl (every string value).
    #[arg(long, required = true, num_args = 1..)]
    input: Vec<PathBuf>,
    /// Vocabulary size, specials and byte pieces included.
    #[arg(long)]
    vocab_size: usize,
    #[arg(long, value_enum, default_value = "unigram")]
    model_type: ModelKind,
    /// Fraction of character occurrences the vocabulary covers; the rest use byte fallback.
    #[arg(long, default_value_t = 0.9995)]
    character_coverage: f64,
    /// Leave out the 256 byte-fallback pieces.
    #[arg(long)]
    no_byte_fallback: bool,
    /// Output .model file.
    #[arg(long)]
    out: PathBuf,
}

pub fn merge(a: MergeTokenizerArgs) -> anyhow::Result<()> {
    if a.add.is_empty() && a.add_vocab.is_empty() {
        bail!("nothing to merge: give --add MODEL and/or --add-vocab WORDS");
    }
    let base = read_model(&a.base)?;
    let mut merger = Merger::new(base);
    for path in &a.add {
        let other = read_model(path)?;
        merger.add_model(&path.display().to_string(), &other);
    }
    for path in &a.add_vocab {
        let words = read_word_list(path)?;
        merger.add_words(&path.display().to_string(), words.lines());
    }
    let (proto, report) = merger.finish();
    let model_path = a.out.join("tokenizer.model");
    // Both outputs must load before anything is written.
    Tokenizer::from_proto(proto.clone(), &model_path)?;
    let hf = hf_files(&proto, &model_path)?;
    hf.load(&a.out.join("tokenizer.json"))?;

    let tmp = a.out.with_file_name(format!(
        ".{}.tmp-{}",
        a.out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "tokenizer".into()),
        std::process::id()
    ));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    ferrotune_core::write_atomic(tmp.join("tokenizer.model"), &proto.to_bytes())?;
    hf.write(&tmp)?;
    ferrotune_core::fsutil::commit_dir(&tmp, &a.out)?;

    for s in &report.sources {
        println!("{}: {} of {} pieces added", s.name, s.added, s.offered);
    }
    println!(
        "added {} pieces: {} -> {} ({})",
        report.added(),
        report.base_pieces,
        report.total_pieces,
        a.out.display()
    );
    Ok(())
}

pub fn tokenize(a: TokenizeArgs) -> anyhow::Result<()> {
    let tok = Tokenizer::from_path(&a.tokenizer)?;
    let add_bos = !a.no_bos;
    if let Some(file) = &a.file {
        return count_file(&tok, file, add_bos, a.json);
    }
    for text in &a.text {
        let ids = tok.encode(text, add_bos, false)?;
        let pieces: Vec<String> = ids
            .iter()
            .map(|&id| tok.id_to_piece(id).unwrap_or_default())
            .collect();
        if a.json {
            println!("{}", serde_json::json!({"ids": ids, "pieces": pieces}));
        } else {
            let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
            println!("ids: {}", ids.join(" "));
            println!("pieces: {}", pieces.join(" "));
        }
    }
    Ok(())
}

fn count_file(tok: &Tokenizer, file: &Path, add_bos: bool, json: bool) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let lines: Vec<&str> = text.lines().collect();
    let ids = tok.encode_batch(&lines, add_bos, false)?;
    let (mut all_tokens, mut all_chars) = (0usize, 0usize);
    for (n, (line, ids)) in lines.iter().zip(&ids).enumerate() {
        let chars = line.chars().count();
        all_tokens += ids.len();
        all_chars += chars;
        let ratio = ids.len() as f64 / chars.max(1) as f64;
        if json {
            println!(
                "{}",
                serde_json::json!({"line": n + 1, "tokens": ids.len(), "chars": chars, "tokens_per_char": ratio})
            );
        } else {
            println!(
                "line {}: {} tokens, {chars} chars, {ratio:.3} tokens/char",
                n + 1,
                ids.len()
            );
        }
    }
    let ratio = all_tokens as f64 / all_chars.max(1) as f64;
    if json {
        println!(
            "{}",
            serde_json::json!({"total": true, "lines": lines.len(), "tokens": all_tokens, "chars": all_chars, "tokens_per_char": ratio})
        );
    } else {
        println!(
            "total: {} lines, {all_tokens} tokens, {all_chars} chars, {ratio:.3} tokens/char",
            lines.len()
        );
    }
    Ok(())
}

pub fn train_tokenizer(a: TrainTokenizerArgs) -> anyhow::Result<()> {
    let mut lines = Vec::new();
    for path in &a.input {
        lines.extend(ferrotune_tokenizer::corpus::read_corpus(path)?);
    }
    tracing::info!(
        "training on {} lines from {} file(s)",
        lines.len(),
        a.input.len()
    );
    let opts = TrainOptions {
        vocab_size: a.vocab_size,
        model_type: match a.model_type {
            ModelKind::Bpe => ModelType::Bpe,
            ModelKind::Unigram => ModelType::Unigram,
        },
        character_coverage: a.character_coverage,
        byte_fallback: !a.no_byte_fallback,
        show_progress: false,
        input_names: a.input.iter().map(|p| p.display().to_string()).collect(),
        ..TrainOptions::default()
    };
    let proto = train(&lines, &opts)?;
    // What sentencepiece cannot load is never written.
    Tokenizer::from_proto(proto.clone(), &a.out)?;
    ferrotune_core::write_atomic(&a.out, &proto.to_bytes())?;
    println!("wrote {} ({} pieces)", a.out.display(), proto.pieces.len());
    Ok(())
}
