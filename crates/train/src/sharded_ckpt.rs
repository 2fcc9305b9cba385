//! Checkpoints of a distributed run, in the single-process directory layout (`checkpoint-<step>/` with
//! `scheduler.json`, `rng_state.json`, `trainer_state.json`) plus `dist_state.json`, committed atomically:
//! rank 0 creates `.checkpoint-<step>.tmp-dist`, every rank writes into it, and after a barrier rank 0
//! syncs the files and renames the directory into place.
//!
//! * `FULL_STATE_DICT`: the ranks gather the parameters and AdamW moments; rank 0 writes the normal
//!   adapter (PEFT) or model (HF) files and `optimizer.safetensors` with the single-process keys
//!   (`exp_avg.<param>`; under bf16 mixed precision also the fp32 masters as `master.<param>`, as
//!   `optim::AdamW` saves them), so the checkpoint resumes in one process or any world size.
//! * `SHARDED_STATE_DICT`: rank `r` writes `shard-<r>-of-<world>.safetensors` holding its chunk of every
//!   trainable unit's flat (`param.<unit>`, `exp_avg.<unit>`, `exp_avg_sq.<unit>`), and `dist_state.json`
//!   lists each unit's flat layout (tensor names, shapes, offsets, padded size). Under bf16 mixed precision
//!   `param.<unit>` is the fp32 master chunk (the bf16 weights are its rounding). A resume at any world size
//!   concatenates the old chunks, drops the old padding and takes its own chunk of the new padding; the
//!   tensors keep their saved dtype until they are copied into the engine.
//!   Under HYBRID_SHARD every node holds a copy of the shards: the first node's ranks write them
//!   (`shard-<r>-of-<ranks per node>`).

use crate::checkpoint::{self, RngState, SchedulerState, TrainerState};
use crate::engine::Engine;
use crate::error::TrainError;
use crate::flat::LayoutMeta;
use crate::model_setup::TrainModel;
use crate::parallel::Dist;
use ferrotune_core::fsutil::{commit_dir, FsError};
use ferrotune_core::train_config::{CheckpointType, TrainConfig};
use ferrotune_core::RunDir;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use tch::Tensor;

pub const DIST_STATE: &str = "dist_state.json";

/// `dist_state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DistState {
    pub world_size: usize,
    pub strategy: String,
    pub checkpoint_type: CheckpointType,
    /// Samples per global micro-batch (world × per-device batch): the unit of the sampler position.
    pub global_micro_batch: usize,
    /// The number of `shard-*` files (the shard group's size: the world size, or the ranks per node under
    /// HYBRID_SHARD, whose other nodes hold copies). Absent in older checkpoints: the world size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<usize>,
    pub layouts: Vec<LayoutMeta>,
}

impl DistState {
    /// How many shard files the checkpoint has.
    pub fn shard_count(&self) -> usize {
        self.shards.unwrap_or(self.world_size)
    }
}

/// Whether `dir` is a SHARDED_STATE_DICT checkpoint.
pub fn read_dist_state(dir: &Path) -> Option<DistState> {
    let text = fs::read_to_string(dir.join(DIST_STATE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// The checkpoint `cfg` resumes from, when it is a sharded one (decides the distributed recipe even at
/// world size 1).
pub fn resume_is_sharded(cfg: &TrainConfig) -> bool {
    let run = RunDir::new(&cfg.output_dir);
    matches!(
        checkpoint::resolve_resume(&run, cfg.resume_from_checkpoint.as_deref()),
        Ok(Some(dir)) if read_dist_state(&dir)
            .is_some_and(|s| s.checkpoint_type == CheckpointType::ShardedStateDict)
    )
}

fn shard_file(rank: usize, world: usize) -> String {
    format!("shard-{rank:05}-of-{world:05}.safetensors")
}

/// Everything [`save`] needs besides the engine and model.
#[derive(Debug)]
pub struct SaveArgs<'a> {
    pub cfg: &'a TrainConfig,
    pub run: &'a RunDir,
    pub state: &'a TrainerState,
    pub scheduler: &'a SchedulerState,
    pub global_micro_batch: usize,
}

/// Writes `checkpoint-<step>` from every rank (a collective: all ranks call it).
pub fn save(
    a: &SaveArgs<'_>,
    engine: &Engine,
    tm: &TrainModel,
    dist: &Dist,
) -> Result<PathBuf, TrainError> {
    let step = a.state.global_step;
    let final_dir = a.run.checkpoint(step);
    let tmp = a.run.root().join(format!(".checkpoint-{step}.tmp-dist"));
    if dist.is_main() {
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|e| FsError::new("removing", &tmp, e))?;
        }
        fs::create_dir_all(&tmp).map_err(|e| FsError::new("creating directory", &tmp, e))?;
    }
    dist.barrier()?;
    let kind = a.cfg.parallel.checkpoint_type;
    match kind {
        CheckpointType::ShardedStateDict => {
            let mut tensors = Vec::new();
            for (l, [p, m, v]) in engine.layouts.iter().zip(engine.shard_state()) {
                tensors.push((format!("param.{}", l.key), p.contiguous()));
                tensors.push((format!("exp_avg.{}", l.key), m.contiguous()));
                tensors.push((format!("exp_avg_sq.{}", l.key), v.contiguous()));
            }
            if dist.writes_shard() {
                let path = tmp.join(shard_file(dist.shard_rank(), dist.shard_world()));
                Tensor::write_safetensors(&tensors, &path)?;
                sync(&path)?;
            }
        }
        CheckpointType::FullStateDict => {
            let full = engine.full_state(dist)?;
            engine.gather_all(dist)?;
            let written = if dist.is_main() {
                write_full(a.cfg, &tmp, engine, tm, &full)
            } else {
                Ok(())
            };
            engine.release_all();
            written?;
        }
    }
    dist.barrier()?;
    if dist.is_main() {
        let ds = DistState {
            world_size: dist.world(),
            strategy: format!("{:?}", engine.strategy),
            checkpoint_type: kind,
            global_micro_batch: a.global_micro_batch,
            shards: Some(dist.shard_world()),
            layouts: engine.layouts.iter().map(|l| l.meta()).collect(),
        };
        write_json(&tmp.join(DIST_STATE), &ds)?;
        write_json(&tmp.join(checkpoint::SCHEDULER), a.scheduler)?;
        write_json(
            &tmp.join(checkpoint::RNG_STATE),
            &RngState {
                seed: a.state.seed,
                step,
                scheme: "torch.manual_seed(seed + step) before each optimizer step; data order per (seed, epoch), sharded per rank"
                    .into(),
            },
        )?;
        write_json(&tmp.join(checkpoint::TRAINER_STATE), a.state)?;
        for e in fs::read_dir(&tmp).map_err(|e| FsError::new("listing", &tmp, e))? {
            sync(&e.map_err(|e| FsError::new("listing", &tmp, e))?.path())?;
        }
        commit_dir(&tmp, &final_dir)?;
        if let Some(limit) = a.cfg.save_total_limit {
            for old in a.run.checkpoints_beyond_limit(limit.max(1)) {
                fs::remove_dir_all(&old).map_err(|e| FsError::new("removing", &old, e))?;
            }
        }
    }
    dist.barrier()?;
    Ok(final_dir)
}

/// Rank 0 of a FULL_STATE_DICT save: the weights as the single-process recipe writes them, and the
/// moments under the single-process keys.
fn write_full(
    cfg: &TrainConfig,
    dir: &Path,
    engine: &Engine,
    tm: &TrainModel,
    full: &[[Tensor; 3]],
) -> Result<(), TrainError> {
    tm.save_weights(cfg, dir)?;
    if cfg.save_optimizer {
        let mut tensors = Vec::new();
        let masters = engine.mixed_precision();
        for (l, [w, m, v]) in engine.layouts.iter().zip(full) {
            for (((p, wv), mv), vv) in l
                .params
                .iter()
                .zip(l.views(w))
                .zip(l.views(m))
                .zip(l.views(v))
            {
                tensors.push((format!("exp_avg.{}", p.name), mv.contiguous()));
                tensors.push((format!("exp_avg_sq.{}", p.name), vv.contiguous()));
                if masters {
                    tensors.push((format!("master.{}", p.name), wv.contiguous()));
                }
            }
        }
        let path = dir.join(checkpoint::OPTIMIZER);
        Tensor::write_safetensors(&tensors, &path)?;
    }
    Ok(())
}

/// Restores the engine from checkpoint `dir`: a sharded one (parameters and moments, re-sharded for this
/// world size), or a full one (moments — and, under mixed precision, the fp32 masters when it holds them —
/// from `optimizer.safetensors`; the weights were loaded with the model).
pub fn load(dir: &Path, engine: &mut Engine) -> Result<(), TrainError> {
    let invalid = |m: String| TrainError::Config(format!("checkpoint {}: {m}", dir.display()));
    match read_dist_state(dir).filter(|s| s.checkpoint_type == CheckpointType::ShardedStateDict) {
        Some(ds) => {
            let n = ds.shard_count();
            let mut shards: Vec<BTreeMap<String, Tensor>> = Vec::with_capacity(n);
            for r in 0..n {
                let path = dir.join(shard_file(r, n));
                if !path.is_file() {
                    return Err(invalid(format!("missing {}", shard_file(r, n))));
                }
                shards.push(Tensor::read_safetensors(&path)?.into_iter().collect());
            }
            for i in 0..engine.layouts.len() {
                let l = &engine.layouts[i];
                let meta = ds
                    .layouts
                    .iter()
                    .find(|m| m.key == l.key)
                    .ok_or_else(|| invalid(format!("no unit `{}` in {DIST_STATE}", l.key)))?;
                l.matches(meta).map_err(invalid)?;
                let mut full = Vec::with_capacity(3);
                for what in ["param", "exp_avg", "exp_avg_sq"] {
                    let key = format!("{what}.{}", l.key);
                    let parts = shards
                        .iter()
                        .map(|s| s.get(&key).map(Tensor::shallow_clone))
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| invalid(format!("a shard lacks `{key}`")))?;
                    let flat = Tensor::cat(&parts, 0).narrow(0, 0, l.numel);
                    let kind = flat.kind();
                    full.push(l.flatten_kind(&[flat], kind));
                }
                engine.load_full_state(i, Some(&full[0]), &full[1], &full[2]);
            }
        }
        None => {
            let path = dir.join(checkpoint::OPTIMIZER);
            if !path.is_file() {
                tracing::warn!(checkpoint = %dir.display(), "no optimizer state (save_optimizer = false): AdamW restarts, the resumed run is not exact");
                return Ok(());
            }
            let saved: BTreeMap<String, Tensor> =
                Tensor::read_safetensors(&path)?.into_iter().collect();
            let masters = engine.mixed_precision();
            for i in 0..engine.layouts.len() {
                let l = &engine.layouts[i];
                let mut flats = Vec::with_capacity(2);
                for what in ["exp_avg", "exp_avg_sq"] {
                    let parts = l
                        .params
                        .iter()
                        .map(|p| {
                            let key = format!("{what}.{}", p.name);
                            saved
                                .get(&key)
                                .filter(|t| t.size() == p.shape)
                                .map(Tensor::shallow_clone)
                                .ok_or_else(|| {
                                    invalid(format!(
                                        "{}: missing or mis-shaped `{key}`",
                                        checkpoint::OPTIMIZER
                                    ))
                                })
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    flats.push(l.flatten_kind(&parts, parts[0].kind()));
                }
                // fp32 masters (a checkpoint without them keeps the ones taken from the weights).
                let master = masters
                    .then(|| {
                        l.params
                            .iter()
                            .map(|p| {
                                saved
                                    .get(&format!("master.{}", p.name))
                                    .filter(|t| t.size() == p.shape)
                                    .map(Tensor::shallow_clone)
                            })
                            .collect::<Option<Vec<_>>>()
                    })
                    .flatten()
                    .map(|parts| l.flatten_kind(&parts, tch::Kind::Float));
                engine.load_full_state(i, master.as_ref(), &flats[0], &flats[1]);
            }
        }
    }
    Ok(())
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), TrainError> {
    let text = serde_json::to_string_pretty(value).expect("state serializes");
    ferrotune_core::write_atomic(path, text.as_bytes())?;
    Ok(())
}

fn sync(path: &Path) -> Result<(), TrainError> {
    if path.is_file() {
        fs::File::open(path)
            .and_then(|f| f.sync_all())
            .map_err(|e| FsError::new("syncing", path, e))?;
    }
    Ok(())
}
