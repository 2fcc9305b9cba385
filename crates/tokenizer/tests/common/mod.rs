//! Shared helpers for the tokenizer integration tests: the fixture texts (every alpaca demo record's
//! instruction + "\n" + output, Chinese then English), merged-model construction and the Python oracle.

#![allow(dead_code)]

use ferrotune_core::testkit::{fixture_or_skip, run_oracle};
use ferrotune_tokenizer::merge::{read_model, Merger};
use ferrotune_tokenizer::ModelProto;
use std::path::{Path, PathBuf};

pub struct Fixtures {
    pub llama: PathBuf,
    pub chinese: PathBuf,
    pub zh: PathBuf,
    pub en: PathBuf,
}

/// All fixtures the oracle tests need, or `None` (after a `skipped:` line naming the test).
pub fn fixtures(test: &str) -> Option<Fixtures> {
    Some(Fixtures {
        llama: fixture_or_skip(test, "tokenizers/llama2-tokenizer.model")?,
        chinese: fixture_or_skip(test, "tokenizers/chinese_sp.model")?,
        zh: fixture_or_skip(test, "datasets/alpaca_zh_demo.json")?,
        en: fixture_or_skip(test, "datasets/alpaca_en_demo.json")?,
    })
}

/// instruction + "\n" + output of every record of both alpaca demo files.
pub fn texts(f: &Fixtures) -> Vec<String> {
    let mut out = Vec::new();
    for path in [&f.zh, &f.en] {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        for r in v.as_array().unwrap() {
            out.push(format!(
                "{}\n{}",
                r["instruction"].as_str().unwrap(),
                r["output"].as_str().unwrap()
            ));
        }
    }
    out
}

/// The Llama-2 + Chinese merge done by ferrotune.
pub fn merged(f: &Fixtures) -> ModelProto {
    let mut m = Merger::new(read_model(&f.llama).unwrap());
    m.add_model("chinese_sp", &read_model(&f.chinese).unwrap());
    m.finish().0
}

/// Writes `value` as JSON into `dir/name` and returns the path as a string.
pub fn write_json(dir: &Path, name: &str, value: &impl serde::Serialize) -> String {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_string(value).unwrap()).unwrap();
    p.to_str().unwrap().to_owned()
}

/// Runs tests/oracle/tokenizer_encode.py for one job and parses its JSON.
pub fn oracle<T: serde::de::DeserializeOwned>(mode: &str, path: &str, data: &str) -> T {
    serde_json::from_str(&run_oracle("tokenizer_encode.py", &[mode, path, data])).unwrap()
}

/// Several (mode, path, data) jobs in one interpreter; one JSON value per job.
pub fn oracle_jobs<T: serde::de::DeserializeOwned>(jobs: &[[&str; 3]]) -> Vec<T> {
    let args: Vec<&str> = jobs.iter().flatten().copied().collect();
    let v: Vec<serde_json::Value> =
        serde_json::from_str(&run_oracle("tokenizer_encode.py", &args)).unwrap();
    v.into_iter()
        .map(|x| serde_json::from_value(x).unwrap())
        .collect()
}
