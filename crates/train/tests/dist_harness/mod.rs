//! The multi-process harness of the distributed-training tests (`harness = false` binaries): a test binary
//! re-executes itself as training workers (role `FT_TRAIN_WORKER`) with the torchrun environment (RANK,
//! WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), each calling `ferrotune_train::run`
//! on a fixed synthetic dataset; the parent launches them and reads back losses, evaluations and weights.
#![allow(dead_code)] // each test binary uses its own subset

use ferrotune_core::train_config::{
    CheckpointType, FinetuningType, SchedulerType, ShardingStrategy, TrainConfig,
};
use ferrotune_core::DeviceSpec;
use ferrotune_train::{Sample, TrainData};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tch::Tensor;

pub const ROLE: &str = "FT_TRAIN_WORKER";
pub const TOL: f64 = 1e-5;

/// The test binary's `main`: a worker when the role variable is set, else the cases (see
/// `ferrotune_core::testkit::run_cases`).
pub fn run_cases(cases: &[(&str, fn())]) {
    if let Ok(cfg) = std::env::var(ROLE) {
        worker(&cfg);
        return;
    }
    ferrotune_core::testkit::run_cases(cases);
}

/// A world-2 FULL_SHARD run of `cfg` for 4 steps with SHARDED_STATE_DICT checkpoints every 2: returns the
/// config used and its losses.
pub fn sharded_world2_run(mut cfg: TrainConfig) -> (TrainConfig, Vec<f64>) {
    cfg.parallel.strategy = ShardingStrategy::FullShard;
    cfg.parallel.checkpoint_type = CheckpointType::ShardedStateDict;
    cfg.max_steps = Some(4);
    cfg.save_steps = 2;
    launch(&cfg, 2, false);
    let want = losses(&cfg.output_dir);
    (cfg, want)
}

// ---------------------------------------------------------------- worker side

/// 30 samples of 6..14 tokens (vocab 96), the first two of each masked (a "prompt"); the workers train on
/// the first 24 and evaluate on the last 6.
pub fn samples() -> Vec<Sample> {
    let mut x: u64 = 12345;
    let mut next = || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        x >> 33
    };
    (0..30)
        .map(|_| {
            let len = 6 + (next() % 9) as usize;
            let ids: Vec<i64> = (0..len).map(|_| 1 + (next() % 95) as i64).collect();
            let mut labels = ids.clone();
            labels[0] = -100;
            labels[1] = -100;
            Sample {
                input_ids: ids,
                labels,
                seq_starts: vec![],
            }
        })
        .collect()
}

pub fn worker(cfg_json: &str) {
    let cfg: TrainConfig = serde_json::from_str(cfg_json).unwrap();
    let mut train = samples();
    let val = train.split_off(24);
    let data = TrainData {
        train,
        val,
        pad_id: 0,
        tokenizer_vocab: None,
    };
    let rank = std::env::var("RANK").unwrap_or_else(|_| "0".into());
    match ferrotune_train::run(&cfg, data) {
        Ok(s) => {
            let out = cfg.output_dir.join(format!("losses-{rank}.json"));
            std::fs::write(out, serde_json::to_string(&s.losses).unwrap()).unwrap();
            let m = s
                .final_eval
                .expect("a validation split gives a final evaluation");
            let out = cfg.output_dir.join(format!("eval-{rank}.json"));
            let v = [m.loss, m.accuracy, m.tokens as f64];
            std::fs::write(out, serde_json::to_string(&v).unwrap()).unwrap();
        }
        Err(e) => {
            eprintln!("rank {rank}: {e}");
            std::process::exit(1);
        }
    }
}

// ---------------------------------------------------------------- parent side

pub fn tiny_model(dir: &Path) -> PathBuf {
    let m = dir.join("base");
    std::fs::create_dir_all(&m).unwrap();
    let cfg = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": 96, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 64, "tie_word_embeddings": false,
        "bos_token_id": 1, "eos_token_id": 2
    });
    std::fs::write(m.join("config.json"), cfg.to_string()).unwrap();
    m
}

/// A real HF checkpoint directory (`config.json` + `model.safetensors`) of the tiny model: one step of
/// full fine-tuning from its random initialisation, saved by the single-process recipe.
pub fn saved_model(dir: &Path) -> PathBuf {
    let out = dir.join("saved-base");
    let mut cfg = base_config(&tiny_model(dir), &out, FinetuningType::Full);
    cfg.max_steps = Some(1);
    launch(&cfg, 1, false);
    assert!(out.join("model.safetensors").is_file() && out.join("config.json").is_file());
    out
}

pub fn base_config(model: &Path, out: &Path, ft: FinetuningType) -> TrainConfig {
    TrainConfig {
        model_name_or_path: model.to_path_buf(),
        train_from_scratch: true,
        finetuning_type: ft,
        lora_target: vec!["all".into()],
        lora_rank: 4,
        dataset: vec!["synthetic".into()],
        per_device_train_batch_size: 3,
        per_device_eval_batch_size: 2,
        gradient_accumulation_steps: 2,
        learning_rate: 1e-3,
        weight_decay: 0.01,
        adam_epsilon: 1e-6,
        max_grad_norm: 0.5,
        max_steps: Some(3),
        lr_scheduler_type: SchedulerType::Linear,
        warmup_steps: Some(1),
        logging_steps: 1,
        save_steps: 0,
        output_dir: out.to_path_buf(),
        seed: 7,
        device: DeviceSpec::Cpu,
        num_threads: Some(1),
        ..Default::default()
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `cfg` on `world` ranks (world 1: one process, without the distributed environment unless
/// `force_env`); panics with the workers' output when one fails.
pub fn launch(cfg: &TrainConfig, world: usize, force_env: bool) {
    launch_nodes(cfg, world, world, force_env)
}

/// Resumes `cfg` from checkpoint `ck` into `out` on `world` ranks, with `batch` per device when given
/// (the same global batch on another world size); returns `out`.
pub fn resume(
    cfg: &TrainConfig,
    ck: &Path,
    out: PathBuf,
    world: usize,
    batch: Option<usize>,
    force_env: bool,
) -> PathBuf {
    let mut c = cfg.clone();
    c.output_dir = out.clone();
    if let Some(b) = batch {
        c.per_device_train_batch_size = b;
    }
    c.resume_from_checkpoint = Some(ck.display().to_string());
    launch(&c, world, force_env);
    out
}

/// [`launch`] with the ranks split into nodes of `per_node` (LOCAL_RANK = rank mod per_node).
pub fn launch_nodes(cfg: &TrainConfig, world: usize, per_node: usize, force_env: bool) {
    let port = free_port();
    let json = serde_json::to_string(cfg).unwrap();
    let children: Vec<Child> = (0..world)
        .map(|r| {
            let mut c = Command::new(std::env::current_exe().unwrap());
            c.env(ROLE, &json)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            for k in ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"] {
                c.env_remove(k);
            }
            if world > 1 || force_env {
                c.env("RANK", r.to_string())
                    .env("WORLD_SIZE", world.to_string())
                    .env("LOCAL_RANK", (r % per_node).to_string())
                    .env("LOCAL_WORLD_SIZE", per_node.to_string())
                    .env("MASTER_ADDR", "127.0.0.1")
                    .env("MASTER_PORT", port.to_string());
            }
            c.spawn().unwrap()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    for (r, mut child) in children.into_iter().enumerate() {
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "rank {r} of {world} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

pub fn losses(out: &Path) -> Vec<f64> {
    serde_json::from_str(&std::fs::read_to_string(out.join("losses-0.json")).unwrap()).unwrap()
}

/// The final evaluation (loss, accuracy, tokens) every rank reported.
pub fn evals(out: &Path) -> Vec<Vec<f64>> {
    let mut v = Vec::new();
    for r in 0.. {
        let Ok(text) = std::fs::read_to_string(out.join(format!("eval-{r}.json"))) else {
            break;
        };
        v.push(serde_json::from_str(&text).unwrap());
    }
    v
}

/// Every rank's final evaluation equals the single process's.
pub fn assert_same_eval(what: &str, out: &Path, reference: &Path) {
    let want = &evals(reference)[0];
    let got = evals(out);
    assert!(!got.is_empty(), "{what}: no evaluation");
    for (r, e) in got.iter().enumerate() {
        assert!(
            (e[0] - want[0]).abs() <= TOL && e[1] == want[1] && e[2] == want[2],
            "{what}: rank {r} eval {e:?} vs single process {want:?}"
        );
    }
}

pub fn weights(dir: &Path) -> BTreeMap<String, Tensor> {
    let f = ["adapter_model.safetensors", "model.safetensors"]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("no weights in {}", dir.display()));
    Tensor::read_safetensors(&f).unwrap().into_iter().collect()
}

pub fn assert_close_losses(what: &str, a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len(), "{what}: {a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= TOL, "{what}: losses {a:?} vs {b:?}");
    }
}

pub fn assert_close_weights(what: &str, a: &Path, b: &Path) {
    let (wa, wb) = (weights(a), weights(b));
    assert_eq!(
        wa.keys().collect::<Vec<_>>(),
        wb.keys().collect::<Vec<_>>(),
        "{what}"
    );
    let mut moved = 0.0f64;
    for (k, ta) in &wa {
        let d = (ta - &wb[k]).abs().max().double_value(&[]);
        assert!(d <= TOL, "{what}: `{k}` differs by {d}");
        moved = moved.max(ta.abs().max().double_value(&[]));
    }
    assert!(moved > 0.0, "{what}: all weights are zero");
}
