//! Checkpoint directories: written whole into a hidden temporary directory and renamed into place
//! (`ferrotune_core::fsutil::commit_dir`), so a kill at any instant leaves either the previous set of
//! checkpoints or the new one, never a partial `checkpoint-N`.
//!
//! ```text
//! checkpoint-<step>/
//!   adapter_config.json + adapter_model.safetensors   (LoRA, PEFT format)   or  config.json + model.safetensors
//!   optimizer.safetensors      AdamW moments (when save_optimizer)
//!   scheduler.json             the schedule and the step it is at
//!   rng_state.json             how the random streams are derived (seed, step)
//!   trainer_state.json         step, epoch, sampler position, NaN counters, loss scaler
//! ```

use crate::loss_scale::LossScaler;
use crate::optim::AdamW;
use ferrotune_core::fsutil::{commit_dir, FsError};
use ferrotune_core::RunDir;
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};

/// A checkpoint could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("checkpoint {}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("saving weights into {}: {message}", path.display())]
    Weights { path: PathBuf, message: String },
    #[error(transparent)]
    Optim(#[from] crate::optim::OptimError),
}

/// Where the data sampler stands: the epoch and how many micro-batches of it were consumed. With the
/// per-(seed, epoch) deterministic shuffle this is all a resumed run needs to see the same batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerPosition {
    pub epoch: u64,
    pub batches_consumed: u64,
}

impl TrainerState {
    /// The state of a fresh run of `cfg` lasting `max_steps` optimizer steps.
    pub fn fresh(cfg: &ferrotune_core::train_config::TrainConfig, max_steps: u64) -> Self {
        TrainerState {
            max_steps,
            seed: cfg.seed,
            loss_scaler: cfg.fp16.then(LossScaler::default),
            finetuning_type: format!("{:?}", cfg.finetuning_type).to_lowercase(),
            stage: format!("{:?}", cfg.stage).to_lowercase(),
            ferrotune_version: ferrotune_core::VERSION.into(),
            ..Default::default()
        }
    }
}

/// `trainer_state.json`: everything besides tensors that a resumed run needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    pub global_step: u64,
    pub max_steps: u64,
    /// Fractional epochs done.
    pub epoch: f64,
    pub sampler: SamplerPosition,
    pub seed: u64,
    /// Consecutive NaN/inf steps at save time, and all skipped so far.
    pub nonfinite_in_a_row: u32,
    pub skipped_steps: u64,
    pub trained_tokens: u64,
    pub loss_scaler: Option<LossScaler>,
    /// Step count of the optimizer (== global_step minus skipped steps).
    pub optimizer_step: u64,
    pub finetuning_type: String,
    pub stage: String,
    pub ferrotune_version: String,
}

/// `scheduler.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchedulerState {
    pub kind: String,
    pub base_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    pub last_step: u64,
    pub last_lr: f64,
}

/// `rng_state.json`: ferrotune re-seeds libtorch's generator with `seed + step` before every optimizer step
/// (dropout masks) and shuffles data per `(seed, epoch)`, so these two numbers restore every random stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RngState {
    pub seed: u64,
    pub step: u64,
    pub scheme: String,
}

pub const TRAINER_STATE: &str = "trainer_state.json";
pub const OPTIMIZER: &str = "optimizer.safetensors";
pub const SCHEDULER: &str = "scheduler.json";
pub const RNG_STATE: &str = "rng_state.json";

/// Writes `checkpoint-<step>` atomically. `write_weights` saves the adapter or model files into the given
/// (temporary) directory. Older checkpoints beyond `save_total_limit` are removed afterwards.
pub fn save(
    run: &RunDir,
    state: &TrainerState,
    scheduler: &SchedulerState,
    optimizer: Option<&AdamW>,
    write_weights: impl FnOnce(&Path) -> Result<(), String>,
    save_total_limit: Option<usize>,
) -> Result<PathBuf, CheckpointError> {
    let final_dir = run.checkpoint(state.global_step);
    let tmp = run.root().join(format!(
        ".checkpoint-{}.tmp-{}",
        state.global_step,
        std::process::id()
    ));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| FsError::new("removing", &tmp, e))?;
    }
    fs::create_dir_all(&tmp).map_err(|e| FsError::new("creating directory", &tmp, e))?;
    let result = (|| {
        write_weights(&tmp).map_err(|message| CheckpointError::Weights {
            path: final_dir.clone(),
            message,
        })?;
        if let Some(opt) = optimizer {
            opt.save(&tmp.join(OPTIMIZER))?;
        }
        write_json(&tmp.join(SCHEDULER), scheduler)?;
        write_json(
            &tmp.join(RNG_STATE),
            &RngState {
                seed: state.seed,
                step: state.global_step,
                scheme: "torch.manual_seed(seed + step) before each optimizer step; data order per (seed, epoch)"
                    .into(),
            },
        )?;
        write_json(&tmp.join(TRAINER_STATE), state)?;
        sync_dir_files(&tmp)?;
        commit_dir(&tmp, &final_dir)?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if let Some(limit) = save_total_limit {
        for old in run.checkpoints_beyond_limit(limit.max(1)) {
            fs::remove_dir_all(&old).map_err(|e| FsError::new("removing", &old, e))?;
            tracing::debug!(dir = %old.display(), "removed old checkpoint (save_total_limit)");
        }
    }
    Ok(final_dir)
}

/// Writes `output_dir/trainer_state.json` at the end of a run.
pub fn save_trainer_state(run: &RunDir, state: &TrainerState) -> Result<(), CheckpointError> {
    write_json(&run.trainer_state(), state)
}

/// Removes temporary checkpoint directories left by a killed run.
pub fn remove_stale_temporaries(run: &RunDir) {
    let Ok(entries) = fs::read_dir(run.root()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(".checkpoint-") && e.path().is_dir() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// Reads `trainer_state.json` of a checkpoint.
pub fn load_state(dir: &Path) -> Result<TrainerState, CheckpointError> {
    read_json(&dir.join(TRAINER_STATE))
}

/// Resolves `resume_from_checkpoint`: `auto` is the newest checkpoint of the run (none: start fresh).
pub fn resolve_resume(
    run: &RunDir,
    spec: Option<&str>,
) -> Result<Option<PathBuf>, CheckpointError> {
    match spec {
        None => Ok(None),
        Some("auto") => Ok(run.latest_checkpoint()),
        Some(p) => {
            let path = PathBuf::from(p);
            if path.join(TRAINER_STATE).is_file() {
                Ok(Some(path))
            } else {
                Err(CheckpointError::Invalid {
                    path,
                    message: format!("no {TRAINER_STATE} (not a ferrotune checkpoint)"),
                })
            }
        }
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), CheckpointError> {
    let text = serde_json::to_string_pretty(value).expect("state serializes");
    ferrotune_core::write_atomic(path, text.as_bytes())?;
    Ok(())
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, CheckpointError> {
    let invalid = |message: String| CheckpointError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let text = fs::read_to_string(path).map_err(|e| invalid(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))
}

/// fsyncs every file of a directory (tch writes safetensors without syncing).
fn sync_dir_files(dir: &Path) -> Result<(), CheckpointError> {
    for e in fs::read_dir(dir).map_err(|e| FsError::new("listing", dir, e))? {
        let p = e.map_err(|e| FsError::new("listing", dir, e))?.path();
        if p.is_file() {
            fs::File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(|e| FsError::new("syncing", &p, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched() -> SchedulerState {
        SchedulerState {
            kind: "linear".into(),
            base_lr: 1e-3,
            warmup_steps: 0,
            total_steps: 10,
            last_step: 0,
            last_lr: 1e-3,
        }
    }

    #[test]
    fn saves_atomically_rotates_and_resolves_auto() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        for step in [2, 4, 6] {
            let state = TrainerState {
                global_step: step,
                ..Default::default()
            };
            save(
                &run,
                &state,
                &sched(),
                None,
                |d| fs::write(d.join("w.bin"), b"x").map_err(|e| e.to_string()),
                Some(2),
            )
            .unwrap();
        }
        let steps: Vec<u64> = run.checkpoints().iter().map(|c| c.0).collect();
        assert_eq!(steps, vec![4, 6]);
        let latest = resolve_resume(&run, Some("auto")).unwrap().unwrap();
        assert_eq!(load_state(&latest).unwrap().global_step, 6);
        assert!(latest.join(RNG_STATE).is_file() && latest.join(SCHEDULER).is_file());
        // A failing weight writer leaves no trace, and the error names the checkpoint.
        let err = save(
            &run,
            &TrainerState {
                global_step: 8,
                ..Default::default()
            },
            &sched(),
            None,
            |_| Err("disk full".into()),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("checkpoint-8") && err.contains("disk full"),
            "{err}"
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
        assert!(resolve_resume(&run, Some("/nonexistent")).is_err());
    }
}
