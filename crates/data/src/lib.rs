//! `ferrotune-data`: from dataset files to batches of token ids, without libtorch.
//!
//! Reads alpaca / sharegpt / OpenAI-messages / preference / plain-text datasets (streamed, JSON or JSONL) and
//! LLaMA-Factory `dataset_info.json` registries, renders chat templates, tokenizes with label masks
//! (-100 on everything that is not trained), packs samples, caches the result on disk and serves batches.
//!
//! # Pipeline
//!
//! ```text
//! dataset_info.json ──Registry::resolve──▶ DatasetSource (files + columns/tags)
//! files ──RecordReader (streaming)──▶ RawRecord ──format::convert──▶ Example (turns, system, tools)
//! Example ──ResolvedTemplate::encode_supervised / encode_pretrain──▶ Encoded (input_ids, labels)
//! prepare(): all of the above on a rayon pool → cache dir (train/ + validation/, packed or not, meta.json)
//! TokenizedDataset (mmap) ──DistributedSampler + BatchIter──▶ Batch (Vec<i64> rows, right-padded)
//! ```
//!
//! # For the trainer
//!
//! ```no_run
//! use ferrotune_data::{BatchIter, CacheMeta, DistributedSampler, SamplerConfig, SamplerState, Split,
//!                      TokenizedDataset};
//! # fn train(cache_dir: &std::path::Path, rank: usize, world_size: usize, seed: u64)
//! #     -> ferrotune_data::Result<()> {
//! let meta = CacheMeta::load(cache_dir)?;                    // pad_id, cutoff_len, packing, stats
//! let ds = TokenizedDataset::open(cache_dir, Split::Train)?; // mmap: len(), get(i) -> Sample
//! let sampler = DistributedSampler::new(SamplerConfig { batch_size: 8, rank, world_size, seed,
//!     shuffle: true, drop_last: false, group_by_length: false }, ds.lengths());
//! let resume = SamplerState { epoch: 0, batches_done: 0 };    // or the one saved in the checkpoint
//! let mut it = BatchIter::new(&ds, &sampler, resume, meta.pad_id);
//! while let Some(batch) = it.next() {
//!     // batch.input_ids / labels / attention_mask / position_ids: Vec<i64> of batch_size * seq_len
//!     // batch.seq_ids: packed-sequence id per token (-1 on padding) for a block-diagonal causal mask
//!     // batch.n_trained_tokens: number of loss terms (for token-weighted averaging across ranks)
//!     let _to_save: SamplerState = it.state();               // serde; put it in the checkpoint
//! #   let _ = batch;
//! }
//! # Ok(()) }
//! ```
//!
//! * [`Sample`]: `input_ids: Vec<u32>`, `labels: Vec<i32>`, `position_ids` (restart at 0 per packed
//!   sequence), `seq_starts` (token offsets where packed sequences begin; `[0]` unpacked).
//! * Labels are *unshifted* (HF convention: the model predicts `labels[t+1]` from position t). In packed rows
//!   the first token of every sequence has label -100, so the loss of a packed row equals the sum of the
//!   losses of its sequences computed alone.
//! * Templates: [`Template::load`] (`alpaca`, `llama2`, `llama3`, `chatml`, `vicuna`, `default`, `yuan`,
//!   `empty`, or a user TOML file), [`Template::resolve`] against a [`TextEncoder`]
//!   (implemented for `ferrotune_tokenizer::Tokenizer`).
//! * Errors ([`DataError`]) name the file and line/column or record index/field.

pub mod batch;
pub mod cache;
pub mod encoder;
pub mod error;
pub mod format;
pub mod options;
pub mod packing;
pub mod prepare;
pub mod reader;
pub mod registry;
pub mod rng;
pub mod sampler;
pub mod stats;
pub mod template;
pub mod tokenize;
pub mod tools;

pub use batch::{collate, Batch, BatchIter};
pub use cache::{Sample, Split, SplitWriter, TokenizedDataset};
pub use encoder::{ByteEncoder, TextEncoder};
pub use error::{DataError, Result};
pub use format::{convert, Example, Message, Role, Stage};
pub use options::{MixStrategy, OnBadRecord, Packing, ValSize};
pub use prepare::{
    cache_key, fingerprint_file, prepare, source_from_file, CacheMeta, PrepareConfig,
    PrepareReport, SplitMeta,
};
pub use reader::{FileKind, RawRecord, RecordReader};
pub use registry::{DatasetAttr, DatasetSource, Registry};
pub use sampler::{DistributedSampler, SamplerConfig, SamplerState};
pub use stats::PrepareStats;
pub use template::{ResolvedTemplate, Template};
pub use tokenize::{encode_pretrain, infer_seqlen, EncodeOptions, Encoded, IGNORE_INDEX};
