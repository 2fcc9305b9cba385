//! Golden-loss recipe test (torchtune style): a tiny fixed Llama, a fixed LoRA adapter to start from and
//! fixed tokenized samples (all made by tests/oracle/train_golden.py from seeds), 6 optimizer steps of the
//! LoRA SFT recipe with gradient accumulation, weight decay, clipping and a warmup schedule.
//!
//! * the losses equal the committed golden list (tests/golden/train_lora_6steps.json) within 1e-5;
//! * the same run in transformers + PEFT + torch.optim.AdamW, on the micro-batches this test exports,
//!   gives the same losses within 1e-4, and the trained adapters agree.
//!
//! The golden list was produced by the oracle (`FERROTUNE_REGEN_GOLDEN=1` rewrites it from the Python run).

use ferrotune_core::testkit::{run_oracle, workspace_root};
use ferrotune_core::train_config::{FinetuningType, SchedulerType, TrainConfig};
use ferrotune_core::DeviceSpec;
use ferrotune_train::batches::{epoch_batches, Sample};
use ferrotune_train::TrainData;
use serde_json::Value;
use std::path::Path;

fn hparams(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("hparams.json")).unwrap()).unwrap()
}

fn config(dir: &Path, hp: &Value) -> TrainConfig {
    let f = |k: &str| hp[k].as_f64().unwrap();
    let u = |k: &str| hp[k].as_u64().unwrap();
    TrainConfig {
        model_name_or_path: dir.join("base"),
        adapter_name_or_path: Some(dir.join("adapter")),
        finetuning_type: FinetuningType::Lora,
        dataset: vec!["fixed".into()],
        per_device_train_batch_size: u("per_device_train_batch_size") as usize,
        gradient_accumulation_steps: u("gradient_accumulation_steps") as usize,
        learning_rate: f("learning_rate"),
        weight_decay: f("weight_decay"),
        adam_beta1: f("adam_beta1"),
        adam_beta2: f("adam_beta2"),
        adam_epsilon: f("adam_epsilon"),
        max_grad_norm: f("max_grad_norm"),
        max_steps: Some(u("max_steps")),
        warmup_steps: Some(u("warmup_steps")),
        lr_scheduler_type: SchedulerType::Linear,
        logging_steps: 1,
        save_steps: 0,
        output_dir: dir.join("out"),
        seed: 11,
        device: DeviceSpec::Cpu,
        num_threads: Some(1),
        ..Default::default()
    }
}

fn losses_of(v: &Value) -> Vec<f64> {
    v["losses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn lora_sft_six_steps_match_golden_and_peft() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    run_oracle("train_golden.py", &["make", dir.to_str().unwrap()]);
    let hp = hparams(dir);
    let cfg = config(dir, &hp);
    let samples: Vec<Sample> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("samples.json")).unwrap()).unwrap();

    // Export the exact micro-batches the recipe will see (epoch 0's seeded order), grouped per step.
    let micro = epoch_batches(
        &samples,
        cfg.per_device_train_batch_size,
        cfg.seed,
        0,
        true,
        0,
    );
    let steps: Vec<_> = micro.chunks(cfg.gradient_accumulation_steps).collect();
    assert_eq!(steps.len() as u64, cfg.max_steps.unwrap());
    let batches_path = dir.join("batches.json");
    std::fs::write(&batches_path, serde_json::to_string(&steps).unwrap()).unwrap();

    let summary = ferrotune_train::run(
        &cfg,
        TrainData {
            train: samples,
            val: vec![],
            pad_id: 0,
            tokenizer_vocab: None,
        },
    )
    .unwrap();
    let ours = summary.losses;
    assert_eq!(ours.len(), 6, "{ours:?}");

    let py: Value = serde_json::from_str(
        run_oracle(
            "train_golden.py",
            &["run", dir.to_str().unwrap(), batches_path.to_str().unwrap()],
        )
        .trim(),
    )
    .unwrap();
    let theirs = losses_of(&py);
    let golden_path = workspace_root().join("tests/golden/train_lora_6steps.json");
    if std::env::var_os("FERROTUNE_REGEN_GOLDEN").is_some() {
        let text = serde_json::to_string_pretty(&serde_json::json!({
            "produced_by": "tests/oracle/train_golden.py (transformers + PEFT), via FERROTUNE_REGEN_GOLDEN=1 cargo test -p ferrotune-train --test golden_loss",
            "losses": theirs,
        }))
        .unwrap();
        std::fs::write(&golden_path, text).unwrap();
    }
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(&golden_path).unwrap()).unwrap();
    let golden = losses_of(&golden);
    for (i, ((o, t), g)) in ours.iter().zip(&theirs).zip(&golden).enumerate() {
        assert!(
            (o - g).abs() < 1e-5,
            "step {i}: ferrotune {o} vs golden {g}\nours {ours:?}\ngolden {golden:?}"
        );
        assert!(
            (o - t).abs() < 1e-4,
            "step {i}: ferrotune {o} vs PEFT {t}\nours {ours:?}\nPEFT {theirs:?}"
        );
    }
    // The weights must actually move (the test would be vacuous on a frozen adapter).
    let init: std::collections::HashMap<String, tch::Tensor> =
        tch::Tensor::read_safetensors(dir.join("adapter/adapter_model.safetensors"))
            .unwrap()
            .into_iter()
            .collect();

    // The trained adapters agree too.
    let a = tch::Tensor::read_safetensors(dir.join("out/adapter_model.safetensors")).unwrap();
    let b: std::collections::HashMap<String, tch::Tensor> =
        tch::Tensor::read_safetensors(dir.join("python_adapter_out/adapter_model.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(a.len(), b.len());
    for (k, t) in &a {
        let u = b
            .get(k)
            .unwrap_or_else(|| panic!("PEFT adapter lacks `{k}`"));
        let diff = (t - u).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "`{k}` differs by {diff}");
        let moved = (t - &init[k]).abs().max().double_value(&[]);
        assert!(moved > 1e-3, "`{k}` did not train (moved {moved})");
    }
}
