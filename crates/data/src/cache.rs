//! The on-disk tokenized cache: one directory per prepared dataset holding `meta.json` and, per split
//! (`train/`, `validation/`), four little-endian arrays:
//!
//! | file | type | content |
//! |---|---|---|
//! | `ids.bin` | u32 | all token ids, samples back to back |
//! | `labels.bin` | i32 | the labels, same layout (-100 = not trained) |
//! | `offsets.bin` | u64 | n+1 token offsets: sample i is `[offsets[i], offsets[i+1])` |
//! | `segments.bin` | u64 | packed splits only: token offsets where each packed sequence starts, + the end |
//!
//! [`TokenizedDataset`] maps them with memmap2, so opening costs nothing and memory stays flat.

use crate::error::{DataError, Result};
use crate::packing::positions;
use memmap2::Mmap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Version of the cache layout; part of the cache key.
pub const CACHE_FORMAT_VERSION: u32 = 1;

/// Which split of a prepared dataset.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Validation,
}

impl Split {
    pub fn dir_name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
        }
    }
}

impl std::str::FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "train" => Ok(Split::Train),
            "validation" | "val" | "eval" => Ok(Split::Validation),
            o => Err(format!("unknown split `{o}` (train or validation)")),
        }
    }
}

/// Streams samples of one split into its directory.
pub struct SplitWriter {
    dir: PathBuf,
    ids: BufWriter<File>,
    labels: BufWriter<File>,
    offsets: Vec<u64>,
    segments: Option<Vec<u64>>,
}

impl std::fmt::Debug for SplitWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SplitWriter")
            .field("dir", &self.dir)
            .finish()
    }
}

fn create(path: &Path) -> Result<BufWriter<File>> {
    Ok(BufWriter::with_capacity(
        1 << 20,
        File::create(path).map_err(|e| DataError::io(path, e))?,
    ))
}

impl SplitWriter {
    /// Starts a split in `dir` (created); `packed` adds segment boundaries.
    pub fn create(dir: &Path, packed: bool) -> Result<SplitWriter> {
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
        Ok(SplitWriter {
            dir: dir.to_path_buf(),
            ids: create(&dir.join("ids.bin"))?,
            labels: create(&dir.join("labels.bin"))?,
            offsets: vec![0],
            segments: packed.then(Vec::new),
        })
    }

    fn tokens(&self) -> u64 {
        *self.offsets.last().expect("offsets start with 0")
    }

    fn write(&mut self, ids: &[u32], labels: &[i32]) -> Result<()> {
        debug_assert_eq!(ids.len(), labels.len());
        let io = |e| DataError::io(&self.dir, e);
        let mut buf = Vec::with_capacity(ids.len() * 4);
        for &t in ids {
            buf.extend_from_slice(&t.to_le_bytes());
        }
        self.ids.write_all(&buf).map_err(io)?;
        buf.clear();
        for &l in labels {
            buf.extend_from_slice(&l.to_le_bytes());
        }
        self.labels.write_all(&buf).map_err(io)
    }

    /// Appends one sample (one sequence).
    pub fn push(&mut self, ids: &[u32], labels: &[i32]) -> Result<()> {
        let start = self.tokens();
        self.write(ids, labels)?;
        if let Some(s) = &mut self.segments {
            s.push(start);
        }
        self.offsets.push(start + ids.len() as u64);
        Ok(())
    }

    /// Appends one packed row made of several sequences.
    pub fn push_packed(&mut self, parts: &[(&[u32], &[i32])]) -> Result<()> {
        let mut at = self.tokens();
        for (ids, labels) in parts {
            self.write(ids, labels)?;
            if let Some(s) = &mut self.segments {
                s.push(at);
            }
            at += ids.len() as u64;
        }
        self.offsets.push(at);
        Ok(())
    }

    /// Flushes everything; returns (samples, tokens).
    pub fn finish(mut self) -> Result<(u64, u64)> {
        let dir = self.dir.clone();
        let io = |e| DataError::io(&dir, e);
        self.ids.flush().map_err(io)?;
        self.labels.flush().map_err(io)?;
        self.ids.get_ref().sync_all().map_err(io)?;
        self.labels.get_ref().sync_all().map_err(io)?;
        let tokens = self.tokens();
        write_u64s(&dir.join("offsets.bin"), &self.offsets)?;
        if let Some(mut s) = self.segments.take() {
            s.push(tokens);
            write_u64s(&dir.join("segments.bin"), &s)?;
        }
        Ok((self.offsets.len() as u64 - 1, tokens))
    }
}

fn write_u64s(path: &Path, v: &[u64]) -> Result<()> {
    let mut w = create(path)?;
    for x in v {
        w.write_all(&x.to_le_bytes())
            .map_err(|e| DataError::io(path, e))?;
    }
    w.flush().map_err(|e| DataError::io(path, e))?;
    w.get_ref().sync_all().map_err(|e| DataError::io(path, e))
}

/// A read-only memory map (an empty file maps to nothing).
struct Map(Option<Mmap>);

impl Map {
    fn open(path: &Path, elem: usize) -> Result<Map> {
        let f = File::open(path).map_err(|e| DataError::io(path, e))?;
        let len = f.metadata().map_err(|e| DataError::io(path, e))?.len();
        if len % elem as u64 != 0 {
            return Err(DataError::cache(
                path,
                format!("size {len} is not a multiple of {elem}"),
            ));
        }
        if len == 0 {
            return Ok(Map(None));
        }
        // SAFETY: the cache files are written once (in a temp dir renamed into place) and never modified
        // afterwards; a concurrent truncation by another process is outside our contract.
        let m = unsafe { Mmap::map(&f) }.map_err(|e| DataError::io(path, e))?;
        Ok(Map(Some(m)))
    }
    fn bytes(&self) -> &[u8] {
        self.0.as_deref().unwrap_or(&[])
    }
    fn u64_at(&self, i: usize) -> u64 {
        u64::from_le_bytes(self.bytes()[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
    }
    fn len_of(&self, elem: usize) -> usize {
        self.bytes().len() / elem
    }
}

/// Token storage of a split: memory-mapped (serving batches), or read with positioned reads (one pass
/// over a large split while preparing, so the pages read never count towards the process's RSS).
enum Store {
    Mapped(Map),
    File { file: File, path: PathBuf, len: u64 },
}

impl Store {
    fn open(path: &Path, streaming: bool) -> Result<Store> {
        if !streaming {
            return Ok(Store::Mapped(Map::open(path, 4)?));
        }
        let file = File::open(path).map_err(|e| DataError::io(path, e))?;
        let len = file.metadata().map_err(|e| DataError::io(path, e))?.len();
        Ok(Store::File {
            file,
            path: path.to_path_buf(),
            len,
        })
    }

    fn len_of4(&self) -> usize {
        match self {
            Store::Mapped(m) => m.len_of(4),
            Store::File { len, .. } => (*len / 4) as usize,
        }
    }

    /// The 4-byte words `[a, b)` (positioned reads cannot fail on a mapped store).
    fn words(&self, a: usize, b: usize) -> Result<Vec<[u8; 4]>> {
        let words = |bytes: &[u8]| {
            bytes
                .chunks_exact(4)
                .map(|c| c.try_into().expect("4 bytes"))
                .collect()
        };
        match self {
            Store::Mapped(m) => Ok(words(&m.bytes()[a * 4..b * 4])),
            Store::File { file, path, .. } => {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0u8; (b - a) * 4];
                file.read_exact_at(&mut buf, a as u64 * 4)
                    .map_err(|e| DataError::io(path, e))?;
                Ok(words(&buf))
            }
        }
    }
}

/// One sample as stored, with position ids derived from its sequence boundaries.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub input_ids: Vec<u32>,
    pub labels: Vec<i32>,
    /// 0.. within each packed sequence (restarting at every boundary).
    pub position_ids: Vec<u32>,
    /// Token offsets (within the sample) where each sequence starts; `[0]` when not packed.
    pub seq_starts: Vec<usize>,
}

/// One split of a prepared dataset, memory-mapped.
pub struct TokenizedDataset {
    dir: PathBuf,
    ids: Store,
    labels: Store,
    offsets: Map,
    segments: Option<Map>,
    n: usize,
}

impl std::fmt::Debug for TokenizedDataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenizedDataset")
            .field("dir", &self.dir)
            .field("len", &self.n)
            .finish()
    }
}

impl TokenizedDataset {
    /// Opens `cache_dir/<split>/`.
    pub fn open(cache_dir: &Path, split: Split) -> Result<TokenizedDataset> {
        TokenizedDataset::open_dir(&cache_dir.join(split.dir_name()))
    }

    /// Opens a split directory written by [`SplitWriter`].
    pub fn open_dir(dir: &Path) -> Result<TokenizedDataset> {
        TokenizedDataset::open_with(dir, false)
    }

    /// Opens a split for one sequential pass with positioned reads instead of a memory map (used while
    /// preparing, so memory stays flat however large the split).
    pub(crate) fn open_dir_streaming(dir: &Path) -> Result<TokenizedDataset> {
        TokenizedDataset::open_with(dir, true)
    }

    fn open_with(dir: &Path, streaming: bool) -> Result<TokenizedDataset> {
        if !dir.is_dir() {
            return Err(DataError::cache(dir, "no such split in this cache"));
        }
        let ids = Store::open(&dir.join("ids.bin"), streaming)?;
        let labels = Store::open(&dir.join("labels.bin"), streaming)?;
        let offsets = Map::open(&dir.join("offsets.bin"), 8)?;
        let seg_path = dir.join("segments.bin");
        let segments = seg_path
            .exists()
            .then(|| Map::open(&seg_path, 8))
            .transpose()?;
        let n = offsets.len_of(8).saturating_sub(1);
        let ds = TokenizedDataset {
            dir: dir.to_path_buf(),
            n,
            ids,
            labels,
            offsets,
            segments,
        };
        let total = if n == 0 { 0 } else { ds.offsets.u64_at(n) };
        if ds.ids.len_of4() as u64 != total || ds.labels.len_of4() as u64 != total {
            return Err(DataError::cache(
                dir,
                "ids/labels/offsets disagree (truncated cache?)",
            ));
        }
        Ok(ds)
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Total tokens in this split.
    pub fn n_tokens(&self) -> u64 {
        if self.n == 0 {
            0
        } else {
            self.offsets.u64_at(self.n)
        }
    }

    pub fn is_packed(&self) -> bool {
        self.segments.is_some()
    }

    fn range(&self, i: usize) -> (usize, usize) {
        assert!(i < self.n, "sample {i} out of range (len {})", self.n);
        (
            self.offsets.u64_at(i) as usize,
            self.offsets.u64_at(i + 1) as usize,
        )
    }

    /// Length in tokens of sample `i`.
    pub fn sample_len(&self, i: usize) -> usize {
        let (a, b) = self.range(i);
        b - a
    }

    /// All sample lengths (for length grouping and packing).
    pub fn lengths(&self) -> Vec<u32> {
        (0..self.n).map(|i| self.sample_len(i) as u32).collect()
    }

    /// Token ids of sample `i`.
    pub fn input_ids(&self, i: usize) -> Vec<u32> {
        self.try_input_ids(i)
            .expect("reads from a memory map cannot fail")
    }

    pub(crate) fn try_input_ids(&self, i: usize) -> Result<Vec<u32>> {
        let (a, b) = self.range(i);
        Ok(self
            .ids
            .words(a, b)?
            .into_iter()
            .map(u32::from_le_bytes)
            .collect())
    }

    pub(crate) fn try_labels(&self, i: usize) -> Result<Vec<i32>> {
        let (a, b) = self.range(i);
        Ok(self
            .labels
            .words(a, b)?
            .into_iter()
            .map(i32::from_le_bytes)
            .collect())
    }

    /// Labels of sample `i`.
    pub fn labels(&self, i: usize) -> Vec<i32> {
        self.try_labels(i)
            .expect("reads from a memory map cannot fail")
    }

    /// Where each sequence of sample `i` starts, relative to the sample.
    pub fn seq_starts(&self, i: usize) -> Vec<usize> {
        let (a, b) = self.range(i);
        let Some(seg) = &self.segments else {
            return vec![0];
        };
        // Segment starts are sorted: binary-search the first one at or after `a`.
        let n = seg.len_of(8);
        let (mut lo, mut hi) = (0usize, n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if (seg.u64_at(mid) as usize) < a {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let mut out = Vec::new();
        let mut k = lo;
        while k < n && (seg.u64_at(k) as usize) < b {
            out.push(seg.u64_at(k) as usize - a);
            k += 1;
        }
        if out.first() != Some(&0) {
            out.insert(0, 0);
        }
        out
    }

    /// Sample `i` with its position ids and sequence boundaries.
    pub fn get(&self, i: usize) -> Sample {
        let input_ids = self.input_ids(i);
        let seq_starts = self.seq_starts(i);
        Sample {
            position_ids: positions(input_ids.len(), &seq_starts),
            labels: self.labels(i),
            input_ids,
            seq_starts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_plain_and_packed() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SplitWriter::create(&dir.path().join("train"), false).unwrap();
        w.push(&[1, 2, 3], &[-100, 2, 3]).unwrap();
        w.push(&[], &[]).unwrap();
        w.push(&[7], &[7]).unwrap();
        assert_eq!(w.finish().unwrap(), (3, 4));
        let ds = TokenizedDataset::open(dir.path(), Split::Train).unwrap();
        assert_eq!(ds.len(), 3);
        assert_eq!(ds.get(0).labels, vec![-100, 2, 3]);
        assert_eq!(ds.get(1).input_ids, Vec::<u32>::new());
        assert_eq!(ds.get(2).position_ids, vec![0]);
        let mut w = SplitWriter::create(&dir.path().join("validation"), true).unwrap();
        w.push_packed(&[(&[1, 2], &[1, 2]), (&[3, 4, 5], &[3, 4, 5])])
            .unwrap();
        w.push_packed(&[(&[9], &[9])]).unwrap();
        w.finish().unwrap();
        let ds = TokenizedDataset::open(dir.path(), Split::Validation).unwrap();
        let s = ds.get(0);
        assert_eq!(s.seq_starts, vec![0, 2]);
        assert_eq!(s.position_ids, vec![0, 1, 0, 1, 2]);
        assert_eq!(ds.get(1).seq_starts, vec![0]);
        assert!(TokenizedDataset::open(&dir.path().join("nope"), Split::Train).is_err());
    }
}
