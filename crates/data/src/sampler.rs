//! Which samples go into which batch, on which rank, in which order. [`DistributedSampler`] follows
//! torch's `DistributedSampler`: one permutation per (seed, epoch) shared by all ranks, padded by
//! wrapping around (or cut with `drop_last`) to a multiple of the world size, rank r taking every
//! world-th index from r. Optional length grouping sorts chunks of `batch_size × 50` indices by length
//! (longest first), like transformers' `LengthGroupedSampler`, so batches waste little padding.
//! [`SamplerState`] (epoch, batches done) is what a checkpoint stores to resume mid-epoch.

use crate::rng::SplitMix64;
use serde::{Deserialize, Serialize};

/// How batches are drawn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplerConfig {
    pub batch_size: usize,
    pub rank: usize,
    pub world_size: usize,
    pub shuffle: bool,
    pub seed: u64,
    /// Drop the tail that does not fill every rank equally (and the last partial batch) instead of padding.
    pub drop_last: bool,
    pub group_by_length: bool,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            batch_size: 1,
            rank: 0,
            world_size: 1,
            shuffle: true,
            seed: 42,
            drop_last: false,
            group_by_length: false,
        }
    }
}

/// Where an iteration stands: saved in checkpoints, restored to resume mid-epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SamplerState {
    pub epoch: u64,
    /// Batches of this epoch already yielded on this rank.
    pub batches_done: u64,
}

/// Batches of sample indices for one rank.
#[derive(Debug, Clone)]
pub struct DistributedSampler {
    cfg: SamplerConfig,
    lengths: Vec<u32>,
}

impl DistributedSampler {
    /// `lengths[i]` is sample i's length (used for length grouping; its len is the dataset size).
    pub fn new(cfg: SamplerConfig, lengths: Vec<u32>) -> DistributedSampler {
        assert!(
            cfg.world_size > 0 && cfg.rank < cfg.world_size,
            "rank {} of world {}",
            cfg.rank,
            cfg.world_size
        );
        assert!(cfg.batch_size > 0, "batch_size must be positive");
        DistributedSampler { cfg, lengths }
    }

    /// The dataset size this sampler was built for.
    pub fn dataset_len(&self) -> usize {
        self.lengths.len()
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// This rank's sample indices for `epoch`, in order.
    pub fn rank_indices(&self, epoch: u64) -> Vec<usize> {
        let n = self.lengths.len();
        let w = self.cfg.world_size;
        let mut order: Vec<usize> = (0..n).collect();
        if self.cfg.shuffle {
            SplitMix64::derive(self.cfg.seed, epoch).shuffle(&mut order);
        }
        if self.cfg.group_by_length {
            let mega = self.cfg.batch_size * w * 50;
            for chunk in order.chunks_mut(mega.max(1)) {
                chunk.sort_by_key(|&i| std::cmp::Reverse(self.lengths[i]));
            }
        }
        let total = if self.cfg.drop_last {
            n / w * w
        } else {
            n.div_ceil(w) * w
        };
        if total > n && n > 0 {
            let pad: Vec<usize> = order.iter().copied().cycle().take(total - n).collect();
            order.extend(pad);
        }
        order.truncate(total);
        order.into_iter().skip(self.cfg.rank).step_by(w).collect()
    }

    /// This rank's batches for `epoch`.
    pub fn batches(&self, epoch: u64) -> Vec<Vec<usize>> {
        let idx = self.rank_indices(epoch);
        let mut b: Vec<Vec<usize>> = idx
            .chunks(self.cfg.batch_size)
            .map(<[usize]>::to_vec)
            .collect();
        if self.cfg.drop_last && b.last().is_some_and(|l| l.len() < self.cfg.batch_size) {
            b.pop();
        }
        b
    }

    /// Batches per epoch on this rank.
    pub fn num_batches(&self) -> usize {
        let n = self.lengths.len();
        let w = self.cfg.world_size;
        let per_rank = if self.cfg.drop_last {
            n / w
        } else {
            n.div_ceil(w)
        };
        if self.cfg.drop_last {
            per_rank / self.cfg.batch_size
        } else {
            per_rank.div_ceil(self.cfg.batch_size)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(n: usize, rank: usize, world: usize, drop_last: bool) -> DistributedSampler {
        let cfg = SamplerConfig {
            batch_size: 2,
            rank,
            world_size: world,
            shuffle: true,
            seed: 3,
            drop_last,
            group_by_length: false,
        };
        DistributedSampler::new(cfg, vec![1; n])
    }

    #[test]
    fn ranks_partition_the_epoch_like_torch() {
        // 10 samples on 3 ranks: padded to 12 (two repeats) or cut to 9.
        let all: Vec<usize> = (0..3)
            .flat_map(|r| sampler(10, r, 3, false).rank_indices(0))
            .collect();
        assert_eq!(all.len(), 12);
        let mut uniq = all.clone();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq, (0..10).collect::<Vec<_>>());
        let cut: Vec<usize> = (0..3)
            .flat_map(|r| sampler(10, r, 3, true).rank_indices(0))
            .collect();
        assert_eq!(cut.len(), 9);
        let mut u = cut.clone();
        u.sort();
        u.dedup();
        assert_eq!(u.len(), 9);
        // Same (seed, epoch) → same order; another epoch → another order.
        assert_eq!(
            sampler(10, 0, 1, false).rank_indices(4),
            sampler(10, 0, 1, false).rank_indices(4)
        );
        assert_ne!(
            sampler(10, 0, 1, false).rank_indices(4),
            sampler(10, 0, 1, false).rank_indices(5)
        );
        for (n, w, d) in [(10, 3, false), (10, 3, true), (7, 1, false), (7, 2, true)] {
            let s = sampler(n, 0, w, d);
            assert_eq!(s.batches(0).len(), s.num_batches(), "{n} {w} {d}");
        }
    }

    #[test]
    fn length_grouping_puts_similar_lengths_together() {
        let lengths: Vec<u32> = (0..400).map(|i| (i * 37 % 101) as u32).collect();
        let cfg = SamplerConfig {
            batch_size: 4,
            group_by_length: true,
            ..Default::default()
        };
        let s = DistributedSampler::new(cfg, lengths.clone());
        let spread = |b: &Vec<usize>| {
            b.iter().map(|&i| lengths[i]).max().unwrap()
                - b.iter().map(|&i| lengths[i]).min().unwrap()
        };
        let grouped: u32 = s.batches(0).iter().map(spread).sum();
        let plain = DistributedSampler::new(
            SamplerConfig {
                batch_size: 4,
                ..Default::default()
            },
            lengths.clone(),
        );
        let random: u32 = plain.batches(0).iter().map(spread).sum();
        assert!(grouped * 5 < random, "{grouped} vs {random}");
    }
}
