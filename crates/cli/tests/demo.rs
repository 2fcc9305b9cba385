//! End-to-end checks of `ferrotune demo-report` (the table that ends `just finetune`) on hand-made inputs:
//! exact match recounted from the answer files per task and language, eval metrics taken from the SFT
//! summary, and errors that name the file when answers and questions disagree. Plus: the committed demo
//! sets are consistent (every held-out prompt is absent from the training sets, every task family trains).

use ferrotune_core::testkit::workspace_root;
use std::path::Path;
use std::process::{Command, Output};

fn report(dir: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferrotune"))
        .arg("demo-report")
        .arg("--summary")
        .arg(dir.join("summary.json"))
        .arg("--questions")
        .arg(dir.join("questions.json"))
        .arg("--before")
        .arg(dir.join("before.jsonl"))
        .arg("--after")
        .arg(dir.join("after.jsonl"))
        .args(extra)
        .output()
        .unwrap()
}

fn answers(rows: &[(&str, &str)]) -> String {
    rows.iter()
        .map(|(q, a)| serde_json::json!({"instruction": q, "answer": a}).to_string() + "\n")
        .collect()
}

fn write_inputs(dir: &Path) {
    let questions = serde_json::json!([
        {"instruction": "Repeat after me: cat dog", "input": "", "output": "cat dog", "task": "repeat", "lang": "en"},
        {"instruction": "请重复： 小猫 小狗", "input": "", "output": "小猫 小狗", "task": "repeat", "lang": "zh"},
        {"instruction": "What is 2 plus 3?", "input": "", "output": "2 plus 3 is 5.", "task": "add", "lang": "en"},
        {"instruction": "2 加 3 等于多少？", "input": "", "output": "2 加 3 等于 5。", "task": "add", "lang": "zh"},
    ]);
    std::fs::write(dir.join("questions.json"), questions.to_string()).unwrap();
    let summary = serde_json::json!({
        "initial_eval": {"loss": 5.25, "perplexity": 190.0, "accuracy": 0.125},
        "final_eval": {"loss": 0.75, "perplexity": 2.1, "accuracy": 0.875},
    });
    std::fs::write(dir.join("summary.json"), summary.to_string()).unwrap();
    // Before: one hit (the Chinese sum). After: three hits; the English sum is wrong.
    let before = answers(&[
        ("Repeat after me: cat dog", "cat"),
        ("请重复： 小猫 小狗", "小猫"),
        ("What is 2 plus 3?", "2 plus 3 is 6."),
        ("2 加 3 等于多少？", "2 加 3 等于 5。"),
    ]);
    let after = answers(&[
        ("Repeat after me: cat dog", " cat dog "),
        ("请重复： 小猫 小狗", "小猫 小狗"),
        ("What is 2 plus 3?", "2 plus 3 is 4."),
        ("2 加 3 等于多少？", "2 加 3 等于 5。"),
    ]);
    std::fs::write(dir.join("before.jsonl"), before).unwrap();
    std::fs::write(dir.join("after.jsonl"), after).unwrap();
}

#[test]
fn demo_report_recounts_exact_match_per_task_and_language() {
    let dir = tempfile::tempdir().unwrap();
    write_inputs(dir.path());
    let out = report(dir.path(), &["--json", "--seconds", "125"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["eval_loss"]["before"], 5.25);
    assert_eq!(v["eval_loss"]["after"], 0.75);
    assert_eq!(v["eval_token_accuracy"]["after"], 0.875);
    assert_eq!(
        v["exact_match"],
        serde_json::json!({"before": 1, "after": 3, "total": 4})
    );
    assert_eq!(
        v["per_task"]["repeat"],
        serde_json::json!({"before": 0, "after": 2, "total": 2})
    );
    assert_eq!(
        v["per_task"]["add"],
        serde_json::json!({"before": 1, "after": 1, "total": 2})
    );
    assert_eq!(
        v["per_lang"]["en"],
        serde_json::json!({"before": 0, "after": 1, "total": 2})
    );
    assert_eq!(
        v["per_lang"]["zh"],
        serde_json::json!({"before": 1, "after": 2, "total": 2})
    );
    assert_eq!(v["seconds"], 125);

    let out = report(dir.path(), &["--seconds", "125"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "5.2500",
        "0.7500",
        "1/4 (25%)",
        "3/4 (75%)",
        "task repeat",
        "language zh",
        "2m05s",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
    assert!(
        text.contains("wrong (expected \"2 plus 3 is 5.\")"),
        "{text}"
    );
}

#[test]
fn demo_report_rejects_answers_that_do_not_match_the_questions() {
    let dir = tempfile::tempdir().unwrap();
    write_inputs(dir.path());
    let after = dir.path().join("after.jsonl");
    let text = std::fs::read_to_string(&after).unwrap();
    std::fs::write(
        &after,
        text.replace("What is 2 plus 3?", "What is 2 plus 4?"),
    )
    .unwrap();
    let out = report(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("after.jsonl: line 3"), "{err}");
    std::fs::write(&after, text.lines().take(2).collect::<Vec<_>>().join("\n")).unwrap();
    let err = String::from_utf8_lossy(&report(dir.path(), &[]).stderr).to_string();
    assert!(err.contains("2 answers for 4 questions"), "{err}");
}

#[test]
fn demo_sets_hold_out_every_eval_prompt() {
    let ds = workspace_root().join("datasets");
    let load = |name: &str| -> Vec<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(ds.join(name)).unwrap()).unwrap()
    };
    let mut train = std::collections::HashSet::new();
    for name in ["demo_en.json", "demo_zh.json"] {
        for r in load(name) {
            train.insert(r["instruction"].as_str().unwrap().to_string());
        }
    }
    let eval = load("demo_eval.json");
    assert!(eval.len() >= 50, "{} held-out prompts", eval.len());
    let mut tasks = std::collections::BTreeSet::new();
    for r in &eval {
        let q = r["instruction"].as_str().unwrap();
        assert!(
            !train.contains(q),
            "held-out prompt {q:?} is also a training prompt"
        );
        assert!(!r["output"].as_str().unwrap().is_empty());
        assert!(["en", "zh"].contains(&r["lang"].as_str().unwrap()), "{r}");
        tasks.insert(r["task"].as_str().unwrap().to_string());
    }
    assert!(tasks.len() >= 5, "{tasks:?}");
}
