//! `ferrotune prepare-data` (dataset files → tokenized cache directory, with stats) and
//! `ferrotune inspect-data` (one cached sample, trained tokens highlighted, or as JSON).

use anyhow::{bail, Context};
use ferrotune_data::{
    fingerprint_file, prepare, source_from_file, CacheMeta, EncodeOptions, MixStrategy,
    OnBadRecord, Packing, PrepareConfig, Registry, Split, Stage, Template, TokenizedDataset,
    ValSize, IGNORE_INDEX,
};
use ferrotune_tokenizer::Tokenizer;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct PrepareDataArgs {
    /// Registered dataset name(s), comma-separated (see --dataset-dir).
    #[arg(
        long,
        required_unless_present = "data_file",
        conflicts_with = "data_file"
    )]
    dataset: Option<String>,
    /// Directory holding dataset_info.json (LLaMA-Factory format).
    #[arg(long, default_value = "datasets")]
    dataset_dir: PathBuf,
    /// Data file(s) used directly (.json array, .jsonl, .txt); the format is guessed from the first record.
    #[arg(long, num_args = 1.., value_delimiter = ',')]
    data_file: Vec<PathBuf>,
    /// Chat template: alpaca, llama2, llama3, chatml, vicuna, default, yuan, empty, or one from --template-file.
    #[arg(long)]
    template: String,
    /// A TOML file with extra templates ([name] tables, same keys as the built-ins).
    #[arg(long)]
    template_file: Option<PathBuf>,
    /// Tokenizer: a SentencePiece .model, an HF tokenizer.json, or a directory with either.
    #[arg(long)]
    tokenizer: PathBuf,
    /// Maximum tokens per sample (LLaMA-Factory's cutoff_len rule when longer).
    #[arg(long)]
    cutoff_len: usize,
    /// Pack samples into cutoff_len rows (`--packing`), or concatenate and chunk for pre-training
    /// (`--packing concat`).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    packing: Packing,
    /// Validation split: a fraction (0.1) or a count (200), drawn with --seed.
    #[arg(long, conflicts_with = "val_file")]
    val_size: Option<ValSize>,
    /// Validation data from file(s) instead of --val-size.
    #[arg(long, num_args = 1.., value_delimiter = ',')]
    val_file: Vec<PathBuf>,
    /// sft (prompt masked) or pt (every token trained). `--packing concat` implies pt.
    #[arg(long, default_value = "sft", value_parser = parse_stage)]
    stage: Stage,
    /// Also train on prompt tokens.
    #[arg(long)]
    train_on_prompt: bool,
    /// Train on the last turn only.
    #[arg(long)]
    mask_history: bool,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// How several datasets are combined: concat or interleave (seeded).
    #[arg(long, default_value = "concat")]
    mix: MixStrategy,
    /// At most this many records per dataset.
    #[arg(long)]
    max_samples: Option<u64>,
    /// Tokenization threads (default: all cores).
    #[arg(long, alias = "preprocessing-num-workers")]
    workers: Option<usize>,
    /// Rebuild the cache even if one with the same inputs exists.
    #[arg(long)]
    overwrite_cache: bool,
    /// `error` (default) stops at the first bad record; `skip` skips bad records and reports them.
    #[arg(long, default_value = "error")]
    on_bad_record: OnBadRecord,
    /// Output (cache) directory.
    #[arg(long)]
    out: PathBuf,
    /// Print the stats as one JSON object.
    #[arg(long)]
    json: bool,
}

fn parse_stage(s: &str) -> Result<Stage, String> {
    match s {
        "sft" => Ok(Stage::Sft),
        "pt" => Ok(Stage::Pt),
        o => Err(format!("unknown stage `{o}` (sft or pt)")),
    }
}

/// A fingerprint of the tokenizer's files (a directory: its tokenizer files and configs).
fn tokenizer_fingerprint(path: &Path) -> anyhow::Result<String> {
    if !path.is_dir() {
        return Ok(fingerprint_file(path)?);
    }
    let mut parts = Vec::new();
    for name in [
        "tokenizer.model",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        let p = path.join(name);
        if p.is_file() {
            parts.push(format!("{name}:{}", fingerprint_file(&p)?));
        }
    }
    Ok(parts.join(","))
}

pub fn run_prepare(a: PrepareDataArgs) -> anyhow::Result<()> {
    let sources = match &a.dataset {
        Some(names) => Registry::load(&a.dataset_dir)?.resolve(names)?,
        None => a
            .data_file
            .iter()
            .map(|f| source_from_file(f))
            .collect::<Result<_, _>>()?,
    };
    let val_sources = a
        .val_file
        .iter()
        .map(|f| source_from_file(f))
        .collect::<Result<_, _>>()?;
    let template = Template::load(&a.template, a.template_file.as_deref())?;
    let tok = Tokenizer::from_path(&a.tokenizer)
        .with_context(|| format!("loading the tokenizer {}", a.tokenizer.display()))?;
    let stage = if a.packing == Packing::Concat {
        Stage::Pt
    } else {
        a.stage
    };
    let cfg = PrepareConfig {
        sources,
        val_sources,
        template,
        stage,
        encode: EncodeOptions {
            cutoff_len: a.cutoff_len,
            train_on_prompt: a.train_on_prompt,
            mask_history: a.mask_history,
        },
        packing: a.packing,
        val_size: a.val_size,
        seed: a.seed,
        mix: a.mix,
        on_bad_record: a.on_bad_record,
        max_samples: a.max_samples,
        num_workers: a
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        tokenizer_path: Some(a.tokenizer.clone()),
        overwrite_cache: a.overwrite_cache,
    };
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed} {pos} records ({per_sec})")
            .expect("valid template"),
    );
    if a.json || !std::io::stderr().is_terminal() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let fp = tokenizer_fingerprint(&a.tokenizer)?;
    let report = prepare(&cfg, &tok, &fp, &a.out, &|n| bar.set_position(n))?;
    bar.finish_and_clear();
    let m = &report.meta;
    let s = &m.stats;
    if a.json {
        let v = serde_json::json!({
            "out": a.out, "reused": report.reused, "key": m.key, "splits": m.splits, "stats": s,
            "trained_percent": s.trained_percent(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{} {} ({})",
        if report.reused { "reused" } else { "wrote" },
        a.out.display(),
        m.datasets.join(", ")
    );
    println!("records        {}", s.records);
    println!("samples        {}", s.samples);
    println!("tokens         {}", s.tokens);
    println!(
        "trained        {} ({:.1}% of tokens)",
        s.trained_tokens,
        s.trained_percent()
    );
    println!("truncated      {}", s.truncated);
    println!("skipped        {}", s.skipped);
    for r in &s.skip_reasons {
        println!("  {r}");
    }
    println!(
        "length         p50 {}  p90 {}  p99 {}  max {}",
        s.length_p50, s.length_p90, s.length_p99, s.length_max
    );
    for (split, sm) in &m.splits {
        println!(
            "{:<14} {} rows, {} tokens{}",
            split.dir_name(),
            sm.samples,
            sm.tokens,
            if sm.packed { " (packed)" } else { "" }
        );
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct InspectDataArgs {
    /// A directory written by `prepare-data`.
    dir: PathBuf,
    #[arg(long, default_value = "train")]
    split: Split,
    #[arg(long)]
    index: usize,
    /// Print {"input_ids": [...], "labels": [...], "position_ids": [...]}.
    #[arg(long)]
    json: bool,
    /// Tokenizer for decoding (default: the one recorded by prepare-data).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
}

pub fn run_inspect(a: InspectDataArgs) -> anyhow::Result<()> {
    let ds = TokenizedDataset::open(&a.dir, a.split)?;
    if a.index >= ds.len() {
        bail!(
            "index {} out of range: the {} split has {} samples",
            a.index,
            a.split.dir_name(),
            ds.len()
        );
    }
    let s = ds.get(a.index);
    if a.json {
        let v = serde_json::json!({
            "input_ids": s.input_ids, "labels": s.labels, "position_ids": s.position_ids,
        });
        println!("{}", serde_json::to_string(&v)?);
        return Ok(());
    }
    let meta = CacheMeta::load(&a.dir)?;
    let tok_path = a
        .tokenizer
        .clone()
        .or(meta.tokenizer.clone())
        .context("no tokenizer recorded in meta.json: pass --tokenizer")?;
    let tok = Tokenizer::from_path(&tok_path)
        .with_context(|| format!("loading {}", tok_path.display()))?;
    let color = std::io::stdout().is_terminal();
    let (on, off) = if color {
        ("\x1b[32m", "\x1b[0m")
    } else {
        ("[[", "]]")
    };
    let trained = s.labels.iter().filter(|&&l| l != IGNORE_INDEX).count();
    println!(
        "{} sample {}: {} tokens, {} trained, {} sequence(s) starting at {:?}",
        a.split.dir_name(),
        a.index,
        s.input_ids.len(),
        trained,
        s.seq_starts.len(),
        s.seq_starts
    );
    println!(
        "trained tokens are shown {}",
        if color { "in green" } else { "as [[...]]" }
    );
    let specials = [tok.bos_id(), tok.eos_id(), tok.pad_id()];
    let mut out = String::new();
    let mut k = 0;
    while k < s.input_ids.len() {
        let t = s.labels[k] != IGNORE_INDEX;
        let special = specials.contains(&Some(s.input_ids[k]));
        let mut e = k + 1;
        while e < s.input_ids.len()
            && (s.labels[e] != IGNORE_INDEX) == t
            && !special
            && !specials.contains(&Some(s.input_ids[e]))
            && !s.seq_starts.contains(&e)
        {
            e += 1;
        }
        let text = if special {
            tok.id_to_piece(s.input_ids[k]).unwrap_or_default()
        } else {
            tok.decode(&s.input_ids[k..e])?
        };
        if s.seq_starts.contains(&k) && k > 0 {
            out.push_str("\n---- next packed sequence ----\n");
        }
        if t {
            out.push_str(on);
            out.push_str(&text);
            out.push_str(off);
        } else {
            out.push_str(&text);
        }
        k = e;
    }
    println!("{out}");
    Ok(())
}
