//! End-to-end check of `ferrotune quantize` and `ferrotune eval` on quantized models: the per-token
//! log-probabilities of a pre-quantized checkpoint (NF4 + double quant, int8) equal transformers' with the
//! projections dequantized by the numpy reference of bitsandbytes (tests/oracle/quant_cli_ref.py), and
//! `eval --quantization-bit 4` on the 16-bit model gives the same numbers as the pre-quantized directory.

use ferrotune_core::testkit::run_oracle;
use serde_json::Value;
use std::path::Path;

fn ferrotune(args: &[&str]) -> String {
    ferrotune_core::testkit::run_ok(env!("CARGO_BIN_EXE_ferrotune"), args)
}

fn eval_logprobs(model: &Path, text: &Path, extra: &[&str]) -> Vec<Vec<f64>> {
    let mut args = vec![
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--text-file",
        text.to_str().unwrap(),
        "--json",
        "--device",
        "cpu",
    ];
    args.extend(extra);
    let v: Value = serde_json::from_str(&ferrotune(&args)).unwrap();
    v["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            l["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["logprob"].as_f64().unwrap())
                .collect()
        })
        .collect()
}

fn assert_close(got: &[Vec<f64>], want: &[Vec<f64>], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lines");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.len(), w.len(), "{what}: tokens");
        for (a, b) in g.iter().zip(w) {
            assert!((a - b).abs() < tol, "{what}: {a} vs {b}");
        }
    }
}

/// `ferrotune generate` (greedy, 12 tokens) of the first text line on a (quantized) model directory.
fn greedy(model: &Path, prompt: &str) -> Value {
    let out = ferrotune(&[
        "generate",
        "--device",
        "cpu",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        prompt,
        "--temperature",
        "0",
        "--ignore-eos",
        "--max-new-tokens",
        "12",
        "--json",
    ]);
    serde_json::from_str::<Value>(out.lines().next().unwrap()).unwrap()["token_ids"].clone()
}

fn reference(want: &Value, variant: &str) -> Vec<Vec<f64>> {
    want["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            l[variant]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect()
        })
        .collect()
}

#[test]
fn quantized_checkpoints_score_like_transformers_with_bitsandbytes_dequantized_weights() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run_oracle(
        "quant_cli_ref.py",
        &[d.to_str().unwrap(), "fp32", "nf4-dq", "int8"],
    );
    let want: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("ref.json")).unwrap()).unwrap();
    let (model, text) = (d.join("model"), d.join("text.txt"));
    assert_close(
        &eval_logprobs(&model, &text, &[]),
        &reference(&want, "fp32"),
        1e-4,
        "fp32",
    );

    let nf4 = d.join("nf4");
    ferrotune(&[
        "quantize",
        "--method",
        "nf4",
        "--double-quant",
        "--compute-dtype",
        "fp32",
        "--model",
        model.to_str().unwrap(),
        "--out",
        nf4.to_str().unwrap(),
    ]);
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(nf4.join("config.json")).unwrap()).unwrap();
    let q = &cfg["quantization_config"];
    assert_eq!(q["bnb_4bit_quant_type"], "nf4");
    assert_eq!(q["bnb_4bit_use_double_quant"], true);
    assert_eq!(q["load_in_4bit"], true);
    assert!(nf4.join("tokenizer.model").is_file());
    let pre = eval_logprobs(&nf4, &text, &[]);
    assert_close(&pre, &reference(&want, "nf4-dq"), 1e-4, "nf4-dq");
    // The fp32 model differs from the quantized one (the test would not notice a no-op quantization).
    assert!(pre[0]
        .iter()
        .zip(&reference(&want, "fp32")[0])
        .any(|(a, b)| (a - b).abs() > 1e-3));
    // Generation on the pre-quantized base (the infer crate loads it through the quant loader).
    let first = "the lazy fox jumps over seven frogs";
    assert_eq!(
        greedy(&nf4, first),
        want["lines"][0]["greedy_nf4-dq"],
        "nf4 greedy"
    );
    // Quantizing at load gives the pre-quantized checkpoint's numbers.
    let at_load = eval_logprobs(&model, &text, &["--quantization-bit", "4"]);
    assert_close(&at_load, &pre, 1e-6, "--quantization-bit 4");

    let int8 = d.join("int8");
    ferrotune(&[
        "quantize",
        "--method",
        "int8",
        "--compute-dtype",
        "fp32",
        "--model",
        model.to_str().unwrap(),
        "--out",
        int8.to_str().unwrap(),
    ]);
    let q8 = eval_logprobs(&int8, &text, &[]);
    assert_close(&q8, &reference(&want, "int8"), 1e-4, "int8");
    assert_eq!(
        greedy(&int8, first),
        want["lines"][0]["greedy_int8"],
        "int8 greedy"
    );
    assert_close(
        &eval_logprobs(&model, &text, &["--quantization-bit", "8"]),
        &q8,
        1e-6,
        "--quantization-bit 8",
    );
}
