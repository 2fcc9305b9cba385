//! The layout of a run (output) directory.
//!
//! ```text
//! output_dir/
//!   resolved_config.toml      the config after defaults and --set overrides
//!   metrics.jsonl             one JSON object per logged step
//!   trainer_state.json        progress of the finished run
//!   training_loss.png, eval_loss.png
//!   checkpoint-<step>/        one per save, the newest `save_total_limit` kept
//!   adapter_config.json + adapter_model.safetensors   (LoRA)  or  config.json + model*.safetensors (full)
//! ```

use std::fs;
use std::path::{Path, PathBuf};

/// Prefix of checkpoint directory names (`checkpoint-120`), as in transformers' Trainer.
pub const CHECKPOINT_PREFIX: &str = "checkpoint-";

/// Paths inside one run directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RunDir { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn resolved_config(&self) -> PathBuf {
        self.root.join("resolved_config.toml")
    }
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }
    pub fn trainer_state(&self) -> PathBuf {
        self.root.join("trainer_state.json")
    }
    pub fn plot(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.png"))
    }
    pub fn checkpoint(&self, step: u64) -> PathBuf {
        self.root.join(format!("{CHECKPOINT_PREFIX}{step}"))
    }

    /// Completed checkpoints, oldest first, as (step, path). Temporary and malformed names are ignored.
    pub fn checkpoints(&self) -> Vec<(u64, PathBuf)> {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut found: Vec<(u64, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let step = name.strip_prefix(CHECKPOINT_PREFIX)?.parse().ok()?;
                Some((step, e.path()))
            })
            .collect();
        found.sort();
        found
    }

    /// The newest completed checkpoint (`resume_from_checkpoint = "auto"`).
    pub fn latest_checkpoint(&self) -> Option<PathBuf> {
        self.checkpoints().pop().map(|(_, p)| p)
    }

    /// Checkpoints to delete so that only the newest `limit` remain.
    pub fn checkpoints_beyond_limit(&self, limit: usize) -> Vec<PathBuf> {
        let all = self.checkpoints();
        let n = all.len().saturating_sub(limit);
        all.into_iter().take(n).map(|(_, p)| p).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_checkpoints_by_step_not_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        assert!(run.latest_checkpoint().is_none());
        for s in [100, 20, 3] {
            fs::create_dir(run.checkpoint(s)).unwrap();
        }
        fs::create_dir(dir.path().join(".checkpoint-200.tmp")).unwrap();
        fs::create_dir(dir.path().join("checkpoint-last")).unwrap();
        fs::write(dir.path().join("checkpoint-7"), "a file, not a checkpoint").unwrap();
        let steps: Vec<u64> = run.checkpoints().into_iter().map(|(s, _)| s).collect();
        assert_eq!(steps, vec![3, 20, 100]);
        assert_eq!(run.latest_checkpoint().unwrap(), run.checkpoint(100));
        assert_eq!(
            run.checkpoints_beyond_limit(1),
            vec![run.checkpoint(3), run.checkpoint(20)]
        );
        assert!(run.checkpoints_beyond_limit(5).is_empty());
    }
}
