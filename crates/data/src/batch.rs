//! Batches for the trainer, as plain vectors (no tensor library here): right-padded to the longest sample
//! of the batch (optionally rounded up to a multiple), with attention mask, position ids restarting per
//! packed sequence, and sequence ids so the model can build a block-diagonal causal mask for packed rows.
//! [`BatchIter`] walks a [`DistributedSampler`]'s batches from a [`SamplerState`] and keeps that state
//! current, so a checkpoint can save it and a resumed run continues with the next batch.

use crate::cache::{Sample, TokenizedDataset};
use crate::sampler::{DistributedSampler, SamplerState};
use crate::tokenize::IGNORE_INDEX;

/// One batch, row-major `[batch_size, seq_len]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub input_ids: Vec<i64>,
    /// -100 where no loss is taken (prompt, padding, first token of each packed sequence).
    pub labels: Vec<i64>,
    /// 1 on real tokens, 0 on padding.
    pub attention_mask: Vec<i64>,
    pub position_ids: Vec<i64>,
    /// Index of the packed sequence each token belongs to within its row (0 when unpacked), -1 on padding.
    /// Token i may attend to token j iff `seq_ids[i] == seq_ids[j] >= 0` and j <= i.
    pub seq_ids: Vec<i32>,
    pub batch_size: usize,
    pub seq_len: usize,
    /// Loss terms in this batch: positions t > 0 of a sequence whose label is not -100.
    pub n_trained_tokens: usize,
    /// Dataset indices of the rows.
    pub indices: Vec<usize>,
}

/// Collates samples, right-padding with `pad_id` to the longest (rounded up to `pad_to_multiple_of`).
pub fn collate(
    samples: &[Sample],
    indices: &[usize],
    pad_id: u32,
    pad_to_multiple_of: usize,
) -> Batch {
    let longest = samples.iter().map(|s| s.input_ids.len()).max().unwrap_or(0);
    let m = pad_to_multiple_of.max(1);
    let t = longest.div_ceil(m) * m;
    let b = samples.len();
    let mut batch = Batch {
        input_ids: vec![pad_id as i64; b * t],
        labels: vec![IGNORE_INDEX as i64; b * t],
        attention_mask: vec![0; b * t],
        position_ids: vec![0; b * t],
        seq_ids: vec![-1; b * t],
        batch_size: b,
        seq_len: t,
        n_trained_tokens: 0,
        indices: indices.to_vec(),
    };
    for (r, s) in samples.iter().enumerate() {
        let row = r * t;
        let mut seq = 0i32;
        for (k, (&id, &l)) in s.input_ids.iter().zip(&s.labels).enumerate() {
            if seq + 1 < s.seq_starts.len() as i32 && s.seq_starts[(seq + 1) as usize] == k {
                seq += 1;
            }
            batch.input_ids[row + k] = id as i64;
            batch.labels[row + k] = l as i64;
            batch.attention_mask[row + k] = 1;
            batch.position_ids[row + k] = s.position_ids[k] as i64;
            batch.seq_ids[row + k] = seq;
            if l != IGNORE_INDEX && s.position_ids[k] > 0 {
                batch.n_trained_tokens += 1;
            }
        }
    }
    batch
}

/// Iterates over one epoch's batches of a dataset from a saved position.
pub struct BatchIter<'a> {
    ds: &'a TokenizedDataset,
    batches: Vec<Vec<usize>>,
    state: SamplerState,
    pad_id: u32,
    pad_to_multiple_of: usize,
}

impl std::fmt::Debug for BatchIter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchIter")
            .field("state", &self.state)
            .field("batches", &self.batches.len())
            .finish()
    }
}

impl<'a> BatchIter<'a> {
    /// Starts at `state` (epoch, batches already done).
    pub fn new(
        ds: &'a TokenizedDataset,
        sampler: &DistributedSampler,
        state: SamplerState,
        pad_id: u32,
    ) -> BatchIter<'a> {
        assert_eq!(
            sampler.dataset_len(),
            ds.len(),
            "sampler built for another dataset"
        );
        BatchIter {
            ds,
            batches: sampler.batches(state.epoch),
            state,
            pad_id,
            pad_to_multiple_of: 1,
        }
    }

    /// Pads `seq_len` up to a multiple of `m` (8 suits tensor cores).
    pub fn pad_to_multiple_of(mut self, m: usize) -> Self {
        self.pad_to_multiple_of = m.max(1);
        self
    }

    /// The position to save: the next batch yielded will be the one after this state.
    pub fn state(&self) -> SamplerState {
        self.state
    }

    /// Batches in this epoch (done and remaining).
    pub fn len_epoch(&self) -> usize {
        self.batches.len()
    }
}

impl Iterator for BatchIter<'_> {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
        let idx = self.batches.get(self.state.batches_done as usize)?;
        let samples: Vec<Sample> = idx.iter().map(|&i| self.ds.get(i)).collect();
        let b = collate(&samples, idx, self.pad_id, self.pad_to_multiple_of);
        self.state.batches_done += 1;
        Some(b)
    }
}
