//! Bench helper (tools/bench/bench-model.sh): loads a checkpoint directory with `load_pretrained` and prints
//! one JSON line with the load time, the weight file size, the process's resident memory before loading and
//! its peak resident memory (VmHWM) after.
//!
//! usage: load_rss DIR [bf16|fp32|fp16]

use ferrotune_model::{checkpoint_files, load_pretrained};
use std::time::Instant;

fn status_kb(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(args.get(1).expect("usage: load_rss DIR [dtype]"));
    let dtype = args
        .get(2)
        .map(|s| s.parse().expect("dtype"))
        .unwrap_or(ferrotune_core::DType::BF16);
    let _ = tch::Tensor::zeros([1], (tch::Kind::Float, tch::Device::Cpu)); // initialise libtorch first
    let base_kb = status_kb("VmRSS:");
    let files: u64 = checkpoint_files(&dir)
        .expect("checkpoint files")
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    let t0 = Instant::now();
    let (model, _vs, _cfg) = load_pretrained(&dir, dtype, tch::Device::Cpu).expect("load");
    let secs = t0.elapsed().as_secs_f64();
    let peak_kb = status_kb("VmHWM:");
    let n: i64 = model
        .named_parameters()
        .iter()
        .map(|(_, t)| t.numel() as i64)
        .sum();
    println!(
        "{{\"params\": {n}, \"file_bytes\": {files}, \"load_s\": {secs:.2}, \"rss_before_kb\": {base_kb}, \"peak_rss_kb\": {peak_kb}, \"peak_over_file\": {:.3}}}",
        peak_kb as f64 * 1024.0 / files as f64
    );
}
