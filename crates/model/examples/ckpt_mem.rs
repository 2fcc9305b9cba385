//! Bench helper (tools/bench/bench-model.sh): one LoRA training step (forward + backward) of a random
//! 8-layer Llama (hidden 512) on batch 4 × 512 tokens, fp32, with or without activation checkpointing; prints
//! one JSON line with the step time and the peak resident memory growth during the step. Run each mode in
//! its own process (peak RSS only grows).
//!
//! usage: ckpt_mem on|off

use ferrotune_model::{AttentionMask, LlamaConfig, LlamaForCausalLM, LoraConfig};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn status_kb(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let on = std::env::args().nth(1).as_deref() == Some("on");
    let cfg = LlamaConfig::from_json_str(
        r#"{"vocab_size":8000,"hidden_size":512,"intermediate_size":1408,"num_hidden_layers":8,
            "num_attention_heads":8,"num_key_value_heads":8,"max_position_embeddings":1024}"#,
    )
    .expect("config");
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let mut model = LlamaForCausalLM::load(vs.root(), &cfg).expect("model");
    model.init_weights(0);
    model
        .add_lora("bench", &LoraConfig::new(8, 16.0, &["all"]), 0, Kind::Float)
        .expect("lora");
    model.set_training(true);
    model.gradient_checkpointing = on;
    let (b, t) = (4, 512);
    tch::manual_seed(1);
    let ids = Tensor::randint(cfg.vocab_size, [b, t], (Kind::Int64, Device::Cpu));
    let pos = Tensor::arange(t, (Kind::Int64, Device::Cpu))
        .unsqueeze(0)
        .expand([b, t], true);
    let before = status_kb("VmRSS:");
    let t0 = Instant::now();
    let loss = model.forward_backward(&ids, &pos, &AttentionMask::Causal, &mut |l| {
        model.loss(l, &ids).0
    });
    let secs = t0.elapsed().as_secs_f64();
    let peak = status_kb("VmHWM:");
    println!(
        "{{\"checkpointing\": {on}, \"loss\": {:.5}, \"step_s\": {secs:.2}, \"rss_before_kb\": {before}, \"peak_growth_kb\": {}}}",
        loss.double_value(&[]),
        peak.saturating_sub(before)
    );
}
