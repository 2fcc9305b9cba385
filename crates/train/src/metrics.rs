//! `metrics.jsonl`: one JSON object per logged step (training loss) or evaluation, appended as the run goes,
//! and trimmed back to the resumed step when a run continues from a checkpoint.

use serde::{Deserialize, Serialize};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writing or reading metrics failed.
#[derive(Debug, thiserror::Error)]
#[error("metrics {}: {source}", path.display())]
pub struct MetricsError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// One line of `metrics.jsonl`. Training records carry `loss`; evaluation records carry `eval_*`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsRecord {
    pub step: u64,
    pub epoch: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_per_second: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_perplexity: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_accuracy: Option<f64>,
    /// Peak resident memory of the process so far, in MiB (CPU), as the kernel reports it (VmHWM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_memory_mib: Option<f64>,
    /// CUDA runs: peak used device memory above the run's baseline so far, in MiB (see `gpu_memory`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_gpu_memory_mib: Option<f64>,
    /// CUDA runs: libtorch's `max_memory_allocated` so far, in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_gpu_allocated_mib: Option<f64>,
    /// CUDA runs: libtorch's `max_memory_reserved` so far, in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_gpu_reserved_mib: Option<f64>,
    /// Steps skipped so far because the loss was NaN/inf.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped_steps: Option<u64>,
}

/// Appends records to a metrics file.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
}

impl MetricsLog {
    /// A log at `path`. When `keep_up_to_step` is given (resume), records after that step are dropped
    /// (atomically rewritten) so that the continued run does not duplicate them; otherwise it starts empty.
    pub fn open(path: &Path, keep_up_to_step: Option<u64>) -> Result<Self, MetricsError> {
        let err = |source| MetricsError {
            path: path.to_path_buf(),
            source,
        };
        let kept = match keep_up_to_step {
            Some(step) => read_records(path)
                .unwrap_or_default()
                .into_iter()
                .filter(|r| r.step <= step)
                .collect(),
            None => Vec::new(),
        };
        let mut text = String::new();
        for r in &kept {
            text.push_str(&serde_json::to_string(r).expect("metrics serialize"));
            text.push('\n');
        }
        ferrotune_core::write_atomic(path, text.as_bytes())
            .map_err(|e| err(std::io::Error::other(e.to_string())))?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
        })
    }

    /// Appends one record as a single line (one `write` call, flushed).
    pub fn append(&mut self, r: &MetricsRecord) -> Result<(), MetricsError> {
        let mut line = serde_json::to_string(r).expect("metrics serialize");
        line.push('\n');
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.path)
            .map_err(|source| MetricsError {
                path: self.path.clone(),
                source,
            })?;
        f.write_all(line.as_bytes()).map_err(|source| MetricsError {
            path: self.path.clone(),
            source,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads every record of a metrics file (a truncated last line is ignored).
pub fn read_records(path: &Path) -> Result<Vec<MetricsRecord>, MetricsError> {
    let text = std::fs::read_to_string(path).map_err(|source| MetricsError {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`), if known.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_and_trims_on_resume() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.jsonl");
        let mut log = MetricsLog::open(&p, None).unwrap();
        for step in 1..=4 {
            log.append(&MetricsRecord {
                step,
                loss: Some(step as f64),
                ..Default::default()
            })
            .unwrap();
        }
        let _ = MetricsLog::open(&p, Some(2)).unwrap();
        let steps: Vec<u64> = read_records(&p).unwrap().iter().map(|r| r.step).collect();
        assert_eq!(steps, vec![1, 2]);
        let line = std::fs::read_to_string(&p).unwrap();
        assert!(
            !line.contains("eval_loss"),
            "absent fields are omitted: {line}"
        );
        assert!(peak_rss_mib().unwrap() > 1.0);
    }
}
