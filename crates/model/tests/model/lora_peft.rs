//! LoRA in PEFT's format, both ways, and merged checkpoints, against PEFT and transformers: a PEFT-made
//! adapter (non-default targets and rank, rsLoRA) gives PEFT's logits in ferrotune; a ferrotune adapter
//! (with modules_to_save lm_head) and a merged, sharded ferrotune checkpoint give ferrotune's logits in
//! PEFT / transformers. Also per-row adapter selection and merge/unmerge.

use crate::common::{max_abs_diff, oracle_dir, read_st, scratch};
use ferrotune_core::testkit::run_oracle;
use ferrotune_core::DType;
use ferrotune_model::{
    load_pretrained, save_pretrained, AdapterSelection, AttentionMask, LlamaForCausalLM, LoraConfig,
};
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

fn run(model: &LlamaForCausalLM, r: &HashMap<String, Tensor>) -> Tensor {
    let _g = tch::no_grad_guard();
    let m = AttentionMask::Padding(r["attention_mask"].shallow_clone());
    model.forward(&r["input_ids"], &r["position_ids"], &m, None)
}

fn randomize_adapter(model: &LlamaForCausalLM, name: &str) {
    let _g = tch::no_grad_guard();
    tch::manual_seed(11);
    for (k, mut t) in model.lora_parameters(name) {
        let noise = t.randn_like() * if k.contains("lora_B") { 0.3 } else { 0.02 };
        let v = &t + noise;
        t.copy_(&v);
    }
}

#[test]
fn peft_adapter_loads_with_peft_logits() {
    let dir = oracle_dir();
    let r = read_st(&dir.join("mha/ref.safetensors"));
    let (mut model, _vs, _) = load_pretrained(&dir.join("mha"), DType::F32, Device::Cpu).unwrap();
    let cfg = model
        .load_lora("peft", &dir.join("peft_adapter"), None)
        .unwrap();
    assert_eq!(
        (cfg.r, cfg.targets()),
        (3, vec!["k_proj", "o_proj", "up_proj"])
    );
    assert!(cfg.use_rslora);
    let want = &read_st(&dir.join("peft_adapter/ref.safetensors"))["logits_f32"];
    let d = max_abs_diff(&run(&model, &r), want, Some(&r["attention_mask"]));
    assert!(d < 1e-5, "PEFT adapter in ferrotune: max-abs {d:e}");
    // the adapter matters: the base model's logits are far away
    model.set_adapter(AdapterSelection::None);
    assert!(max_abs_diff(&run(&model, &r), want, Some(&r["attention_mask"])) > 1e-2);
}

#[test]
fn ferrotune_adapter_and_merged_checkpoint_load_in_peft_and_transformers() {
    let dir = oracle_dir();
    let inputs = dir.join("mha/ref.safetensors");
    let r = read_st(&inputs);
    let mask = &r["attention_mask"];
    let (mut model, _vs, _) = load_pretrained(&dir.join("mha"), DType::F32, Device::Cpu).unwrap();
    let base_logits = run(&model, &r);
    let mut cfg = LoraConfig::new(5, 10.0, &["q_proj", "v_proj", "gate_proj", "down_proj"]);
    cfg.modules_to_save = Some(vec!["lm_head".into()]);
    model.add_lora("mine", &cfg, 42, Kind::Float).unwrap();
    let trainable = model.trainable_parameters();
    assert_eq!(
        trainable.len(),
        2 * 4 * 2 + 1,
        "A and B of 4 targets in 2 layers + lm_head"
    );
    assert_eq!(
        max_abs_diff(&run(&model, &r), &base_logits, None),
        0.0,
        "B = 0 at init"
    );
    randomize_adapter(&model, "mine");
    let ours = run(&model, &r);

    let work = scratch("lora-roundtrip");
    let adapter = work.join("adapter");
    model.save_lora("mine", &adapter, None).unwrap();
    model.merge_lora("mine").unwrap();
    let merged = work.join("merged");
    save_pretrained(&model, &merged, None, 40_000).unwrap();
    assert!(
        merged.join("model.safetensors.index.json").is_file(),
        "a 40 kB shard limit must shard"
    );

    let jobs = serde_json::json!([
        {"model": dir.join("mha"), "adapter": adapter, "inputs": inputs, "out": work.join("peft.safetensors")},
        {"model": merged, "adapter": null, "inputs": inputs, "out": work.join("merged.safetensors")},
    ]);
    std::fs::write(work.join("jobs.json"), jobs.to_string()).unwrap();
    run_oracle(
        "model_logits.py",
        &[work.join("jobs.json").to_str().unwrap()],
    );
    let peft = &read_st(&work.join("peft.safetensors"))["logits"];
    let d = max_abs_diff(&ours, peft, Some(mask));
    assert!(d < 1e-5, "ferrotune adapter in PEFT: max-abs {d:e}");
    let hf = &read_st(&work.join("merged.safetensors"))["logits"];
    let d = max_abs_diff(&ours, hf, Some(mask));
    assert!(d < 1e-5, "merged checkpoint in transformers: max-abs {d:e}");

    // merged weights (adapter skipped) give the same logits; the sharded checkpoint reloads in ferrotune
    let d = max_abs_diff(&run(&model, &r), &ours, Some(mask));
    assert!(d < 1e-5, "merged vs adapter forward: {d:e}");
    let (reloaded, _v2, _) = load_pretrained(&merged, DType::F32, Device::Cpu).unwrap();
    assert!(max_abs_diff(&run(&reloaded, &r), &ours, Some(mask)) < 1e-5);
    // reloading our adapter gives our logits
    let (mut again, _v3, _) = load_pretrained(&dir.join("mha"), DType::F32, Device::Cpu).unwrap();
    again.load_lora("x", &adapter, None).unwrap();
    assert!(max_abs_diff(&run(&again, &r), &ours, Some(mask)) < 1e-6);
}

#[test]
fn per_row_selection_and_unmerge() {
    let dir = oracle_dir();
    let r = read_st(&dir.join("gqa/ref.safetensors"));
    let mask = &r["attention_mask"];
    let (mut model, _vs, _) = load_pretrained(&dir.join("gqa"), DType::F32, Device::Cpu).unwrap();
    let base = run(&model, &r);
    for (i, name) in ["a", "b"].iter().enumerate() {
        let cfg = LoraConfig::new(2 + i as i64, 4.0, &["all"]);
        model.add_lora(name, &cfg, i as u64, Kind::Float).unwrap();
        randomize_adapter(&model, name);
    }
    let single = |m: &LlamaForCausalLM, n: &str| {
        m.set_adapter(AdapterSelection::Single(n.into()));
        run(m, &r)
    };
    let (la, lb) = (single(&model, "a"), single(&model, "b"));
    model.set_adapter(AdapterSelection::PerRow(vec![
        Some("b".into()),
        None,
        Some("a".into()),
    ]));
    let mixed = run(&model, &r);
    let want = Tensor::stack(&[lb.get(0), base.get(1), la.get(2)], 0);
    assert!(max_abs_diff(&mixed, &want, Some(mask)) < 1e-6);
    model.set_adapter(AdapterSelection::Single("a".into()));
    model.merge_lora("a").unwrap();
    assert!(max_abs_diff(&run(&model, &r), &la, Some(mask)) < 1e-5);
    assert!(model.merge_lora("a").is_err(), "double merge is refused");
    model.unmerge_lora("a").unwrap();
    model.set_adapter(AdapterSelection::None);
    assert!(max_abs_diff(&run(&model, &r), &base, Some(mask)) < 1e-5);
    model.remove_lora("b").unwrap();
    assert_eq!(model.adapter_names(), vec!["a".to_string()]);
}
