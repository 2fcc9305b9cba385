//! Distributed training on CPU with Gloo, multi-process (`harness = false`): the test binary re-executes
//! itself as training workers (role `FT_TRAIN_WORKER`) with the torchrun environment (RANK, WORLD_SIZE,
//! LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), each calling `ferrotune_train::run`.
//!
//! The reference is the single-process recipe (itself checked against transformers + PEFT by the golden
//! loss test) with the same global batch: world 2 × per-device 3 == world 1 × per-device 6, same
//! accumulation. For every strategy, LoRA and full fine-tuning: equal losses and final weights (1e-5), and
//! every rank reports the single process's final evaluation (the ranks split the validation batches).
//! A SHARDED_STATE_DICT checkpoint of a world-2 run resumes at world 1 and at world 3 and ends where the
//! uninterrupted world-2 run ends (1e-5). HYBRID_SHARD runs on two "nodes" of two ranks (world 4) against
//! one process with batch 12, and its sharded checkpoint (written once, by the first node) resumes in one
//! process.
//!
//! bf16 mixed precision (full fine-tuning, fp32 master shards): world 2 for every strategy against the
//! single-process bf16 recipe (tolerances from bf16 rounding, see [`bf16_master_shards`]), the saved fp32
//! masters against the single process's (also freeze fine-tuning, and a FULL_STATE_DICT checkpoint resumed
//! by one process), and a sharded bf16 checkpoint resumed at world 2 (exact) and world 1. fp16 (dynamic
//! loss scaling, LoRA on an f16 base): world 2 against one process, and overflowing steps skipped by all
//! ranks together.

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

const ROLE: &str = "FT_TRAIN_WORKER";
const TOL: f64 = 1e-5;

fn main() {
    if let Ok(cfg) = std::env::var(ROLE) {
        worker(&cfg);
        return;
    }
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let cases: [(&str, fn()); 9] = [
        ("lora_every_strategy_matches_one_process", || {
            strategies_match(FinetuningType::Lora)
        }),
        ("full_every_strategy_matches_one_process", || {
            strategies_match(FinetuningType::Full)
        }),
        (
            "sharded_checkpoint_resumes_at_world_1_and_3",
            sharded_resume,
        ),
        (
            "full_state_dict_checkpoint_is_single_process_layout",
            full_state_dict,
        ),
        (
            "hybrid_shard_two_nodes_matches_one_process_and_resumes",
            hybrid_two_nodes,
        ),
        (
            "lora_from_scratch_full_state_dict_resumes_exactly",
            lora_scratch_resume,
        ),
        ("bf16_master_shards_match_one_process", bf16_master_shards),
        (
            "bf16_sharded_checkpoint_resumes_with_fp32_masters",
            bf16_sharded_resume,
        ),
        ("fp16_loss_scaling_matches_one_process", fp16_loss_scaling),
    ];
    let mut failed = 0;
    for (name, case) in cases {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let start = Instant::now();
        let ok = std::panic::catch_unwind(case).is_ok();
        println!(
            "test {name} ... {} ({:.2}s)",
            if ok { "ok" } else { "FAILED" },
            start.elapsed().as_secs_f64()
        );
        failed += usize::from(!ok);
    }
    if failed > 0 {
        eprintln!("{failed} test(s) failed");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------- worker side

/// 30 samples of 6..14 tokens (vocab 96), the first two of each masked (a "prompt"); the workers train on
/// the first 24 and evaluate on the last 6.
fn samples() -> Vec<Sample> {
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

fn worker(cfg_json: &str) {
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

fn tiny_model(dir: &Path) -> PathBuf {
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

fn base_config(model: &Path, out: &Path, ft: FinetuningType) -> TrainConfig {
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `cfg` on `world` ranks (world 1: one process, without the distributed environment unless
/// `force_env`); panics with the workers' output when one fails.
fn launch(cfg: &TrainConfig, world: usize, force_env: bool) {
    launch_nodes(cfg, world, world, force_env)
}

/// [`launch`] with the ranks split into nodes of `per_node` (LOCAL_RANK = rank mod per_node).
fn launch_nodes(cfg: &TrainConfig, world: usize, per_node: usize, force_env: bool) {
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

fn losses(out: &Path) -> Vec<f64> {
    serde_json::from_str(&std::fs::read_to_string(out.join("losses-0.json")).unwrap()).unwrap()
}

/// The final evaluation (loss, accuracy, tokens) every rank reported.
fn evals(out: &Path) -> Vec<Vec<f64>> {
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
fn assert_same_eval(what: &str, out: &Path, reference: &Path) {
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

fn weights(dir: &Path) -> BTreeMap<String, Tensor> {
    let f = ["adapter_model.safetensors", "model.safetensors"]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("no weights in {}", dir.display()));
    Tensor::read_safetensors(&f).unwrap().into_iter().collect()
}

fn assert_close_losses(what: &str, a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len(), "{what}: {a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= TOL, "{what}: losses {a:?} vs {b:?}");
    }
}

fn assert_close_weights(what: &str, a: &Path, b: &Path) {
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

fn strategies_match(ft: FinetuningType) {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let reference = tmp.path().join("single");
    let mut single = base_config(&model, &reference, ft);
    single.per_device_train_batch_size = 6;
    launch(&single, 1, false);
    let want = losses(&reference);
    assert_eq!(want.len(), 3);
    for (name, strategy) in [
        ("NO_SHARD", ShardingStrategy::NoShard),
        ("SHARD_GRAD_OP", ShardingStrategy::ShardGradOp),
        ("FULL_SHARD", ShardingStrategy::FullShard),
        ("HYBRID_SHARD", ShardingStrategy::HybridShard),
    ] {
        if strategy == ShardingStrategy::HybridShard && ft == FinetuningType::Full {
            continue;
        }
        let out = tmp.path().join(name);
        let mut cfg = base_config(&model, &out, ft);
        cfg.parallel.strategy = strategy;
        cfg.parallel.bucket_cap_mb = 0.004; // several buckets even for this tiny model
        launch(&cfg, 2, false);
        let what = format!("{ft:?} {name} world 2");
        assert_close_losses(&what, &losses(&out), &want);
        assert_close_weights(&what, &out, &reference);
        assert_same_eval(&what, &out, &reference);
    }
}

fn sharded_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let full_run = tmp.path().join("world2");
    let mut cfg = base_config(&model, &full_run, FinetuningType::Full);
    cfg.parallel.strategy = ShardingStrategy::FullShard;
    cfg.parallel.checkpoint_type = CheckpointType::ShardedStateDict;
    cfg.max_steps = Some(4);
    cfg.save_steps = 2;
    launch(&cfg, 2, false);
    let want = losses(&full_run);
    let ck = full_run.join("checkpoint-2");
    assert!(
        ck.join("shard-00000-of-00002.safetensors").is_file()
            && ck.join("shard-00001-of-00002.safetensors").is_file()
            && ck.join("dist_state.json").is_file(),
        "sharded checkpoint layout"
    );
    for (world, bs) in [(1usize, 6usize), (3, 2)] {
        let out = tmp.path().join(format!("resumed-{world}"));
        let mut c = cfg.clone();
        c.output_dir = out.clone();
        c.per_device_train_batch_size = bs;
        c.resume_from_checkpoint = Some(ck.display().to_string());
        launch(&c, world, true);
        let what = format!("world 2 → checkpoint-2 → world {world}");
        assert_close_losses(&what, &losses(&out), &want[2..]);
        assert_close_weights(&what, &out, &full_run);
    }
}

fn full_state_dict() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let out = tmp.path().join("fsd");
    // Full fine-tuning: a from-scratch LoRA checkpoint would not hold the (random) base it adapts.
    let mut cfg = base_config(&model, &out, FinetuningType::Full);
    cfg.parallel.strategy = ShardingStrategy::FullShard;
    cfg.max_steps = Some(4);
    cfg.save_steps = 2;
    launch(&cfg, 2, false);
    let want = losses(&out);
    // The FULL_STATE_DICT checkpoint is the single-process layout: the single-process recipe resumes it.
    let ck = out.join("checkpoint-2");
    assert!(ck.join("model.safetensors").is_file() && ck.join("optimizer.safetensors").is_file());
    let resumed = tmp.path().join("single-resumed");
    let mut c = cfg.clone();
    c.output_dir = resumed.clone();
    c.per_device_train_batch_size = 6;
    c.resume_from_checkpoint = Some(ck.display().to_string());
    launch(&c, 1, false);
    assert_close_losses(
        "FULL_STATE_DICT resumed in one process",
        &losses(&resumed),
        &want[2..],
    );
    assert_close_weights("FULL_STATE_DICT resumed in one process", &resumed, &out);
}

fn hybrid_two_nodes() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    for ft in [FinetuningType::Lora, FinetuningType::Full] {
        let reference = tmp.path().join(format!("single-{ft:?}"));
        let mut single = base_config(&model, &reference, ft);
        single.per_device_train_batch_size = 12;
        let out = tmp.path().join(format!("hybrid-{ft:?}"));
        let mut cfg = base_config(&model, &out, ft);
        cfg.parallel.strategy = ShardingStrategy::HybridShard;
        if ft == FinetuningType::Full {
            cfg.max_steps = Some(4);
            cfg.save_steps = 2;
            cfg.parallel.checkpoint_type = CheckpointType::ShardedStateDict;
            single.max_steps = Some(4);
        }
        launch(&single, 1, false);
        launch_nodes(&cfg, 4, 2, false);
        let want = losses(&reference);
        let what = format!("{ft:?} HYBRID_SHARD 2 nodes × 2 ranks");
        assert_close_losses(&what, &losses(&out), &want);
        assert_close_weights(&what, &out, &reference);
        assert_same_eval(&what, &out, &reference);
        if ft == FinetuningType::Lora {
            continue;
        }
        // One copy of the shards (the first node's), then a resume in one process.
        let ck = out.join("checkpoint-2");
        let mut names: Vec<String> = std::fs::read_dir(&ck)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("shard-"))
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "shard-00000-of-00002.safetensors",
                "shard-00001-of-00002.safetensors"
            ]
        );
        let resumed = tmp.path().join("hybrid-resumed");
        let mut c = cfg.clone();
        c.output_dir = resumed.clone();
        c.per_device_train_batch_size = 12;
        c.resume_from_checkpoint = Some(ck.display().to_string());
        launch(&c, 1, true);
        let what = "HYBRID_SHARD checkpoint-2 → world 1";
        assert_close_losses(what, &losses(&resumed), &want[2..]);
        assert_close_weights(what, &resumed, &out);
    }
}

/// A LoRA checkpoint holds only the adapter: resuming a `train_from_scratch` LoRA run (FULL_STATE_DICT
/// from world 2, then one process) must rebuild the same random base and end where the uninterrupted run
/// ends.
fn lora_scratch_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let out = tmp.path().join("lora");
    let mut cfg = base_config(&model, &out, FinetuningType::Lora);
    cfg.parallel.strategy = ShardingStrategy::FullShard;
    cfg.max_steps = Some(4);
    cfg.save_steps = 2;
    launch(&cfg, 2, false);
    let want = losses(&out);
    let resumed = tmp.path().join("lora-resumed");
    let mut c = cfg.clone();
    c.output_dir = resumed.clone();
    c.per_device_train_batch_size = 6;
    c.resume_from_checkpoint = Some(out.join("checkpoint-2").display().to_string());
    launch(&c, 1, false);
    let what = "LoRA from scratch: checkpoint-2 → one process";
    assert_close_losses(what, &losses(&resumed), &want[2..]);
    assert_close_weights(what, &resumed, &out);
}

// ---------------------------------------------------------------- bf16 mixed precision

/// bf16 mixed-precision tolerances. The distributed run sums per-rank bf16 gradients in fp32 where the
/// single process accumulates one bf16 gradient of the whole micro-batch, so gradients agree to bf16
/// rounding, not bit for bit:
/// * losses: relative 1e-2. The forward runs in bf16 (8-bit significand, 2^-9 ≈ 2e-3 relative rounding
///   per op); the same weights give losses far closer than 1 %, a wrong update or batch does not.
/// * fp32 masters: AdamW moves each element by ≈ lr·m̂/√v̂, insensitive to the gradient's scale, so a
///   gradient off by bf16 rounding moves most elements by a tiny fraction of lr (1e-3 here; measured:
///   about half of them within 1e-6). Elements whose gradient is near zero (a sum that cancels) can flip
///   the sign of an early update and differ by a sizeable part of lr, so no max bound is meaningful; what
///   is asserted is that fewer than 1 % of all master elements differ by more than 3e-5 = 3 % of lr
///   (measured ≈ 0.2 %); a missed step, a bf16 master or a wrong batch moves nearly all of them.
/// * bf16 weights: every weight is exactly its master's rounding (asserted), so two weights are within
///   `|Δmaster| + 1 ulp`; fewer than 1 % of elements may exceed 3e-5 + 1 bf16 ulp.
const BF16_LOSS_REL: f64 = 1e-2;
const BF16_MASTER_ABS: f64 = 3e-5;
const BF16_OUTLIERS: f64 = 0.01;

fn bf16_config(model: &Path, out: &Path) -> TrainConfig {
    let mut c = base_config(model, out, FinetuningType::Full);
    c.bf16 = true;
    c
}

fn assert_losses_rel(what: &str, a: &[f64], b: &[f64], rel: f64) {
    assert_eq!(a.len(), b.len(), "{what}: {a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        assert!(
            (x - y).abs() <= rel * y.abs(),
            "{what}: losses {a:?} vs {b:?}"
        );
    }
}

/// How many elements of `a` and `b` differ by more than `abs` plus `ulps` bf16 units in the last place
/// (of the larger magnitude).
fn count_beyond(a: &Tensor, b: &Tensor, abs: f64, ulps: f64) -> i64 {
    let (a, b) = (a.to_kind(tch::Kind::Double), b.to_kind(tch::Kind::Double));
    let mag = a.abs().maximum(&b.abs()).clamp_min(1e-30);
    // bf16 keeps 7 fraction bits: ulp(x) = 2^(floor(log2 |x|) - 7).
    let ulp = (mag.log2().floor() - 7.0).exp2();
    (&a - &b)
        .abs()
        .gt_tensor(&(ulp * ulps + abs))
        .sum(tch::Kind::Int64)
        .int64_value(&[])
}

/// The per-parameter fp32 masters of a checkpoint: `master.<param>` of `optimizer.safetensors`
/// (single process, FULL_STATE_DICT) or the concatenated `param.<unit>` chunks of a sharded one.
fn masters(ck: &Path) -> BTreeMap<String, Tensor> {
    let ds = ck.join("dist_state.json");
    if ck.join("optimizer.safetensors").is_file() {
        let opt: BTreeMap<String, Tensor> =
            Tensor::read_safetensors(ck.join("optimizer.safetensors"))
                .unwrap()
                .into_iter()
                .collect();
        return opt
            .into_iter()
            .filter_map(|(k, t)| k.strip_prefix("master.").map(|n| (n.to_string(), t)))
            .collect();
    }
    let ds: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ds).unwrap()).unwrap();
    // The shard group's size (HYBRID_SHARD: the ranks per node), else the world size.
    let world = ds["shards"].as_u64().or(ds["world_size"].as_u64()).unwrap() as usize;
    let shards: Vec<BTreeMap<String, Tensor>> = (0..world)
        .map(|r| {
            let f = ck.join(format!("shard-{r:05}-of-{world:05}.safetensors"));
            Tensor::read_safetensors(f).unwrap().into_iter().collect()
        })
        .collect();
    let mut out = BTreeMap::new();
    for l in ds["layouts"].as_array().unwrap() {
        let key = format!("param.{}", l["key"].as_str().unwrap());
        let parts: Vec<Tensor> = shards.iter().map(|s| s[&key].shallow_clone()).collect();
        let flat = Tensor::cat(&parts, 0);
        for p in l["params"].as_array().unwrap() {
            let shape: Vec<i64> = p["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_i64().unwrap())
                .collect();
            let n: i64 = shape.iter().product();
            let t = flat
                .narrow(0, p["offset"].as_i64().unwrap(), n)
                .reshape(shape.as_slice());
            out.insert(p["name"].as_str().unwrap().to_string(), t);
        }
    }
    out
}

/// The bf16 run in `out` (final weights, last checkpoint `ck`) against the reference in `reference`:
/// its masters are fp32, its weights are exactly their bf16 rounding, and both are close to the
/// reference's (see [`BF16_MASTER_ABS`]).
fn assert_bf16_run(what: &str, out: &Path, ck: &Path, reference: &Path, ref_ck: &Path) {
    let (w, w_ref) = (weights(out), weights(reference));
    let (m, m_ref) = (masters(ck), masters(ref_ck));
    assert_eq!(
        w.keys().collect::<Vec<_>>(),
        w_ref.keys().collect::<Vec<_>>(),
        "{what}"
    );
    assert_eq!(
        m.keys().collect::<Vec<_>>(),
        m_ref.keys().collect::<Vec<_>>(),
        "{what}: one fp32 master per trained weight"
    );
    let (mut off_grid, mut total, mut master_out, mut weight_out, mut close) = (0, 0, 0, 0, 0);
    let mut worst = 0.0f64;
    for (k, wt) in &w {
        assert_eq!(
            wt.kind(),
            tch::Kind::BFloat16,
            "{what}: `{k}` is saved in bf16"
        );
        let Some(mt) = m.get(k) else {
            // Frozen (freeze fine-tuning): the bf16 cast of the same initial weight.
            assert!(wt.equal(&w_ref[k]), "{what}: frozen `{k}` changed");
            continue;
        };
        assert_eq!(
            mt.kind(),
            tch::Kind::Float,
            "{what}: master of `{k}` is fp32"
        );
        assert!(
            mt.to_kind(tch::Kind::BFloat16).equal(wt),
            "{what}: `{k}` is not the bf16 rounding of its master"
        );
        off_grid += mt
            .ne_tensor(&mt.to_kind(tch::Kind::BFloat16).to_kind(tch::Kind::Float))
            .sum(tch::Kind::Int64)
            .int64_value(&[]);
        total += mt.numel() as i64;
        master_out += count_beyond(mt, &m_ref[k], BF16_MASTER_ABS, 0.0);
        close += mt.numel() as i64 - count_beyond(mt, &m_ref[k], 1e-6, 0.0);
        weight_out += count_beyond(wt, &w_ref[k], BF16_MASTER_ABS, 1.0);
        worst = worst.max((mt - &m_ref[k]).abs().max().double_value(&[]));
    }
    let frac = |n: i64| n as f64 / total as f64;
    println!(
        "{what}: {total} master elements, {:.1} % within 1e-6 of the reference, {:.2} % beyond {BF16_MASTER_ABS} (max {worst:.2e}); weights beyond {BF16_MASTER_ABS} + 1 ulp: {:.2} %",
        100.0 * frac(close),
        100.0 * frac(master_out),
        100.0 * frac(weight_out)
    );
    assert!(
        frac(master_out) < BF16_OUTLIERS,
        "{what}: {master_out} of {total} master elements differ by more than {BF16_MASTER_ABS}"
    );
    assert!(
        frac(weight_out) < BF16_OUTLIERS,
        "{what}: {weight_out} of {total} weights differ by more than {BF16_MASTER_ABS} + 1 bf16 ulp"
    );
    // Random-initialised weights moved by AdamW are almost never bf16 numbers: a master that is (mostly)
    // on the bf16 grid would be a bf16 master.
    assert!(
        off_grid * 2 > total,
        "{what}: only {off_grid} of {total} master elements carry more than bf16 precision"
    );
}

fn bf16_master_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let reference = tmp.path().join("single");
    let mut single = bf16_config(&model, &reference);
    single.per_device_train_batch_size = 6;
    launch(&single, 1, false);
    let want = losses(&reference);
    assert_eq!(want.len(), 3);
    let ref_ck = reference.join("checkpoint-3");
    for (name, strategy, ck_type) in [
        // NO_SHARD writes a FULL_STATE_DICT checkpoint (masters as `master.<param>`), the others sharded.
        (
            "NO_SHARD",
            ShardingStrategy::NoShard,
            CheckpointType::FullStateDict,
        ),
        (
            "SHARD_GRAD_OP",
            ShardingStrategy::ShardGradOp,
            CheckpointType::ShardedStateDict,
        ),
        (
            "FULL_SHARD",
            ShardingStrategy::FullShard,
            CheckpointType::ShardedStateDict,
        ),
    ] {
        let out = tmp.path().join(name);
        let mut cfg = bf16_config(&model, &out);
        cfg.parallel.strategy = strategy;
        cfg.parallel.checkpoint_type = ck_type;
        cfg.parallel.bucket_cap_mb = 0.004;
        cfg.save_steps = 2;
        launch(&cfg, 2, false);
        let what = format!("bf16 {name} world 2");
        let got = losses(&out);
        assert_losses_rel(&what, &got, &want, BF16_LOSS_REL);
        assert_bf16_run(&what, &out, &out.join("checkpoint-3"), &reference, &ref_ck);
        if ck_type == CheckpointType::FullStateDict {
            // The single-process recipe resumes the FULL_STATE_DICT checkpoint with its fp32 masters
            // (`master.<param>`; masters rebuilt from the bf16 weights are off by up to half a bf16 ulp:
            // measured, a quarter of the elements beyond BF16_MASTER_ABS).
            let resumed = tmp.path().join("single-resumed");
            let mut c = cfg.clone();
            c.output_dir = resumed.clone();
            c.per_device_train_batch_size = 6;
            c.resume_from_checkpoint = Some(out.join("checkpoint-2").display().to_string());
            launch(&c, 1, false);
            let what = "bf16 FULL_STATE_DICT world 2 → one process";
            assert_losses_rel(what, &losses(&resumed), &got[2..], BF16_LOSS_REL);
            let ck = resumed.join("checkpoint-3");
            assert_bf16_run(what, &resumed, &ck, &out, &out.join("checkpoint-3"));
        }
    }
    // Freeze fine-tuning (layer 0 and the embeddings frozen, bf16, sharded with their units) at FULL_SHARD.
    let freeze = |c: &mut TrainConfig| {
        c.finetuning_type = FinetuningType::Freeze;
        c.num_freeze_layers = Some(1);
    };
    let reference = tmp.path().join("freeze-single");
    let mut single = bf16_config(&model, &reference);
    freeze(&mut single);
    single.per_device_train_batch_size = 6;
    launch(&single, 1, false);
    let out = tmp.path().join("freeze-FULL_SHARD");
    let mut cfg = bf16_config(&model, &out);
    freeze(&mut cfg);
    cfg.parallel.strategy = ShardingStrategy::FullShard;
    cfg.parallel.checkpoint_type = CheckpointType::ShardedStateDict;
    launch(&cfg, 2, false);
    let what = "bf16 freeze FULL_SHARD world 2";
    assert_losses_rel(what, &losses(&out), &losses(&reference), BF16_LOSS_REL);
    let ref_ck = reference.join("checkpoint-3");
    assert_bf16_run(what, &out, &out.join("checkpoint-3"), &reference, &ref_ck);
}

fn bf16_sharded_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let full_run = tmp.path().join("world2");
    let mut cfg = bf16_config(&model, &full_run);
    cfg.parallel.strategy = ShardingStrategy::FullShard;
    cfg.parallel.checkpoint_type = CheckpointType::ShardedStateDict;
    cfg.max_steps = Some(4);
    cfg.save_steps = 2;
    launch(&cfg, 2, false);
    let want = losses(&full_run);
    let ck = full_run.join("checkpoint-2");
    let end = full_run.join("checkpoint-4");
    // Same world size: the fp32 masters and moments come back exactly, so the run continues bit for bit
    // (masters rebuilt from the bf16 weights would be off by up to half a bf16 ulp).
    let out = tmp.path().join("resumed-2");
    let mut c = cfg.clone();
    c.output_dir = out.clone();
    c.resume_from_checkpoint = Some(ck.display().to_string());
    launch(&c, 2, false);
    let what = "bf16 world 2 → checkpoint-2 → world 2";
    assert_close_losses(what, &losses(&out), &want[2..]);
    assert_close_weights(what, &out, &full_run);
    let (a, b) = (masters(&out.join("checkpoint-4")), masters(&end));
    for (k, t) in &a {
        let d = (t - &b[k]).abs().max().double_value(&[]);
        assert!(d <= TOL, "{what}: master of `{k}` differs by {d}");
    }
    // World 1 (one process, the same global batch): re-sharded masters; its own steps round like the
    // single process, so within the bf16 tolerances.
    let out = tmp.path().join("resumed-1");
    let mut c = cfg.clone();
    c.output_dir = out.clone();
    c.per_device_train_batch_size = 6;
    c.resume_from_checkpoint = Some(ck.display().to_string());
    launch(&c, 1, true);
    let what = "bf16 world 2 → checkpoint-2 → world 1";
    assert_losses_rel(what, &losses(&out), &want[2..], BF16_LOSS_REL);
    assert_bf16_run(what, &out, &out.join("checkpoint-4"), &full_run, &end);
}

// ---------------------------------------------------------------- fp16 dynamic loss scaling

/// fp16 LoRA keeps the f16 frozen base and fp32 adapters of the single process; the ranks compute the same
/// rows on the same f16 base as the one process, so the losses agree far closer than one f16 rounding
/// (2^-11 ≈ 5e-4 relative; measured ≈ 1e-6): 1e-4 relative. The fp32 adapters stay within 1e-5.
const FP16_LOSS_REL: f64 = 1e-4;

/// fp16 (dynamic loss scaling) at world 2, NO_SHARD and FULL_SHARD, against one process; then steps that
/// overflow are skipped by all ranks together and as often as by one process.
fn fp16_loss_scaling() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let fp16 = |out: &Path| {
        let mut c = base_config(&model, out, FinetuningType::Lora);
        c.fp16 = true;
        c.max_steps = Some(6);
        c.save_steps = 2;
        c.parallel.checkpoint_type = CheckpointType::ShardedStateDict;
        c
    };
    let reference = tmp.path().join("single");
    let mut single = fp16(&reference);
    single.per_device_train_batch_size = 6;
    launch(&single, 1, false);
    let want = losses(&reference);
    let mut world2 = None;
    for (name, strategy) in [
        ("NO_SHARD", ShardingStrategy::NoShard),
        ("FULL_SHARD", ShardingStrategy::FullShard),
    ] {
        let out = tmp.path().join(name);
        let mut cfg = fp16(&out);
        cfg.parallel.strategy = strategy;
        launch(&cfg, 2, false);
        let what = format!("fp16 LoRA {name} world 2");
        let got = losses(&out);
        assert_eq!(
            got.len(),
            6,
            "{what}: no step overflows at the default scale"
        );
        assert_losses_rel(&what, &got, &want, FP16_LOSS_REL);
        assert_close_weights(&what, &out, &reference);
        world2 = Some((cfg, out));
    }
    // Overflow: resume checkpoint-2 of the FULL_SHARD run with a loss scale so large that the f16 base's
    // activation gradients overflow; every rank must skip those steps together (a rank that stepped alone
    // would desynchronise the collectives) and as often as one process does.
    let (cfg, out) = world2.unwrap();
    let ck = out.join("checkpoint-2");
    let ts_path = ck.join("trainer_state.json");
    let mut ts: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ts_path).unwrap()).unwrap();
    ts["loss_scaler"]["scale"] = serde_json::json!(2f64.powi(22));
    std::fs::write(&ts_path, ts.to_string()).unwrap();
    let mut runs: Vec<Vec<f64>> = Vec::new();
    for (world, bs) in [(2usize, 3usize), (1, 6)] {
        let o = tmp.path().join(format!("overflow-{world}"));
        let mut c = cfg.clone();
        c.output_dir = o.clone();
        c.per_device_train_batch_size = bs;
        c.resume_from_checkpoint = Some(ck.display().to_string());
        launch(&c, world, true);
        runs.push(losses(&o));
    }
    // Scales 2^22 and 2^21 overflow (skipped, halved), 2^20 does not: 2 of the 4 resumed steps update.
    assert!(
        !runs[0].is_empty() && runs[0].len() < 4,
        "fp16 overflow: expected some skipped and some applied steps, got losses {:?}",
        runs[0]
    );
    assert_losses_rel(
        "fp16 overflow world 2 vs world 1",
        &runs[0],
        &runs[1],
        FP16_LOSS_REL,
    );
}
