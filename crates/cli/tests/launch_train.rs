//! Two "nodes" on one machine train together: two `ferrotune launch --nnodes 2` processes (master
//! 127.0.0.1) run `train` with per-device batch 1 and must give the same per-step losses and final LoRA
//! weights as one `ferrotune train` process with the same global batch (fp32, tolerance 1e-5):
//! `NO_SHARD` with one worker per node, and `HYBRID_SHARD` with two (sharded within each node,
//! replicated across the two).
//!
//! Fixture: a tokenizer trained by `ferrotune train-tokenizer`, a tiny random Llama saved as an HF
//! directory, and a small alpaca dataset.

mod toy;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ferrotune");

fn fixture(dir: &Path) -> PathBuf {
    let words = [
        "apple", "river", "stone", "cloud", "green", "seven", "orange", "music",
    ];
    let model = toy::toy_fixture(BIN, dir, &words, 24, 5);
    let data = dir.join("data");
    let text = format!(
        r#"model_name_or_path = "{}"
dataset = "toy"
dataset_dir = "{}"
template = "alpaca"
cutoff_len = 48
finetuning_type = "lora"
lora_rank = 4
lora_alpha = 8
lora_dropout = 0.0
lora_target = "all"
per_device_train_batch_size = 2
gradient_accumulation_steps = 1
learning_rate = 5e-3
max_steps = 4
logging_steps = 1
save_steps = 1000
seed = 5
device = "cpu"
num_threads = 1
"#,
        model.display(),
        data.display()
    );
    let p = dir.join("train.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|v| v.get("loss").and_then(|l| l.as_f64()))
        .collect()
}

fn wait(mut c: Child, what: &str) -> String {
    let start = Instant::now();
    while c.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(120) {
            c.kill().ok();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = c.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

#[test]
fn two_launchers_train_like_one_process() {
    two_nodes_like_one_process("NO_SHARD", 1);
}

#[test]
fn two_launchers_hybrid_shard_train_like_one_process() {
    two_nodes_like_one_process("HYBRID_SHARD", 2);
}

/// Two launchers × `per_node` workers with `strategy`, against one process with batch 2 · `per_node`.
fn two_nodes_like_one_process(strategy: &str, per_node: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cfg = fixture(dir);
    let single = dir.join("single");
    let st = Command::new(BIN)
        .args(["-q", "train"])
        .arg(&cfg)
        .arg("--set")
        .arg(format!("output_dir={}", single.display()))
        .arg("--set")
        .arg(format!("per_device_train_batch_size={}", 2 * per_node))
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );

    let dist = dir.join("dist");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let node = |k: &str| {
        Command::new(BIN)
            .args([
                "launch",
                "--nnodes",
                "2",
                "--node-rank",
                k,
                "--nproc-per-node",
                &per_node.to_string(),
            ])
            .args([
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                &port,
                "--",
                "-q",
                "train",
            ])
            .arg(&cfg)
            .args(["--set", &format!("output_dir={}", dist.display())])
            .args(["--set", "per_device_train_batch_size=1"])
            .args(["--set", &format!("parallel.strategy={strategy}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (n0, n1) = (node("0"), node("1"));
    let out0 = wait(n0, "node 0");
    wait(n1, "node 1");
    assert!(out0.contains("[rank 0] "), "{out0}");
    if per_node > 1 {
        assert!(out0.contains("[rank 1] "), "{out0}");
    }

    let (a, b) = (losses(&single), losses(&dist));
    assert_eq!(a.len(), 4, "{a:?}");
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    for (x, y) in a.iter().zip(&b) {
        assert!(
            (x - y).abs() <= 1e-5,
            "{strategy}: losses differ: {a:?} vs {b:?}"
        );
    }
    let read = |run: &Path| {
        let mut v = tch::Tensor::read_safetensors(run.join("adapter_model.safetensors")).unwrap();
        v.sort_by(|x, y| x.0.cmp(&y.0));
        v
    };
    let (wa, wb) = (read(&single), read(&dist));
    assert_eq!(wa.len(), wb.len());
    for ((na, ta), (nb, tb)) in wa.iter().zip(&wb) {
        assert_eq!(na, nb);
        let d = (ta - tb).abs().max().double_value(&[]);
        assert!(d <= 1e-5, "{strategy}: {na}: max |diff| {d}");
    }
}
