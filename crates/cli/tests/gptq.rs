//! End-to-end `ferrotune quantize --method gptq|rtn` and `ferrotune merge-lora` into a quantized base, on
//! the tiny Llama + SentencePiece tokenizer + PEFT adapter of tests/oracle/model_cli.py:
//! - GPTQ (act-order, group size 16 → several groups and g_idx) calibrated on a text file writes a
//!   checkpoint with `quantization_config`, which `ferrotune eval` loads and scores;
//! - merging the adapter into it equals, tensor for tensor, PEFT's `merge_and_unload()` on the checkpoint
//!   dequantized independently in numpy (tests/oracle/quant_merge_ref.py), warns about the rounding, and
//!   scores like the quantized base with the adapter applied unmerged;
//! - RTN writes the same format; `--quantization-bit 4` merges into a base quantized at load, with the warning.

use ferrotune_core::testkit::run_oracle;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn ferrotune(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_ferrotune"))
        .args(args)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ferrotune {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn logprobs(model: &Path, adapter: Option<&Path>, text: &Path) -> (Vec<f64>, f64) {
    let mut args = vec!["eval", "--model", model.to_str().unwrap()];
    args.extend([
        "--text-file",
        text.to_str().unwrap(),
        "--json",
        "--device",
        "cpu",
    ]);
    if let Some(a) = adapter {
        args.extend(["--adapter", a.to_str().unwrap()]);
    }
    let v: Value = serde_json::from_slice(&ferrotune(&args).stdout).unwrap();
    let lp = v["lines"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l["tokens"].as_array().unwrap().clone())
        .map(|t| t["logprob"].as_f64().unwrap())
        .collect();
    (lp, v["perplexity"].as_f64().unwrap())
}

fn quant_config(dir: &Path) -> Value {
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    cfg["quantization_config"].clone()
}

#[test]
fn gptq_quantize_eval_and_merge_lora() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run_oracle("model_cli.py", &[d.to_str().unwrap()]);
    let (model, adapter, text, corpus) = (
        d.join("model"),
        d.join("adapter"),
        d.join("text.txt"),
        d.join("corpus.txt"),
    );
    let s = |p: &Path| p.to_str().unwrap().to_string();

    let gptq = d.join("gptq");
    let out = ferrotune(&[
        "quantize",
        "--method",
        "gptq",
        "--bits",
        "4",
        "--group-size",
        "16",
        "--act-order",
        "--model",
        &s(&model),
        "--calib-dataset",
        &s(&corpus),
        "--nsamples",
        "8",
        "--seq-len",
        "48",
        "--out",
        &s(&gptq),
        "--dtype",
        "fp32",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("calibration: 8 samples of 48 tokens"), "{err}");
    assert!(err.contains("threads=1"), "{err}");
    let q = quant_config(&gptq);
    assert_eq!(q["quant_method"], "gptq", "{q}");
    assert_eq!(q["group_size"], 16);
    assert_eq!(q["desc_act"], true);
    assert!(gptq.join("tokenizer.model").is_file());

    let (base_lp, base_ppl) = logprobs(&model, None, &text);
    let (q_lp, q_ppl) = logprobs(&gptq, None, &text);
    assert_eq!(base_lp.len(), q_lp.len());
    assert!(
        q_ppl.is_finite() && q_ppl != base_ppl,
        "{q_ppl} vs {base_ppl}"
    );

    let merged = d.join("merged");
    let out = ferrotune(&[
        "merge-lora",
        "--base",
        &s(&gptq),
        "--adapter",
        &s(&adapter),
        "--out",
        &s(&merged),
        "--dtype",
        "fp32",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warning") && err.contains("rounding"), "{err}");
    assert!(
        quant_config(&merged).is_null(),
        "the merged checkpoint is plain 16/32-bit"
    );
    let r: Value = serde_json::from_str(
        run_oracle(
            "quant_merge_ref.py",
            &[&s(&gptq), &s(&adapter), &s(&merged)],
        )
        .trim(),
    )
    .unwrap();
    assert_eq!(r["dequantized"], 14, "{r}");
    assert!(
        r["max_merge_delta"].as_f64().unwrap() > 1e-3,
        "the adapter changes weights: {r}"
    );
    assert!(
        r["max_abs_diff"].as_f64().unwrap() < 1e-5,
        "merged vs PEFT on the dequantized base: {r}"
    );
    // Merged weights score like the quantized base with the adapter unmerged.
    let (m_lp, _) = logprobs(&merged, None, &text);
    let (qa_lp, _) = logprobs(&gptq, Some(&adapter), &text);
    for (a, b) in m_lp.iter().zip(&qa_lp) {
        assert!(
            (a - b).abs() < 1e-4,
            "merged {a} vs quantized + adapter {b}"
        );
    }

    // --threads sets libtorch's intra-op threads over OMP_NUM_THREADS (1 in these runs).
    let rtn = d.join("rtn");
    let out = ferrotune(&[
        "quantize",
        "--method",
        "rtn",
        "--group-size",
        "16",
        "--threads",
        "2",
        "--model",
        &s(&model),
        "--out",
        &s(&rtn),
        "--dtype",
        "fp32",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("threads=2"), "{err}");
    assert_eq!(quant_config(&rtn)["quant_method"], "rtn");
    let merged_rtn = d.join("merged_rtn");
    ferrotune(&[
        "merge-lora",
        "--base",
        &s(&rtn),
        "--adapter",
        &s(&adapter),
        "--out",
        &s(&merged_rtn),
        "--dtype",
        "fp32",
    ]);
    let r: Value = serde_json::from_str(
        run_oracle(
            "quant_merge_ref.py",
            &[&s(&rtn), &s(&adapter), &s(&merged_rtn)],
        )
        .trim(),
    )
    .unwrap();
    assert!(r["max_abs_diff"].as_f64().unwrap() < 1e-5, "RTN merge: {r}");

    // A 16-bit base quantized at load (as in QLoRA training), then dequantized and merged.
    let merged_nf4 = d.join("merged_nf4");
    let out = ferrotune(&[
        "merge-lora",
        "--base",
        &s(&model),
        "--adapter",
        &s(&adapter),
        "--out",
        &s(&merged_nf4),
        "--dtype",
        "fp32",
        "--quantization-bit",
        "4",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning"));
    let (n_lp, _) = logprobs(&merged_nf4, None, &text);
    assert_eq!(n_lp.len(), m_lp.len());
}
