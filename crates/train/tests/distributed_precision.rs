//! Distributed mixed precision on CPU with Gloo, multi-process (see `dist_harness`). bf16 (full fine-tuning,
//! fp32 master shards): world 2 for every strategy, and HYBRID_SHARD on two "nodes" of two ranks, against
//! the single-process bf16 recipe (tolerances from bf16 rounding, see [`BF16_LOSS_REL`]), the saved fp32
//! masters against the single process's (also freeze fine-tuning, and a FULL_STATE_DICT checkpoint resumed
//! by one process), and a sharded bf16 checkpoint resumed at world 2 (exact) and world 1. fp16 (dynamic loss
//! scaling, LoRA on an f16 base): world 2 against one process, and overflowing steps skipped by all ranks
//! together.

mod dist_harness;

use dist_harness::*;
use ferrotune_core::train_config::{CheckpointType, FinetuningType, ShardingStrategy, TrainConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::Tensor;

fn main() {
    run_cases(&[
        ("bf16_master_shards_match_one_process", bf16_master_shards),
        (
            "bf16_sharded_checkpoint_resumes_with_fp32_masters",
            bf16_sharded_resume,
        ),
        ("fp16_loss_scaling_matches_one_process", fp16_loss_scaling),
        (
            "bf16_hybrid_shard_two_nodes_matches_one_process",
            bf16_hybrid,
        ),
    ]);
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

/// The one-process bf16 reference run in `dir` with `batch` per device (the distributed runs' global batch).
fn bf16_reference(model: &Path, dir: PathBuf, batch: usize) -> PathBuf {
    let mut single = bf16_config(model, &dir);
    single.per_device_train_batch_size = batch;
    launch(&single, 1, false);
    dir
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
    let reference = bf16_reference(&model, tmp.path().join("single"), 6);
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
            let resumed = resume(
                &cfg,
                &out.join("checkpoint-2"),
                tmp.path().join("single-resumed"),
                1,
                Some(6),
                false,
            );
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
    let (cfg, want) = sharded_world2_run(bf16_config(&model, &full_run));
    let ck = full_run.join("checkpoint-2");
    let end = full_run.join("checkpoint-4");
    // Same world size: the fp32 masters and moments come back exactly, so the run continues bit for bit
    // (masters rebuilt from the bf16 weights would be off by up to half a bf16 ulp).
    let out = resume(&cfg, &ck, tmp.path().join("resumed-2"), 2, None, false);
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
    let out = resume(&cfg, &ck, tmp.path().join("resumed-1"), 1, Some(6), true);
    let what = "bf16 world 2 → checkpoint-2 → world 1";
    assert_losses_rel(what, &losses(&out), &want[2..], BF16_LOSS_REL);
    assert_bf16_run(what, &out, &out.join("checkpoint-4"), &full_run, &end);
}

/// HYBRID_SHARD (two "nodes" × two ranks) in bf16: the fp32 master shards live in the node's shard group
/// (one copy per node, the first node's checkpointed) and match one process with batch 12.
fn bf16_hybrid() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let reference = bf16_reference(&model, tmp.path().join("single"), 12);
    let out = tmp.path().join("hybrid");
    let mut cfg = bf16_config(&model, &out);
    cfg.parallel.strategy = ShardingStrategy::HybridShard;
    cfg.parallel.checkpoint_type = CheckpointType::ShardedStateDict;
    launch_nodes(&cfg, 4, 2, false);
    let what = "bf16 HYBRID_SHARD 2 nodes × 2 ranks";
    assert_losses_rel(what, &losses(&out), &losses(&reference), BF16_LOSS_REL);
    let ck = out.join("checkpoint-3");
    assert!(
        !ck.join("shard-00000-of-00004.safetensors").exists()
            && ck.join("shard-00001-of-00002.safetensors").is_file()
    );
    assert_bf16_run(what, &out, &ck, &reference, &reference.join("checkpoint-3"));
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
        let o = resume(
            &cfg,
            &ck,
            tmp.path().join(format!("overflow-{world}")),
            world,
            Some(bs),
            true,
        );
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
