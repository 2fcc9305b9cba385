//! The distributed side of a run: the process group, which micro-batches each rank sees, and exact
//! cross-rank sums of host numbers (token counts, losses, squared gradient norms).
//!
//! **Data.** The data crate's [`DistributedSampler`] (torch's): the single-process order of an epoch is
//! padded by wrapping around to a multiple of the world size, rank `r` takes every `world`-th sample
//! starting at `r`, and cuts its share into micro-batches of
//! `per_device_train_batch_size`. Micro-batch `j` of all ranks together is then exactly micro-batch `j` of
//! one process with `world × per_device_train_batch_size` samples per micro-batch, so with
//! `gradient_accumulation_steps` unchanged the global batch is `world × per_device × accumulation` and the
//! sample stream is the single process's.
//!
//! **Groups.** Parameters are sharded over the *shard group*: every rank, except under `HYBRID_SHARD`
//! across nodes, where it is the ranks of this node (FSDP's intra-node group) and the *replica group* (the
//! ranks with this local rank on the other nodes) all-reduces the reduce-scattered gradient chunks, so each
//! node holds one full copy of the sharded state.

use crate::batches::{HostBatch, Sample};
use crate::error::TrainError;
use ferrotune_core::train_config::{ShardingStrategy, TrainConfig};
use ferrotune_data::{DistributedSampler, SamplerConfig};
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
    sampler(samples.len(), batch_size, seed, shuffle, rank, world)
        .batches(epoch)
        .into_iter()
        .map(|idx| {
            let rows: Vec<&Sample> = idx.iter().map(|i| &samples[*i]).collect();
            HostBatch::collate(&rows, pad_id)
        })
        .collect()
}

/// The data crate's sampler over `n` samples for `rank` of `world` (no length grouping, nothing dropped).
pub fn sampler(
    n: usize,
    batch_size: usize,
    seed: u64,
    shuffle: bool,
    rank: usize,
    world: usize,
) -> DistributedSampler {
    let cfg = SamplerConfig {
        batch_size: batch_size.max(1),
        rank,
        world_size: world,
        shuffle,
        seed,
        drop_last: false,
        group_by_length: false,
    };
    DistributedSampler::new(cfg, vec![0; n])
}

/// The job this process is part of, connected.
#[derive(Debug)]
pub struct Dist {
    pub env: RankEnv,
    pub pg: ProcessGroup,
    /// HYBRID_SHARD across nodes: (this node's ranks, the ranks with this local rank on every node).
    pub hybrid: Option<(ProcessGroup, ProcessGroup)>,
    /// Where the collectives' tensors live (CPU for gloo, the GPU for nccl).
    pub device: Device,
}

/// The strategy a job runs: HYBRID_SHARD on a single node is FULL_SHARD.
pub fn effective_strategy(cfg: &TrainConfig, env: &RankEnv) -> ShardingStrategy {
    match cfg.parallel.strategy {
        ShardingStrategy::HybridShard if env.local_world_size >= env.world_size => {
            tracing::info!("HYBRID_SHARD on one node: running FULL_SHARD");
            ShardingStrategy::FullShard
        }
        s => s,
    }
}

impl Dist {
    /// Connects the ranks of `env` with the backend of `device` (or `parallel.backend`); for
    /// `HYBRID_SHARD` across nodes also the node and replica subgroups (see the module docs).
    pub fn connect(
        cfg: &TrainConfig,
        env: RankEnv,
        device: Device,
        strategy: ShardingStrategy,
    ) -> Result<Self, TrainError> {
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
        let hybrid = if strategy == ShardingStrategy::HybridShard {
            Some(hybrid_groups(&env, &pg)?)
        } else {
            None
        };
        Ok(Dist {
            env,
            pg,
            hybrid,
            device,
        })
    }

    /// The group parameters, gradients and optimizer state are sharded over.
    pub fn shard_pg(&self) -> &ProcessGroup {
        self.hybrid.as_ref().map_or(&self.pg, |(node, _)| node)
    }

    /// This rank's place in the shard group.
    pub fn shard_rank(&self) -> usize {
        self.shard_pg().rank()
    }

    /// The number of shards.
    pub fn shard_world(&self) -> usize {
        self.shard_pg().world_size()
    }

    /// HYBRID_SHARD: the group holding the other copies of this rank's shard.
    pub fn replicas(&self) -> Option<&ProcessGroup> {
        self.hybrid.as_ref().map(|(_, r)| r)
    }

    /// Whether this rank writes its shard of a SHARDED_STATE_DICT checkpoint (the first node's copy).
    pub fn writes_shard(&self) -> bool {
        self.replicas().is_none_or(|r| r.rank() == 0)
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
        self.gather_f64_in(&self.pg, values)
    }

    /// [`Dist::gather_f64`] over the shard group.
    pub fn shard_sum_f64(&self, values: &[f64]) -> Result<Vec<f64>, TrainError> {
        let all = self.gather_f64_in(self.shard_pg(), values)?;
        Ok((0..values.len())
            .map(|i| all.iter().map(|r| r[i]).sum())
            .collect())
    }

    fn gather_f64_in(
        &self,
        pg: &ProcessGroup,
        values: &[f64],
    ) -> Result<Vec<Vec<f64>>, TrainError> {
        let words: Vec<f32> = values
            .iter()
            .flat_map(|v| {
                let b = v.to_bits();
                [f32::from_bits(b as u32), f32::from_bits((b >> 32) as u32)]
            })
            .collect();
        let t = Tensor::from_slice(&words).to_device(self.device);
        let all = pg.all_gather(&t).map_err(dist_err)?;
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

/// HYBRID_SHARD's node and replica groups. Ranks are numbered node by node (torchrun, `ferrotune launch`,
/// Slurm's block distribution): rank = node · LOCAL_WORLD_SIZE + LOCAL_RANK.
fn hybrid_groups(
    env: &RankEnv,
    pg: &ProcessGroup,
) -> Result<(ProcessGroup, ProcessGroup), TrainError> {
    let (rank, world, per_node) = (env.rank, env.world_size, env.local_world_size.max(1));
    if !world.is_multiple_of(per_node) || rank % per_node != env.local_rank {
        return Err(TrainError::Config(format!(
            "HYBRID_SHARD needs the same number of ranks on every node, numbered node by node: rank {rank} has LOCAL_RANK {} with LOCAL_WORLD_SIZE {per_node} and WORLD_SIZE {world}",
            env.local_rank
        )));
    }
    let node = rank / per_node;
    let local = rank % per_node;
    let node_ranks: Vec<usize> = (node * per_node..(node + 1) * per_node).collect();
    let replica_ranks: Vec<usize> = (local..world).step_by(per_node).collect();
    let node_pg = pg
        .subgroup(&format!("hybrid/node{node}"), &node_ranks)
        .map_err(dist_err)?;
    let replica_pg = pg
        .subgroup(&format!("hybrid/replica{local}"), &replica_ranks)
        .map_err(dist_err)?;
    tracing::info!(
        rank,
        node,
        shards = per_node,
        replicas = replica_ranks.len(),
        "HYBRID_SHARD: sharded within the node, replicated across nodes"
    );
    Ok((node_pg, replica_pg))
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
