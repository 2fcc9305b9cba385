//! Distributed training on CPU with Gloo, multi-process (see `dist_harness`): the reference is the
//! single-process recipe (itself checked against transformers + PEFT by the golden loss test) with the same
//! global batch: world 2 × per-device 3 == world 1 × per-device 6, same accumulation. For every strategy,
//! LoRA and full fine-tuning: equal losses and final weights (1e-5), and every rank reports the single
//! process's final evaluation (the ranks split the validation batches). A SHARDED_STATE_DICT checkpoint of a
//! world-2 run resumes at world 1 and at world 3 and ends where the uninterrupted world-2 run ends (1e-5).
//! HYBRID_SHARD runs on two "nodes" of two ranks (world 4) against one process with batch 12, and its
//! sharded checkpoint (written once, by the first node) resumes in one process. Mixed precision is in
//! `distributed_precision.rs`.

mod dist_harness;

use dist_harness::*;
use ferrotune_core::train_config::{CheckpointType, FinetuningType, ShardingStrategy};

fn main() {
    run_cases(&[
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
        ("full_shard_reads_its_shards_of_a_saved_base", unread_base),
    ]);
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
    let (cfg, want) = sharded_world2_run(base_config(&model, &full_run, FinetuningType::Full));
    let ck = full_run.join("checkpoint-2");
    assert!(
        ck.join("shard-00000-of-00002.safetensors").is_file()
            && ck.join("shard-00001-of-00002.safetensors").is_file()
            && ck.join("dist_state.json").is_file(),
        "sharded checkpoint layout"
    );
    for (world, bs) in [(1usize, 6usize), (3, 2)] {
        let out = resume(
            &cfg,
            &ck,
            tmp.path().join(format!("resumed-{world}")),
            world,
            Some(bs),
            true,
        );
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
    let resumed = resume(
        &cfg,
        &ck,
        tmp.path().join("single-resumed"),
        1,
        Some(6),
        false,
    );
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
        let resumed = resume(
            &cfg,
            &ck,
            tmp.path().join("hybrid-resumed"),
            1,
            Some(12),
            true,
        );
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
    let resumed = resume(
        &cfg,
        &out.join("checkpoint-2"),
        tmp.path().join("lora-resumed"),
        1,
        Some(6),
        false,
    );
    let what = "LoRA from scratch: checkpoint-2 → one process";
    assert_close_losses(what, &losses(&resumed), &want[2..]);
    assert_close_weights(what, &resumed, &out);
}

/// FULL_SHARD on a saved checkpoint (not a from-scratch base): each rank leaves the base unread and reads
/// only its chunks of every unit from the safetensors file; LoRA (base frozen, sharded) and full
/// fine-tuning end exactly like one process that loads the checkpoint whole, as does HYBRID_SHARD.
fn unread_base() {
    let tmp = tempfile::tempdir().unwrap();
    let base = saved_model(tmp.path());
    for ft in [FinetuningType::Lora, FinetuningType::Full] {
        let config = |out: &std::path::Path| {
            let mut c = base_config(&base, out, ft);
            c.train_from_scratch = false;
            c
        };
        let reference = tmp.path().join(format!("single-{ft:?}"));
        let mut single = config(&reference);
        single.per_device_train_batch_size = 6;
        launch(&single, 1, false);
        let want = losses(&reference);
        let out = tmp.path().join(format!("full-shard-{ft:?}"));
        let mut cfg = config(&out);
        cfg.parallel.strategy = ShardingStrategy::FullShard;
        launch(&cfg, 2, false);
        let what = format!("{ft:?} FULL_SHARD world 2 on an unread base");
        assert_close_losses(&what, &losses(&out), &want);
        assert_close_weights(&what, &out, &reference);
        assert_same_eval(&what, &out, &reference);
    }
}
