//! The toy training fixture shared by the CLI training tests: a generated corpus and alpaca dataset
//! (`data/toy.json`, registered as `toy` in `data/dataset_info.json`), a tokenizer trained on the corpus by
//! `ferrotune train-tokenizer`, and a tiny random Llama saved as an HF directory with that tokenizer.

use ferrotune_model::{LlamaConfig, LlamaForCausalLM};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Writes the fixture into `dir` and returns the model directory (the dataset is in `dir/data`).
/// Record i joins `words[i % n]` with `words[(i · stride + 3) % n]`, n = `words.len()`.
pub fn toy_fixture(
    bin: &str,
    dir: &Path,
    words: &[&str],
    records: usize,
    stride: usize,
) -> PathBuf {
    let n = words.len();
    let mut corpus = String::new();
    let mut rows = Vec::new();
    for i in 0..records {
        let (a, b) = (words[i % n], words[(i * stride + 3) % n]);
        corpus.push_str(&format!("the {a} and the {b} are number {i}\n"));
        rows.push(serde_json::json!({
            "instruction": format!("Join {a} with {b}"), "input": "", "output": format!("{a} {b} {i}"),
        }));
    }
    std::fs::write(dir.join("corpus.txt"), &corpus).unwrap();
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("toy.json"), serde_json::to_string(&rows).unwrap()).unwrap();
    std::fs::write(
        data.join("dataset_info.json"),
        r#"{"toy": {"file_name": "toy.json"}}"#,
    )
    .unwrap();
    let st = Command::new(bin)
        .args(["-q", "train-tokenizer", "--input"])
        .arg(dir.join("corpus.txt"))
        .args(["--vocab-size", "320", "--out"])
        .arg(dir.join("tok.model"))
        .status()
        .unwrap();
    assert!(st.success(), "train-tokenizer failed");
    let cfg = LlamaConfig::from_json_str(
        r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 320,
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 128, "rms_norm_eps": 1e-5,
            "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": false}"#,
    )
    .unwrap();
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let m = LlamaForCausalLM::load(vs.root(), &cfg).unwrap();
    m.init_weights(3);
    let model = dir.join("model");
    // save_pretrained replaces the whole directory, so the tokenizer goes in afterwards.
    ferrotune_model::save_pretrained(&m, &model, None, ferrotune_model::DEFAULT_MAX_SHARD_SIZE)
        .unwrap();
    std::fs::copy(dir.join("tok.model"), model.join("tokenizer.model")).unwrap();
    model
}
