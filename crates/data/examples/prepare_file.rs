//! The library call behind `ferrotune prepare-data --data-file F --template T --tokenizer TOK --cutoff-len N
//! --workers W --overwrite-cache --out DIR`, as a small binary that builds without libtorch (used by
//! tools/bench/bench-data.sh when FERROTUNE_BIN is not set to a `ferrotune` binary).
//!
//! usage: prepare_file DATA TEMPLATE TOKENIZER CUTOFF WORKERS OUT

use ferrotune_data::*;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() != 6 {
        return Err("usage: prepare_file DATA TEMPLATE TOKENIZER CUTOFF WORKERS OUT".into());
    }
    let tok_path = PathBuf::from(&a[2]);
    let tok = ferrotune_tokenizer::Tokenizer::from_path(&tok_path)?;
    let cfg = PrepareConfig {
        sources: vec![source_from_file(&PathBuf::from(&a[0]))?],
        val_sources: vec![],
        template: Template::load(&a[1], None)?,
        stage: Stage::Sft,
        encode: EncodeOptions {
            cutoff_len: a[3].parse()?,
            train_on_prompt: false,
            mask_history: false,
        },
        packing: Packing::None,
        val_size: None,
        seed: 42,
        mix: MixStrategy::Concat,
        on_bad_record: OnBadRecord::Error,
        max_samples: None,
        num_workers: a[4].parse()?,
        tokenizer_path: Some(tok_path.clone()),
        overwrite_cache: true,
    };
    let report = prepare(
        &cfg,
        &tok,
        &fingerprint_file(&tok_path)?,
        &PathBuf::from(&a[5]),
        &|_| {},
    )?;
    let v = serde_json::json!({"splits": report.meta.splits, "stats": report.meta.stats});
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}
