//! The distributed side of a run: the process group, which micro-batches each rank sees, and exact
//! cross-rank sums of host numbers (token counts, losses, squared gradient norms).
//!
//! **Data.** The single-process order of an epoch (`batches::epoch_order`) is padded by wrapping around to
//! a multiple of the world size (torch's `DistributedSampler`, as `ferrotune_data::DistributedSampler`),
//! rank `r` takes every `world`-th sample starting at `r`, and cuts its share into micro-batches of
//! `per_device_train_batch_size`. Micro-batch `j` of all ranks together is then exactly micro-batch `j` of
//! one process with `world × per_device_train_batch_size` samples per micro-batch, so with
//! `gradient_accumulation_steps` unchanged the global batch is `world × per_device × accumulation` and the
//! sample stream is the single process's.

use crate::batches::{epoch_order, HostBatch, Sample};
use crate::error::TrainError;
use ferrotune_core::train_config::TrainConfig;
use ferrotune_dist::{Backend, ProcessGroup, RankEnv};
use std::time::Duration;
use tch::{Device, Kind, Tensor};

/// Rank `rank`'s micro-batches of `epoch` (see the module docs). At world size 1 this is
/// `batches::epoch_batches`.
#[allow(clippy::too_many_arguments)]
pub fn rank_epoch_batches(
    samples: &[Sample],
    batch_size: usize,
    seed: u64,
    epoch: u64,
    shuffle: bool,
    pad_id: i64,
    rank: usize,
    world: usize,
) -> Vec<HostBatch> {
    let mut order = epoch_order(samples.len(), seed, epoch, shuffle);
    let n = order.len();
    let total = n.div_ceil(world) * world;
    if total > n && n > 0 {
        let pad: Vec<usize> = order.iter().copied().cycle().take(total - n).collect();
        order.extend(pad);
    }
    let mine: Vec<usize> = order.into_iter().skip(rank).step_by(world).collect();
    mine.chunks(batch_size.max(1))
        .map(|idx| {
            let rows: Vec<&Sample> = idx.iter().map(|i| &samples[*i]).collect();
            HostBatch::collate(&rows, pad_id)
        })
        .collect()
}

/// The job this process is part of, connected.
#[derive(Debug)]
pub struct Dist {
    pub env: RankEnv,
    pub pg: ProcessGroup,
    /// Where the collectives' tensors live (CPU for gloo, the GPU for nccl).
    pub device: Device,
}

impl Dist {
    /// Connects the ranks of `env` with the backend of `device` (or `parallel.backend`).
    pub fn connect(cfg: &TrainConfig, env: RankEnv, device: Device) -> Result<Self, TrainError> {
        let backend = match &cfg.parallel.backend {
            Some(b) => b.parse::<Backend>().map_err(TrainError::Config)?,
            None => Backend::for_device(device),
        };
        let timeout = Duration::from_secs(cfg.parallel.timeout_s);
        let pg = ProcessGroup::init(&env, backend, timeout).map_err(dist_err)?;
        tracing::info!(
            rank = env.rank,
            world_size = env.world_size,
            backend = backend.name(),
            "process group ready"
        );
        Ok(Dist { env, pg, device })
    }

    pub fn rank(&self) -> usize {
        self.env.rank
    }

    pub fn world(&self) -> usize {
        self.env.world_size
    }

    pub fn is_main(&self) -> bool {
        self.env.rank == 0
    }

    /// Every rank's `values`, in rank order, bit-exact (f64s travel as pairs of 32-bit words through
    /// all_gather, which only copies).
    pub fn gather_f64(&self, values: &[f64]) -> Result<Vec<Vec<f64>>, TrainError> {
        let words: Vec<f32> = values
            .iter()
            .flat_map(|v| {
                let b = v.to_bits();
                [f32::from_bits(b as u32), f32::from_bits((b >> 32) as u32)]
            })
            .collect();
        let t = Tensor::from_slice(&words).to_device(self.device);
        let all = self.pg.all_gather(&t).map_err(dist_err)?;
        let mut flat = vec![0f32; all.numel()];
        all.to_kind(Kind::Float).copy_data(&mut flat, all.numel());
        Ok(flat
            .chunks(words.len())
            .map(|r| {
                r.chunks(2)
                    .map(|w| {
                        f64::from_bits(w[0].to_bits() as u64 | ((w[1].to_bits() as u64) << 32))
                    })
                    .collect()
            })
            .collect())
    }

    /// Element-wise sum of `values` over ranks, added in rank order (the same result on every rank).
    pub fn sum_f64(&self, values: &[f64]) -> Result<Vec<f64>, TrainError> {
        let all = self.gather_f64(values)?;
        Ok((0..values.len())
            .map(|i| all.iter().map(|r| r[i]).sum())
            .collect())
    }

    pub fn barrier(&self) -> Result<(), TrainError> {
        self.pg.barrier().map_err(dist_err)
    }
}

/// A collective failed: the message names the rank and the operation.
pub fn dist_err(e: ferrotune_dist::DistError) -> TrainError {
    TrainError::Distributed(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_partition_the_single_process_micro_batches() {
        let samples: Vec<Sample> = (0..12)
            .map(|i| Sample {
                input_ids: vec![i; 1 + (i as usize % 3)],
                labels: vec![i; 1 + (i as usize % 3)],
                seq_starts: vec![],
            })
            .collect();
        let single = crate::batches::epoch_batches(&samples, 6, 3, 1, true, 0);
        let r0 = rank_epoch_batches(&samples, 3, 3, 1, true, 0, 0, 2);
        let r1 = rank_epoch_batches(&samples, 3, 3, 1, true, 0, 1, 2);
        assert_eq!(single.len(), 2);
        for j in 0..2 {
            let mut a: Vec<i64> = single[j].input_ids.iter().map(|r| r[0]).collect();
            let mut b: Vec<i64> = r0[j]
                .input_ids
                .iter()
                .chain(&r1[j].input_ids)
                .map(|r| r[0])
                .collect();
            a.sort();
            b.sort();
            assert_eq!(a, b, "micro-batch {j}");
        }
        assert_eq!(
            rank_epoch_batches(&samples, 4, 3, 0, true, 0, 0, 1),
            crate::batches::epoch_batches(&samples, 4, 3, 0, true, 0)
        );
        // 12 samples over 5 ranks: padded to 15 by wrapping around, 3 per rank.
        let r4 = rank_epoch_batches(&samples, 8, 3, 0, false, 0, 4, 5);
        let ids: Vec<i64> = r4[0].input_ids.iter().map(|r| r[0]).collect();
        assert_eq!(ids, vec![4, 9, 2]);
    }
}
