//! End-to-end tests of `ferrotune train` through the binary: exact resume after SIGKILL (LoRA and full
//! fine-tuning), metrics/plots/checkpoint files, and config errors.
//!
//! Fixture: a tokenizer trained by `ferrotune train-tokenizer` on a generated corpus, a tiny random Llama
//! saved as an HF directory, and a small alpaca dataset registered in a `dataset_info.json`.

mod toy;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ferrotune");

fn fixture(dir: &Path) -> PathBuf {
    let words = [
        "apple", "river", "stone", "cloud", "green", "seven", "orange", "music", "paper", "window",
    ];
    toy::toy_fixture(BIN, dir, &words, 48, 7)
}

fn write_config(dir: &Path, model: &Path, out: &Path, extra: &str) -> PathBuf {
    let text = format!(
        r#"model_name_or_path = "{}"
dataset = "toy"
dataset_dir = "{}"
template = "alpaca"
cutoff_len = 64
per_device_train_batch_size = 2
gradient_accumulation_steps = 2
learning_rate = 5e-3
weight_decay = 0.01
max_steps = 24
lr_scheduler_type = "cosine"
warmup_steps = 2
lora_rank = 4
lora_alpha = 8
lora_dropout = 0.1
lora_target = "all"
val_size = 4
logging_steps = 1
save_steps = 3
save_total_limit = 2
output_dir = "{}"
seed = 5
device = "cpu"
num_threads = 1
{extra}
"#,
        model.display(),
        dir.join("data").display(),
        out.display()
    );
    let p = out.with_extension("toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn train(cfg: &Path, set: &[&str]) -> std::process::Output {
    let mut c = Command::new(BIN);
    c.args(["-q", "train"]).arg(cfg);
    for s in set {
        c.args(["--set", s]);
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "ferrotune train failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Starts a run, SIGKILLs it as soon as its first checkpoint is committed, resumes with `auto`, and
/// compares the final weights file byte for byte with an uninterrupted run.
fn kill_and_resume_is_exact(extra: &str, weights: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = fixture(dir);
    let full = write_config(dir, &model, &dir.join("straight"), extra);
    train(&full, &[]);

    let cut = write_config(dir, &model, &dir.join("killed"), extra);
    let mut child = Command::new(BIN)
        .args(["-q", "train"])
        .arg(&cut)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ck = dir.join("killed/checkpoint-3");
    let t0 = Instant::now();
    while !ck.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before its first checkpoint"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !dir.join("killed").join(weights).exists(),
        "killed too late: the run had finished"
    );
    train(&cut, &["resume_from_checkpoint=auto"]);
    let a = std::fs::read(dir.join("straight").join(weights)).unwrap();
    let b = std::fs::read(dir.join("killed").join(weights)).unwrap();
    assert!(
        a == b,
        "resumed run's {weights} differs from the uninterrupted run's"
    );
    // The resumed run's metrics have one training record per step, without duplicates.
    let steps: Vec<u64> = std::fs::read_to_string(dir.join("killed/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("loss").is_some())
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=24).collect::<Vec<_>>());
    let kept: Vec<_> = std::fs::read_dir(dir.join("killed"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    assert_eq!(kept.len(), 2, "save_total_limit = 2 keeps two: {kept:?}");
}

#[test]
fn lora_resume_after_sigkill_is_bit_exact() {
    kill_and_resume_is_exact("finetuning_type = \"lora\"", "adapter_model.safetensors");
}

#[test]
fn full_resume_after_sigkill_is_bit_exact() {
    kill_and_resume_is_exact("finetuning_type = \"full\"", "model.safetensors");
}

#[test]
fn writes_metrics_plots_checkpoints_and_rejects_typos() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = fixture(dir);
    let cfg = write_config(
        dir,
        &model,
        &dir.join("run"),
        "eval_steps = 6\neval_on_start = true",
    );
    train(&cfg, &["max_steps=12"]);
    let run = dir.join("run");
    for f in [
        "resolved_config.toml",
        "metrics.jsonl",
        "trainer_state.json",
        "adapter_config.json",
        "adapter_model.safetensors",
        "checkpoint-12/optimizer.safetensors",
        "checkpoint-12/trainer_state.json",
        "checkpoint-12/scheduler.json",
        "checkpoint-12/rng_state.json",
        "checkpoint-12/adapter_model.safetensors",
    ] {
        assert!(run.join(f).is_file(), "missing {f}");
    }
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let evals: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v.get("eval_loss").is_some())
        .collect();
    assert_eq!(evals.len(), 3, "start, step 6, end: {metrics}");
    let first = evals[0]["eval_loss"].as_f64().unwrap();
    let last = evals[2]["eval_loss"].as_f64().unwrap();
    assert!(last < first, "eval loss should drop: {first} -> {last}");
    // --plot-loss writes PNGs.
    let out = Command::new(BIN)
        .args(["-q", "train"])
        .arg(&cfg)
        .args([
            "--plot-loss",
            "--set",
            "max_steps=4",
            "--set",
            "overwrite_output_dir=true",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(run.join("training_loss.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    // A typo is a usage error naming the key and the fix.
    let out = Command::new(BIN)
        .args(["train"])
        .arg(&cfg)
        .args(["--set", "learning_rat=1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did you mean `learning_rate`?"), "{err}");
}
