//! From tokenized samples to the micro-batches the loop consumes: the per-(seed, epoch) shuffle, dynamic
//! padding to the longest sample of a batch (right padding, labels -100 on padding), and the host-side
//! counts the loop needs before running the model (trained tokens for the accumulation window, input tokens
//! for throughput).
//!
//! The order of an epoch is a pure function of `(seed, epoch)`, so a run resumed at "epoch e, k
//! micro-batches consumed" sees exactly the batches the uninterrupted run would have seen.

use ferrotune_model::AttentionMask;
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

/// One tokenized training example: ids and labels of equal length (-100 = not trained).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub input_ids: Vec<i64>,
    pub labels: Vec<i64>,
    /// Offsets where packed sequences start (`[0]`, or empty, for one sequence per row).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seq_starts: Vec<usize>,
}

impl Sample {
    /// Labels that count in the loss after the causal shift (position 0 never does).
    pub fn trained_tokens(&self) -> u64 {
        self.labels.iter().skip(1).filter(|l| **l != -100).count() as u64
    }
}

/// Segment ids and positions of packed rows.
pub type PackedRows = (Vec<Vec<i64>>, Vec<Vec<i64>>);

/// A padded micro-batch, as plain rows (exported by tests for the Python oracle) and as tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostBatch {
    pub input_ids: Vec<Vec<i64>>,
    pub attention_mask: Vec<Vec<i64>>,
    pub labels: Vec<Vec<i64>>,
    /// Packed rows only: the sequence index of every token (-1 on padding) and positions restarting at
    /// every sequence start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packed: Option<PackedRows>,
}

impl HostBatch {
    /// Pads `samples` on the right to the longest one with `pad_id` (labels -100, mask 0).
    pub fn collate(samples: &[&Sample], pad_id: i64) -> HostBatch {
        let t = samples.iter().map(|s| s.input_ids.len()).max().unwrap_or(0);
        let pad = |v: &[i64], fill: i64| {
            let mut r = v.to_vec();
            r.resize(t, fill);
            r
        };
        HostBatch {
            input_ids: samples.iter().map(|s| pad(&s.input_ids, pad_id)).collect(),
            attention_mask: samples
                .iter()
                .map(|s| pad(&vec![1; s.input_ids.len()], 0))
                .collect(),
            labels: samples.iter().map(|s| pad(&s.labels, -100)).collect(),
            packed: samples
                .iter()
                .any(|s| s.seq_starts.len() > 1)
                .then(|| pack_layout(samples, t)),
        }
    }

    /// Labels != -100 after the shift: the denominator of the token-normalised loss.
    pub fn trained_tokens(&self) -> u64 {
        self.labels
            .iter()
            .map(|r| r.iter().skip(1).filter(|l| **l != -100).count() as u64)
            .sum()
    }

    /// Real (non-padding) input tokens: what throughput counts.
    pub fn input_tokens(&self) -> u64 {
        self.attention_mask
            .iter()
            .map(|r| r.iter().filter(|m| **m != 0).count() as u64)
            .sum()
    }

    /// Tensors on `device`: (input_ids, position_ids, mask, labels). Without padding the mask is plain causal.
    pub fn to_tensors(&self, device: Device) -> (Tensor, Tensor, AttentionMask, Tensor) {
        let b = self.input_ids.len() as i64;
        let t = self.input_ids.first().map_or(0, |r| r.len()) as i64;
        let flat = |rows: &[Vec<i64>]| {
            Tensor::from_slice(&rows.concat())
                .view([b, t])
                .to_device(device)
        };
        let ids = flat(&self.input_ids);
        let labels = flat(&self.labels);
        let positions = Tensor::arange(t, (tch::Kind::Int64, device))
            .unsqueeze(0)
            .expand([b, t], false)
            .contiguous();
        if let Some((seg, pos)) = &self.packed {
            return (ids, flat(pos), AttentionMask::Segments(flat(seg)), labels);
        }
        let padded = self.attention_mask.iter().any(|r| r.contains(&0));
        let mask = if padded {
            AttentionMask::Padding(flat(&self.attention_mask))
        } else {
            AttentionMask::Causal
        };
        (ids, positions, mask, labels)
    }
}

/// Segment ids and restarting positions of packed rows, padded to `t`.
fn pack_layout(samples: &[&Sample], t: usize) -> PackedRows {
    let mut segs = Vec::new();
    let mut poss = Vec::new();
    for s in samples {
        let mut seg = vec![-1i64; t];
        let mut pos = vec![0i64; t];
        let starts = if s.seq_starts.is_empty() {
            vec![0]
        } else {
            s.seq_starts.clone()
        };
        for (k, &start) in starts.iter().enumerate() {
            let end = starts.get(k + 1).copied().unwrap_or(s.input_ids.len());
            for i in start..end {
                seg[i] = k as i64;
                pos[i] = (i - start) as i64;
            }
        }
        segs.push(seg);
        poss.push(pos);
    }
    (segs, poss)
}

/// The sample order of `epoch`: the data crate's [`DistributedSampler`] at world size 1 (a Fisher-Yates
/// shuffle seeded by `(seed, epoch)`, or the identity).
pub fn epoch_order(n: usize, seed: u64, epoch: u64, shuffle: bool) -> Vec<usize> {
    crate::parallel::sampler(n, 1, seed, shuffle, 0, 1).rank_indices(epoch)
}

/// The micro-batches of one epoch (the last one may be smaller; none is dropped).
pub fn epoch_batches(
    samples: &[Sample],
    batch_size: usize,
    seed: u64,
    epoch: u64,
    shuffle: bool,
    pad_id: i64,
) -> Vec<HostBatch> {
    crate::parallel::rank_epoch_batches(samples, batch_size, seed, epoch, shuffle, pad_id, 0, 1)
}

/// Splits off a validation set: `val_size` < 1 is a fraction, else a count; the split is a seeded shuffle.
pub fn split_validation(
    samples: Vec<Sample>,
    val_size: f64,
    seed: u64,
) -> (Vec<Sample>, Vec<Sample>) {
    let n = samples.len();
    let n_val = if val_size <= 0.0 {
        0
    } else if val_size < 1.0 {
        ((n as f64) * val_size).round() as usize
    } else {
        val_size as usize
    }
    .min(n.saturating_sub(1));
    if n_val == 0 {
        return (samples, Vec::new());
    }
    let order = epoch_order(n, seed ^ 0x5eed_5eed, 0, true);
    let val_idx: std::collections::HashSet<usize> = order[..n_val].iter().copied().collect();
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (i, s) in samples.into_iter().enumerate() {
        if val_idx.contains(&i) {
            val.push(s);
        } else {
            train.push(s);
        }
    }
    (train, val)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(ids: &[i64], labels: &[i64]) -> Sample {
        Sample {
            input_ids: ids.to_vec(),
            labels: labels.to_vec(),
            seq_starts: vec![],
        }
    }

    #[test]
    fn pads_counts_and_shuffles_deterministically() {
        let a = s(&[1, 5, 6, 2], &[-100, -100, 6, 2]);
        let b = s(&[1, 7], &[1, 7]);
        let hb = HostBatch::collate(&[&a, &b], 0);
        assert_eq!(hb.input_ids[1], vec![1, 7, 0, 0]);
        assert_eq!(hb.labels[1], vec![1, 7, -100, -100]);
        assert_eq!(hb.attention_mask[1], vec![1, 1, 0, 0]);
        assert_eq!(hb.trained_tokens(), 3);
        assert_eq!(hb.input_tokens(), 6);
        assert_eq!(epoch_order(50, 7, 3, true), epoch_order(50, 7, 3, true));
        assert_ne!(epoch_order(50, 7, 3, true), epoch_order(50, 7, 4, true));
        let mut sorted = epoch_order(50, 7, 3, true);
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        let samples: Vec<Sample> = (0..10).map(|i| s(&[i, i], &[i, i])).collect();
        let (tr, va) = split_validation(samples, 0.2, 1);
        assert_eq!((tr.len(), va.len()), (8, 2));
        let (ids, pos, mask, _) = hb.to_tensors(Device::Cpu);
        assert_eq!(ids.size(), vec![2, 4]);
        assert_eq!(Vec::<i64>::try_from(pos.get(1)).unwrap(), vec![0, 1, 2, 3]);
        assert!(matches!(mask, AttentionMask::Padding(_)));
        let packed = Sample {
            input_ids: vec![1, 5, 2, 1, 6, 2],
            labels: vec![-100, 5, 2, -100, 6, 2],
            seq_starts: vec![0, 3],
        };
        let hb = HostBatch::collate(&[&packed, &b], 0);
        let (seg, pos) = hb.packed.clone().unwrap();
        assert_eq!(seg[0], vec![0, 0, 0, 1, 1, 1]);
        assert_eq!(pos[0], vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(seg[1], vec![0, 0, -1, -1, -1, -1]);
        assert!(matches!(
            hb.to_tensors(Device::Cpu).2,
            AttentionMask::Segments(_)
        ));
    }
}
