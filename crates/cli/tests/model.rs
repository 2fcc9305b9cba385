//! End-to-end checks of `ferrotune merge-lora` and `ferrotune eval` against transformers + PEFT: eval prints
//! the per-token log-probabilities PEFT computes (with and without the adapter, ids from Google's
//! sentencepiece), and the merged checkpoint scores like base + adapter.

use ferrotune_core::testkit::run_oracle;
use serde_json::Value;
use std::path::Path;

fn ferrotune(args: &[&str]) -> String {
    ferrotune_core::testkit::run_ok(env!("CARGO_BIN_EXE_ferrotune"), args)
}

fn eval_json(model: &Path, adapter: Option<&Path>, text: &Path) -> Value {
    let mut args = vec![
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--text-file",
        text.to_str().unwrap(),
        "--json",
    ];
    args.extend(["--device", "cpu"]);
    if let Some(a) = adapter {
        args.extend(["--adapter", a.to_str().unwrap()]);
    }
    serde_json::from_str(&ferrotune(&args)).unwrap()
}

fn assert_scores(got: &Value, want: &Value, which: &str) {
    let lines = got["lines"].as_array().unwrap();
    let refs = want["lines"].as_array().unwrap();
    assert_eq!(lines.len(), refs.len(), "empty lines are skipped");
    let mut nll = 0.0;
    let mut n = 0;
    for (l, r) in lines.iter().zip(refs) {
        let ids: Vec<i64> = l["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_i64().unwrap())
            .collect();
        let want_ids: Vec<i64> = r["ids"].as_array().unwrap()[1..]
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(ids, want_ids, "token ids of `{}`", l["text"]);
        let lp: Vec<f64> = l["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["logprob"].as_f64().unwrap())
            .collect();
        for (a, b) in lp.iter().zip(r[which].as_array().unwrap()) {
            assert!(
                (a - b.as_f64().unwrap()).abs() < 1e-4,
                "{which}: {a} vs {b}"
            );
        }
        let s: f64 = lp.iter().sum();
        assert!((l["perplexity"].as_f64().unwrap() - (-s / lp.len() as f64).exp()).abs() < 1e-6);
        nll -= s;
        n += lp.len();
    }
    assert!((got["perplexity"].as_f64().unwrap() - (nll / n as f64).exp()).abs() < 1e-6);
}

#[test]
fn eval_and_merge_lora_match_peft() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run_oracle("model_cli.py", &[d.to_str().unwrap()]);
    let want: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("ref.json")).unwrap()).unwrap();
    let (model, adapter, text) = (d.join("model"), d.join("adapter"), d.join("text.txt"));
    assert_scores(&eval_json(&model, None, &text), &want, "base");
    assert_scores(&eval_json(&model, Some(&adapter), &text), &want, "adapter");

    let merged = d.join("merged");
    ferrotune(&[
        "merge-lora",
        "--base",
        model.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
        "--dtype",
        "fp32",
    ]);
    for f in [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.model",
    ] {
        assert!(
            merged.join(f).is_file(),
            "{f} missing from the merged checkpoint"
        );
    }
    assert_scores(&eval_json(&merged, None, &text), &want, "adapter");
    // the human form names every line and the total
    let text_out = ferrotune(&[
        "eval",
        "--model",
        merged.to_str().unwrap(),
        "--text-file",
        text.to_str().unwrap(),
    ]);
    assert!(
        text_out.contains("line 1:") && text_out.contains("line 3:") && text_out.contains("total:"),
        "{text_out}"
    );
}
