//! The preparation pipeline: stream records from the data files (several datasets mixed), convert and
//! tokenize them in parallel chunks on a rayon pool, write the samples to a cache directory, split off a
//! validation set, pack, and record `meta.json`. The cache is keyed by a hash of everything that shapes its
//! bytes (file contents, tokenizer, template, cutoff, packing, split, stage, options): an existing cache with
//! the same key is reused unless `overwrite_cache`. The output appears atomically (temp dir + rename).

use crate::cache::{Split, SplitWriter, TokenizedDataset, CACHE_FORMAT_VERSION};
use crate::encoder::TextEncoder;
use crate::error::{DataError, Result};
use crate::format::{convert, infer_attr, Example, Stage};
use crate::options::{MixStrategy, OnBadRecord, Packing, ValSize};
use crate::packing::greedy_knapsack;
use crate::reader::{FileKind, RawRecord, RecordReader};
use crate::registry::{DatasetAttr, DatasetSource};
use crate::rng::SplitMix64;
use crate::stats::PrepareStats;
use crate::template::{ResolvedTemplate, Template};
use crate::tokenize::{encode_pretrain, EncodeOptions, Encoded, IGNORE_INDEX};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Records converted and tokenized per parallel chunk.
const CHUNK: usize = 4096;

/// Everything that decides what a prepared dataset contains.
#[derive(Debug, Clone, Serialize)]
pub struct PrepareConfig {
    pub sources: Vec<DatasetSource>,
    /// Validation data from its own files (instead of `val_size`).
    pub val_sources: Vec<DatasetSource>,
    pub template: Template,
    pub stage: Stage,
    pub encode: EncodeOptions,
    pub packing: Packing,
    pub val_size: Option<ValSize>,
    pub seed: u64,
    pub mix: MixStrategy,
    pub on_bad_record: OnBadRecord,
    /// At most this many records per dataset.
    pub max_samples: Option<u64>,
    #[serde(skip)]
    pub num_workers: usize,
    /// Where the tokenizer was loaded from (recorded in `meta.json` for `inspect-data`; its content is
    /// keyed through the fingerprint given to [`prepare`]).
    #[serde(skip)]
    pub tokenizer_path: Option<PathBuf>,
    #[serde(skip)]
    pub overwrite_cache: bool,
}

/// Per-split counts in `meta.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitMeta {
    pub samples: u64,
    pub tokens: u64,
    pub packed: bool,
}

/// `meta.json` of a cache directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheMeta {
    pub format_version: u32,
    pub key: String,
    pub ferrotune_version: String,
    pub datasets: Vec<String>,
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
    pub template: String,
    pub stage: Stage,
    pub cutoff_len: usize,
    pub packing: Packing,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    /// The id batches pad with (the tokenizer's PAD, else EOS, else 0, as LLaMA-Factory does).
    pub pad_id: u32,
    pub splits: BTreeMap<Split, SplitMeta>,
    pub stats: PrepareStats,
    /// The resolved configuration, for people reading the cache.
    pub config: serde_json::Value,
}

impl CacheMeta {
    pub fn load(cache_dir: &Path) -> Result<CacheMeta> {
        let p = cache_dir.join("meta.json");
        let text = std::fs::read_to_string(&p).map_err(|e| DataError::io(&p, e))?;
        serde_json::from_str(&text).map_err(|e| DataError::cache(&p, e.to_string()))
    }
}

/// The result of [`prepare`].
#[derive(Debug, Clone)]
pub struct PrepareReport {
    pub meta: CacheMeta,
    /// True when an existing cache with the same key was reused.
    pub reused: bool,
}

/// A hex xxh3-128 of a file's bytes, read in a streaming way.
pub fn fingerprint_file(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| DataError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:032x}", h.digest128()))
}

/// The cache key: a hash of the configuration, of every data file's content and of the tokenizer.
pub fn cache_key(cfg: &PrepareConfig, tokenizer_fingerprint: &str) -> Result<String> {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&CACHE_FORMAT_VERSION.to_le_bytes());
    h.update(
        serde_json::to_string(cfg)
            .expect("config serializes")
            .as_bytes(),
    );
    h.update(tokenizer_fingerprint.as_bytes());
    for s in cfg.sources.iter().chain(&cfg.val_sources) {
        for f in &s.files {
            h.update(fingerprint_file(f)?.as_bytes());
        }
    }
    Ok(format!("{:032x}", h.digest128()))
}

/// A dataset made of one bare file, its format guessed from the first record (see [`infer_attr`]).
pub fn source_from_file(path: &Path) -> Result<DatasetSource> {
    let mut reader = RecordReader::open(path)?;
    let attr = match reader.kind() {
        FileKind::Text => {
            let mut a = DatasetAttr::default();
            a.columns.prompt = "text".into();
            a
        }
        _ => match reader.next() {
            Some(r) => infer_attr(&r?.parse(path)?),
            None => DatasetAttr::default(),
        },
    };
    Ok(DatasetSource {
        name: path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        files: vec![path.to_path_buf()],
        attr,
    })
}

/// Streams the records of several datasets, concatenated or interleaved.
struct Mixed {
    streams: Vec<Stream>,
    rng: SplitMix64,
    mix: MixStrategy,
    max: Option<u64>,
}

struct Stream {
    files: std::vec::IntoIter<PathBuf>,
    cur: Option<(Arc<Path>, RecordReader)>,
    taken: u64,
    done: bool,
}

type Item = (usize, Arc<Path>, RawRecord);

impl Mixed {
    fn new(sources: &[DatasetSource], mix: MixStrategy, seed: u64, max: Option<u64>) -> Mixed {
        Mixed {
            streams: sources
                .iter()
                .map(|s| Stream {
                    files: s.files.clone().into_iter(),
                    cur: None,
                    taken: 0,
                    done: false,
                })
                .collect(),
            rng: SplitMix64::derive(seed, 0x313C),
            mix,
            max,
        }
    }

    fn next_from(&mut self, k: usize) -> Result<Option<Item>> {
        let s = &mut self.streams[k];
        loop {
            if s.done || self.max.is_some_and(|m| s.taken >= m) {
                s.done = true;
                return Ok(None);
            }
            if s.cur.is_none() {
                match s.files.next() {
                    Some(f) => {
                        let r = RecordReader::open(&f)?;
                        s.cur = Some((Arc::from(f.as_path()), r));
                    }
                    None => {
                        s.done = true;
                        return Ok(None);
                    }
                }
            }
            let (path, reader) = s.cur.as_mut().expect("opened above");
            match reader.next() {
                Some(Ok(rec)) => {
                    s.taken += 1;
                    return Ok(Some((k, path.clone(), rec)));
                }
                Some(Err(e)) => return Err(e),
                None => s.cur = None,
            }
        }
    }

    fn next_item(&mut self) -> Result<Option<Item>> {
        loop {
            let live: Vec<usize> = (0..self.streams.len())
                .filter(|&k| !self.streams[k].done)
                .collect();
            if live.is_empty() {
                return Ok(None);
            }
            let k = match self.mix {
                MixStrategy::Concat => live[0],
                MixStrategy::Interleave => live[self.rng.below(live.len() as u64) as usize],
            };
            if let Some(item) = self.next_from(k)? {
                return Ok(Some(item));
            }
        }
    }
}

struct Job<'a> {
    cfg: &'a PrepareConfig,
    tpl: &'a ResolvedTemplate,
    enc: &'a dyn TextEncoder,
}

impl Job<'_> {
    fn process(&self, attr: &DatasetAttr, path: &Path, rec: &RawRecord) -> Result<Encoded> {
        let v = rec.parse(path)?;
        let ex = convert(&v, attr, self.cfg.stage, path, rec.index)?;
        match self.cfg.stage {
            Stage::Pt => {
                let m = ex
                    .messages
                    .first()
                    .ok_or_else(|| DataError::record(path, rec.index, None, "no text"))?;
                let text = match &m.input {
                    Some(i) => format!("{}\n{}", m.content, i),
                    None => m.content.clone(),
                };
                let cutoff =
                    (self.cfg.packing != Packing::Concat).then_some(self.cfg.encode.cutoff_len);
                encode_pretrain(self.enc, &text, cutoff)
            }
            Stage::Sft => {
                if let Some(chosen) = &ex.chosen {
                    // A preference record used for SFT trains on its chosen response.
                    let mut msgs = ex.messages.clone();
                    msgs.push(chosen.clone());
                    let e = Example {
                        messages: msgs,
                        ..ex.clone()
                    };
                    self.tpl.encode_supervised(self.enc, &e, &self.cfg.encode)
                } else {
                    self.tpl.encode_supervised(self.enc, &ex, &self.cfg.encode)
                }
            }
        }
    }

    /// Streams `sources` into an unpacked split at `dir`, updating `stats`.
    fn stream(
        &self,
        sources: &[DatasetSource],
        dir: &Path,
        stats: &mut PrepareStats,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<()> {
        let mut w = SplitWriter::create(dir, false)?;
        let mut mixed = Mixed::new(sources, self.cfg.mix, self.cfg.seed, self.cfg.max_samples);
        let mut chunk: Vec<Item> = Vec::with_capacity(CHUNK);
        loop {
            chunk.clear();
            while chunk.len() < CHUNK {
                match mixed.next_item()? {
                    Some(it) => chunk.push(it),
                    None => break,
                }
            }
            if chunk.is_empty() {
                break;
            }
            let results: Vec<Result<Encoded>> = chunk
                .par_iter()
                .map(|(k, path, rec)| self.process(&sources[*k].attr, path, rec))
                .collect();
            for r in results {
                stats.records += 1;
                match r {
                    Ok(e) => {
                        stats.samples += 1;
                        stats.tokens += e.input_ids.len() as u64;
                        stats.trained_tokens +=
                            e.labels.iter().filter(|&&l| l != IGNORE_INDEX).count() as u64;
                        stats.truncated += u64::from(e.truncated);
                        w.push(&e.input_ids, &e.labels)?;
                    }
                    Err(e) if e.is_bad_record() && self.cfg.on_bad_record == OnBadRecord::Skip => {
                        tracing::debug!("skipping: {e}");
                        stats.skip(e.to_string());
                    }
                    Err(e) => return Err(e),
                }
            }
            progress(stats.records);
        }
        w.finish()?;
        Ok(())
    }
}

/// Writes the samples `indices` of `all` as a split in `dir`, packed as asked.
fn write_split(
    all: &TokenizedDataset,
    indices: &[usize],
    packing: Packing,
    cutoff: usize,
    dir: &Path,
) -> Result<SplitMeta> {
    let packed = packing == Packing::Pack;
    let mut w = SplitWriter::create(dir, packed)?;
    match packing {
        Packing::None => {
            for &i in indices {
                w.push(&all.try_input_ids(i)?, &all.try_labels(i)?)?;
            }
        }
        Packing::Pack => {
            let lengths: Vec<u32> = indices.iter().map(|&i| all.sample_len(i) as u32).collect();
            for row in greedy_knapsack(&lengths, cutoff as u32) {
                let parts: Vec<(Vec<u32>, Vec<i32>)> = row
                    .iter()
                    .map(|&r| {
                        let i = indices[r];
                        let mut labels = all.try_labels(i)?;
                        // The first token of a sequence is never predicted from its own context: masking it
                        // keeps the previous sequence's last token from being trained on it.
                        if let Some(l) = labels.first_mut() {
                            *l = IGNORE_INDEX;
                        }
                        Ok((all.try_input_ids(i)?, labels))
                    })
                    .collect::<Result<_>>()?;
                let refs: Vec<(&[u32], &[i32])> = parts
                    .iter()
                    .map(|(a, b)| (a.as_slice(), b.as_slice()))
                    .collect();
                w.push_packed(&refs)?;
            }
        }
        Packing::Concat => {
            let (mut ids, mut labels) = (Vec::new(), Vec::new());
            for &i in indices {
                ids.extend(all.try_input_ids(i)?);
                labels.extend(all.try_labels(i)?);
                while ids.len() >= cutoff {
                    w.push(&ids[..cutoff], &labels[..cutoff])?;
                    ids.drain(..cutoff);
                    labels.drain(..cutoff);
                }
            }
        }
    }
    let (samples, tokens) = w.finish()?;
    Ok(SplitMeta {
        samples,
        tokens,
        packed,
    })
}

/// Seeded split of `0..n` into (train, validation), both in original order.
pub fn split_indices(n: usize, val: ValSize, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let k = val.count(n);
    let mut perm: Vec<usize> = (0..n).collect();
    SplitMix64::derive(seed, 0x5A17).shuffle(&mut perm);
    let mut v = perm[..k].to_vec();
    let mut t = perm[k..].to_vec();
    v.sort_unstable();
    t.sort_unstable();
    (t, v)
}

/// Prepares (or reuses) the cache at `out`. `tokenizer_fingerprint` identifies the tokenizer (e.g.
/// [`fingerprint_file`] of its model file); `progress` is called with the number of records read so far.
pub fn prepare(
    cfg: &PrepareConfig,
    enc: &dyn TextEncoder,
    tokenizer_fingerprint: &str,
    out: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<PrepareReport> {
    if cfg.encode.cutoff_len == 0 {
        return Err(DataError::Config("cutoff_len must be positive".into()));
    }
    let key = cache_key(cfg, tokenizer_fingerprint)?;
    if out.join("meta.json").is_file() && !cfg.overwrite_cache {
        match CacheMeta::load(out) {
            Ok(meta) if meta.key == key => {
                tracing::info!(
                    "reusing the tokenized cache at {} (key {key})",
                    out.display()
                );
                return Ok(PrepareReport { meta, reused: true });
            }
            Ok(_) => tracing::info!(
                "inputs changed since {} was written: rebuilding it",
                out.display()
            ),
            Err(e) => tracing::warn!("unreadable cache ({e}): rebuilding it"),
        }
    }
    let tpl = cfg.template.resolve(enc)?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "cache".into());
    let tmp = out.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| DataError::io(&tmp, e))?;
    }
    let result = (|| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.num_workers.max(1))
            .build()
            .map_err(|e| DataError::Config(format!("starting {} workers: {e}", cfg.num_workers)))?;
        let job = Job {
            cfg,
            tpl: &tpl,
            enc,
        };
        let mut stats = PrepareStats::default();
        pool.install(|| job.stream(&cfg.sources, &tmp.join("_all"), &mut stats, progress))?;
        let all = TokenizedDataset::open_dir_streaming(&tmp.join("_all"))?;
        if all.is_empty() {
            return Err(DataError::Config(
                "no usable records: the dataset is empty".into(),
            ));
        }
        let mut lengths = all.lengths();
        stats.set_lengths(&mut lengths);
        let n = all.len();
        let (train, val): (Vec<usize>, Option<(TokenizedDataset, Vec<usize>)>) =
            if !cfg.val_sources.is_empty() {
                let mut vstats = PrepareStats::default();
                pool.install(|| {
                    job.stream(&cfg.val_sources, &tmp.join("_val"), &mut vstats, progress)
                })?;
                stats.records += vstats.records;
                stats.samples += vstats.samples;
                stats.tokens += vstats.tokens;
                stats.trained_tokens += vstats.trained_tokens;
                stats.truncated += vstats.truncated;
                stats.skipped += vstats.skipped;
                stats.skip_reasons.extend(vstats.skip_reasons);
                stats.skip_reasons.truncate(crate::stats::MAX_REASONS);
                let v = TokenizedDataset::open_dir_streaming(&tmp.join("_val"))?;
                let vi = (0..v.len()).collect();
                ((0..n).collect(), Some((v, vi)))
            } else if let Some(vs) = cfg.val_size {
                let (t, v) = split_indices(n, vs, cfg.seed);
                if t.is_empty() {
                    return Err(DataError::Config(format!(
                        "val_size {vs:?} leaves no training samples out of {n}"
                    )));
                }
                (
                    t,
                    Some((TokenizedDataset::open_dir_streaming(&tmp.join("_all"))?, v)),
                )
            } else {
                ((0..n).collect(), None)
            };
        let cutoff = cfg.encode.cutoff_len;
        let mut splits = BTreeMap::new();
        if cfg.packing == Packing::None && val.is_none() {
            // Nothing to select or pack: the streamed samples are the training split as they are.
            let meta = SplitMeta {
                samples: n as u64,
                tokens: all.n_tokens(),
                packed: false,
            };
            drop(all);
            let (from, to) = (tmp.join("_all"), tmp.join("train"));
            std::fs::rename(&from, &to).map_err(|e| DataError::io(&to, e))?;
            splits.insert(Split::Train, meta);
        } else {
            let meta = write_split(&all, &train, cfg.packing, cutoff, &tmp.join("train"))?;
            drop(all);
            splits.insert(Split::Train, meta);
        }
        if let Some((vds, vi)) = &val {
            splits.insert(
                Split::Validation,
                write_split(vds, vi, cfg.packing, cutoff, &tmp.join("validation"))?,
            );
        }
        drop(val);
        for d in ["_all", "_val"] {
            let p = tmp.join(d);
            if p.exists() {
                std::fs::remove_dir_all(&p).map_err(|e| DataError::io(&p, e))?;
            }
        }
        let meta = CacheMeta {
            format_version: CACHE_FORMAT_VERSION,
            key: key.clone(),
            ferrotune_version: ferrotune_core::VERSION.to_string(),
            datasets: cfg.sources.iter().map(|s| s.name.clone()).collect(),
            tokenizer: cfg
                .tokenizer_path
                .as_ref()
                .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())),
            template: cfg.template.name.clone(),
            stage: cfg.stage,
            cutoff_len: cutoff,
            packing: cfg.packing,
            bos_id: tpl.bos,
            eos_id: tpl.eos,
            pad_id: enc.pad_id().or(tpl.eos).unwrap_or(0),
            splits,
            stats,
            config: serde_json::to_value(cfg).expect("config serializes"),
        };
        let json = serde_json::to_vec_pretty(&meta).expect("meta serializes");
        ferrotune_core::write_atomic(tmp.join("meta.json"), &json)?;
        Ok(meta)
    })();
    match result {
        Ok(meta) => {
            ferrotune_core::fsutil::commit_dir(&tmp, out)?;
            Ok(PrepareReport {
                meta,
                reused: false,
            })
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}
