//! End-to-end checks of `ferrotune prepare-data` and `ferrotune inspect-data` on the repo's own demo sets
//! (datasets/dataset_info.json) with the Llama-2 tokenizer from the shared fixtures: stats, cache reuse,
//! `--json` sample output, packing, and bad-input handling with `--on-bad-record skip`.

use ferrotune_core::testkit::{fixture_or_skip, workspace_root};
use std::process::{Command, Output};

fn ferrotune(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferrotune"))
        .args(args)
        .output()
        .unwrap()
}

fn ok_json(out: Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn prepare_and_inspect_demo_sets() {
    let Some(tok) = fixture_or_skip(
        "prepare_and_inspect_demo_sets",
        "tokenizers/llama2-tokenizer.model",
    ) else {
        return;
    };
    let tok = tok.to_str().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cache");
    let ds_dir = workspace_root().join("datasets");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "prepare-data",
            "--dataset",
            "demo_en,demo_zh",
            "--dataset-dir",
            ds_dir.to_str().unwrap(),
            "--template",
            "alpaca",
            "--tokenizer",
            &tok,
            "--cutoff-len",
            "256",
            "--val-size",
            "20",
            "--out",
            out.to_str().unwrap(),
            "--json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = |extra: &[&str]| {
        ok_json(ferrotune(
            &args(extra).iter().map(String::as_str).collect::<Vec<_>>(),
        ))
    };
    let v = run(&[]);
    assert_eq!(v["reused"], false);
    // tools/gen-demo-datasets.py: 360 English + 360 Chinese records.
    assert_eq!(v["stats"]["records"], 720);
    assert_eq!(v["stats"]["skipped"], 0);
    assert_eq!(v["splits"]["validation"]["samples"], 20);
    assert_eq!(v["splits"]["train"]["samples"], 700);
    assert_eq!(run(&[])["reused"], true, "same inputs reuse the cache");
    let sample = ok_json(ferrotune(&[
        "inspect-data",
        out.to_str().unwrap(),
        "--index",
        "3",
        "--json",
    ]));
    let ids = sample["input_ids"].as_array().unwrap();
    let labels = sample["labels"].as_array().unwrap();
    assert_eq!(ids.len(), labels.len());
    assert_eq!(ids[0], 1, "BOS first");
    assert_eq!(ids.last().unwrap(), &serde_json::json!(2), "EOS last");
    assert_eq!(labels.last().unwrap(), &serde_json::json!(2), "EOS trained");
    assert_eq!(labels[0], -100);
    let text = ferrotune(&[
        "inspect-data",
        out.to_str().unwrap(),
        "--split",
        "validation",
        "--index",
        "0",
    ]);
    assert!(
        text.status.success(),
        "{}",
        String::from_utf8_lossy(&text.stderr)
    );
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains("### Instruction:") && text.contains("[["),
        "{text}"
    );
    // Packed: rows hold several samples, positions restart.
    let v = run(&["--packing", "--overwrite-cache"]);
    assert_eq!(v["splits"]["train"]["packed"], true);
    assert!(
        v["splits"]["train"]["samples"].as_u64().unwrap() < 350,
        "packing at least halves the rows"
    );
    // The last row holds the shortest samples: several of them, each starting at position 0.
    let last = (v["splits"]["train"]["samples"].as_u64().unwrap() - 1).to_string();
    let sample = ok_json(ferrotune(&[
        "inspect-data",
        out.to_str().unwrap(),
        "--index",
        &last,
        "--json",
    ]));
    let restarts = sample["position_ids"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| **p == 0)
        .count();
    assert!(restarts >= 2, "several sequences in a packed row");
    let err = ferrotune(&["inspect-data", out.to_str().unwrap(), "--index", "100000"]);
    assert_eq!(err.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&err.stderr).contains("out of range"));
}

#[test]
fn bad_records_fail_with_position_or_are_skipped_and_counted() {
    let Some(tok) = fixture_or_skip(
        "bad_records_fail_with_position_or_are_skipped_and_counted",
        "tokenizers/llama2-tokenizer.model",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.jsonl");
    std::fs::write(
        &f,
        b"{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": \"c\", \"output\": }\n{\"instruction\": \"d\"}\n{\"instruction\": \"e\", \"output\": \"f\"}\n",
    )
    .unwrap();
    let out = dir.path().join("o");
    let base = [
        "prepare-data",
        "--data-file",
        f.to_str().unwrap(),
        "--template",
        "alpaca",
        "--tokenizer",
        tok.to_str().unwrap(),
        "--cutoff-len",
        "64",
        "--out",
        out.to_str().unwrap(),
    ];
    let o = ferrotune(&base);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bad.jsonl:2:") && err.contains("malformed JSON"),
        "{err}"
    );
    let mut skip = base.to_vec();
    skip.extend(["--on-bad-record", "skip", "--json"]);
    let v = ok_json(ferrotune(&skip));
    assert_eq!(v["stats"]["records"], 4);
    assert_eq!(v["stats"]["skipped"], 2);
    assert_eq!(v["stats"]["samples"], 2);
    assert!(v["stats"]["skip_reasons"][1]
        .as_str()
        .unwrap()
        .contains("record 2, field `output`"));
}
