//! The data side of a recipe: resolve `dataset` in `dataset_dir/dataset_info.json`, tokenize with the
//! model's tokenizer and `template` through `ferrotune-data` (cached under `output_dir/.data_cache`, reused
//! when nothing changed), and load the train / validation splits as [`Sample`]s.

use crate::batches::Sample;
use crate::error::TrainError;
use crate::finetune::TrainData;
use ferrotune_core::train_config::{Stage, TrainConfig};
use ferrotune_data::{
    EncodeOptions, MixStrategy, OnBadRecord, Packing, PrepareConfig, Registry, Split, Template,
    TokenizedDataset, ValSize,
};
use ferrotune_tokenizer::Tokenizer;
use std::path::{Path, PathBuf};

/// The tokenizer of a run: `tokenizer_name_or_path`, else the model directory's.
pub fn load_tokenizer(cfg: &TrainConfig) -> Result<Tokenizer, TrainError> {
    let path = tokenizer_path(cfg);
    Tokenizer::from_path(&path)
        .map_err(|e| TrainError::Data(format!("tokenizer {}: {e}", path.display())))
}

fn tokenizer_path(cfg: &TrainConfig) -> PathBuf {
    cfg.tokenizer_name_or_path
        .clone()
        .unwrap_or_else(|| cfg.model_name_or_path.clone())
}

/// Tokenizes (or reuses the cache of) the configured datasets and loads both splits.
pub fn load(cfg: &TrainConfig, tok: &Tokenizer) -> Result<TrainData, TrainError> {
    let data_err = |e: ferrotune_data::DataError| TrainError::Data(e.to_string());
    let info = cfg.dataset_dir.join("dataset_info.json");
    let registry = Registry::load(&info).map_err(data_err)?;
    let sources = registry.resolve(&cfg.dataset.join(",")).map_err(data_err)?;
    let template = Template::load(&cfg.template, None).map_err(data_err)?;
    let stage = match cfg.stage {
        Stage::Pt => ferrotune_data::Stage::Pt,
        Stage::Sft => ferrotune_data::Stage::Sft,
    };
    let packing = match (cfg.packing, cfg.stage) {
        (false, _) => Packing::None,
        (true, Stage::Pt) => Packing::Concat,
        (true, Stage::Sft) => Packing::Pack,
    };
    let pcfg = PrepareConfig {
        sources,
        val_sources: if cfg.eval_dataset.is_empty() {
            Vec::new()
        } else {
            registry
                .resolve(&cfg.eval_dataset.join(","))
                .map_err(data_err)?
        },
        template,
        stage,
        encode: EncodeOptions {
            cutoff_len: cfg.cutoff_len,
            train_on_prompt: false,
            mask_history: false,
        },
        packing,
        val_size: (cfg.val_size > 0.0).then_some(if cfg.val_size < 1.0 {
            ValSize::Fraction(cfg.val_size)
        } else {
            ValSize::Count(cfg.val_size as u64)
        }),
        seed: cfg.seed,
        mix: MixStrategy::default(),
        on_bad_record: OnBadRecord::default(),
        max_samples: cfg.max_samples.map(|n| n as u64),
        num_workers: cfg.num_threads.unwrap_or(0),
        tokenizer_path: Some(tokenizer_file(&tokenizer_path(cfg))),
        overwrite_cache: false,
    };
    let tok_file = tokenizer_file(&tokenizer_path(cfg));
    let fingerprint = ferrotune_data::fingerprint_file(&tok_file).map_err(data_err)?;
    let cache = cfg.output_dir.join(".data_cache");
    let report =
        ferrotune_data::prepare(&pcfg, tok, &fingerprint, &cache, &|_| {}).map_err(data_err)?;
    let train = read_split(&cache, Split::Train)?;
    let val = if report.meta.splits.contains_key(&Split::Validation) {
        read_split(&cache, Split::Validation)?
    } else {
        Vec::new()
    };
    tracing::info!(
        train = train.len(),
        validation = val.len(),
        reused_cache = report.reused,
        "data ready"
    );
    Ok(TrainData {
        train,
        val,
        pad_id: report.meta.pad_id as i64,
        tokenizer_vocab: Some(tok.vocab_size()),
    })
}

/// The file that identifies a tokenizer (for the cache key): `tokenizer.model` or `tokenizer.json` in a
/// directory, or the path itself.
fn tokenizer_file(p: &Path) -> PathBuf {
    if p.is_dir() {
        for name in ["tokenizer.model", "tokenizer.json"] {
            if p.join(name).is_file() {
                return p.join(name);
            }
        }
    }
    p.to_path_buf()
}

fn read_split(cache: &Path, split: Split) -> Result<Vec<Sample>, TrainError> {
    let ds = TokenizedDataset::open(cache, split).map_err(|e| TrainError::Data(e.to_string()))?;
    Ok((0..ds.len())
        .map(|i| {
            let s = ds.get(i);
            Sample {
                input_ids: s.input_ids.iter().map(|&x| x as i64).collect(),
                labels: s.labels.iter().map(|&x| x as i64).collect(),
                seq_starts: if s.seq_starts.len() > 1 {
                    s.seq_starts
                } else {
                    Vec::new()
                },
            }
        })
        .collect())
}
