//! End-to-end checks of `merge-tokenizer`, `tokenize` and `train-tokenizer`: the merge reports 49953
//! pieces and its outputs tokenize like Google sentencepiece; broken model files are one-line errors
//! naming the file (exit 1); a trained model is usable straight away.

use ferrotune_core::testkit::{fixture_or_skip, run_oracle};
use std::process::{Command, Output};

fn ferrotune(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferrotune"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout_ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn merge_then_tokenize_matches_sentencepiece() {
    let test = "merge_then_tokenize_matches_sentencepiece";
    let (Some(llama), Some(zh)) = (
        fixture_or_skip(test, "tokenizers/llama2-tokenizer.model"),
        fixture_or_skip(test, "tokenizers/chinese_sp.model"),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("merged");
    let o = out_dir.to_str().unwrap();
    let stdout = stdout_ok(&ferrotune(&[
        "merge-tokenizer",
        "--base",
        llama.to_str().unwrap(),
        "--add",
        zh.to_str().unwrap(),
        "--out",
        o,
    ]));
    assert!(
        stdout.contains("added 17953 pieces: 32000 -> 49953"),
        "{stdout}"
    );
    for f in [
        "tokenizer.model",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        assert!(out_dir.join(f).is_file(), "{f}");
    }

    let texts = [
        "今天天气很好，我们去公园散步吧。",
        "The merged tokenizer keeps English intact: 1999 🦀",
    ];
    let data = dir.path().join("texts.json");
    std::fs::write(&data, serde_json::to_string(&texts).unwrap()).unwrap();
    let model = out_dir.join("tokenizer.model");
    let want: Vec<Vec<u32>> = serde_json::from_str(&run_oracle(
        "tokenizer_encode.py",
        &["sp", model.to_str().unwrap(), data.to_str().unwrap()],
    ))
    .unwrap();
    let stdout = stdout_ok(&ferrotune(&[
        "tokenize",
        "--tokenizer",
        o,
        "--json",
        texts[0],
        texts[1],
    ]));
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for (line, want) in lines.iter().zip(&want) {
        let ids: Vec<u32> = serde_json::from_value(line["ids"].clone()).unwrap();
        assert_eq!(&ids, want);
        assert_eq!(line["pieces"].as_array().unwrap().len(), ids.len());
        assert_eq!(line["pieces"][0], "<s>");
    }
    let plain = stdout_ok(&ferrotune(&[
        "tokenize",
        "--tokenizer",
        o,
        "--no-bos",
        texts[0],
    ]));
    let ids_line = plain.lines().next().unwrap();
    let ids: Vec<u32> = ids_line
        .trim_start_matches("ids: ")
        .split(' ')
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(ids, want[0][1..]);

    // --file: counts per line; the merged vocabulary needs far fewer tokens per Chinese character.
    let file = dir.path().join("zh.txt");
    std::fs::write(&file, format!("{}\n{}\n", texts[0], texts[0])).unwrap();
    let f = file.to_str().unwrap();
    let count = |tok: &str| -> f64 {
        let out = stdout_ok(&ferrotune(&[
            "tokenize",
            "--tokenizer",
            tok,
            "--json",
            "--file",
            f,
        ]));
        let total: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        assert_eq!(total["lines"], 2);
        total["tokens_per_char"].as_f64().unwrap()
    };
    let (merged, base) = (count(o), count(llama.to_str().unwrap()));
    assert!(
        merged < base * 0.7,
        "merged {merged} vs llama {base} tokens/char"
    );
}

#[test]
fn broken_model_files_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.model");
    std::fs::write(&garbage, b"\x0a\xff\xff\xff\xff\xff this is not a model").unwrap();
    let g = garbage.to_str().unwrap();
    for args in [
        vec!["tokenize", "--tokenizer", g, "hello"],
        vec![
            "merge-tokenizer",
            "--base",
            g,
            "--add",
            g,
            "--out",
            dir.path().join("o").to_str().unwrap(),
        ],
    ] {
        let out = ferrotune(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with("error:") && err.contains("garbage.model"),
            "{err}"
        );
        assert!(err.contains("not a SentencePiece model"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(!dir.path().join("o").exists());
    if let Some(llama) = fixture_or_skip(
        "broken_model_files_are_errors_naming_the_file",
        "tokenizers/llama2-tokenizer.model",
    ) {
        let bytes = std::fs::read(llama).unwrap();
        let truncated = dir.path().join("truncated.model");
        std::fs::write(&truncated, &bytes[..1000]).unwrap();
        let out = ferrotune(&["tokenize", "--tokenizer", truncated.to_str().unwrap(), "x"]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with("error:") && err.contains("truncated.model"),
            "{err}"
        );
    }
}

#[test]
fn train_tokenizer_writes_a_usable_model() {
    let dir = tempfile::tempdir().unwrap();
    // A generated corpus: enough repeated structure for a 400-piece vocabulary.
    let words = [
        "数据",
        "模型",
        "训练",
        "tokenizer",
        "中文",
        "语言",
        "学习",
        "rust",
        "快速",
        "测试",
    ];
    let corpus: Vec<String> = (0..400)
        .map(|i| {
            (0..12)
                .map(|j| words[(i * 7 + j * 3 + i / 5) % words.len()])
                .collect::<Vec<_>>()
                .join(if i % 2 == 0 { " " } else { "" })
        })
        .collect();
    let input = dir.path().join("corpus.txt");
    std::fs::write(&input, corpus.join("\n")).unwrap();
    for kind in ["unigram", "bpe"] {
        let model = dir.path().join(format!("{kind}.model"));
        let m = model.to_str().unwrap();
        let stdout = stdout_ok(&ferrotune(&[
            "train-tokenizer",
            "--input",
            input.to_str().unwrap(),
            "--vocab-size",
            "400",
            "--model-type",
            kind,
            "--out",
            m,
        ]));
        assert!(stdout.contains("wrote"), "{stdout}");
        let out = stdout_ok(&ferrotune(&[
            "tokenize",
            "--tokenizer",
            m,
            "--json",
            "--no-bos",
            "训练中文模型 rust",
        ]));
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        let n = v["ids"].as_array().unwrap().len();
        assert!((1..=10).contains(&n), "{kind}: {v}");
    }
}
