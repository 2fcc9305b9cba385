//! Benchmark driver for tools/bench/bench-tokenizer.sh: prepares the merged Llama-2 + Chinese tokenizer
//! (SentencePiece + HF files) and the 1,999 alpaca demo texts in OUT_DIR, then times ferrotune's encode of
//! all texts (best of N runs; batch = rayon over texts, loop = one thread) and prints one JSON line per
//! tokenizer. Every run gets a freshly loaded tokenizer (loading not timed), so the per-thread word cache
//! starts empty each time. The script times Python sentencepiece and HF tokenizers on the same files.
//!
//! usage: bench_encode FIXTURES_DIR OUT_DIR [RUNS]

use ferrotune_tokenizer::merge::{read_model, Merger};
use ferrotune_tokenizer::{hf_files, Tokenizer};
use std::path::Path;
use std::time::Instant;

/// Best wall time of `runs` calls of `f` on a freshly loaded tokenizer each.
fn best_ms(
    runs: usize,
    path: &Path,
    f: impl Fn(&Tokenizer) -> usize,
) -> Result<(f64, usize), Box<dyn std::error::Error>> {
    let mut best = f64::INFINITY;
    let mut tokens = 0;
    for _ in 0..runs {
        let tok = Tokenizer::from_path(path)?;
        let t = Instant::now();
        tokens = f(&tok);
        best = best.min(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok((best, tokens))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        return Err("usage: bench_encode FIXTURES_DIR OUT_DIR [RUNS]".into());
    }
    let (fix, out) = (Path::new(&args[1]), Path::new(&args[2]));
    let runs: usize = args.get(3).map(|r| r.parse()).transpose()?.unwrap_or(5);
    std::fs::create_dir_all(out)?;

    let mut texts = Vec::new();
    for f in ["alpaca_zh_demo.json", "alpaca_en_demo.json"] {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fix.join("datasets").join(f))?)?;
        for r in v.as_array().ok_or("not an array")? {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
            texts.push(format!("{}\n{}", s("instruction"), s("output")));
        }
    }
    std::fs::write(out.join("texts.json"), serde_json::to_string(&texts)?)?;

    let llama_path = fix.join("tokenizers/llama2-tokenizer.model");
    let llama = read_model(&llama_path)?;
    let mut merger = Merger::new(llama.clone());
    merger.add_model(
        "chinese_sp",
        &read_model(&fix.join("tokenizers/chinese_sp.model"))?,
    );
    let merged = merger.finish().0;
    for (name, proto) in [("llama2", &llama), ("merged", &merged)] {
        let dir = out.join(name);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("tokenizer.model"), proto.to_bytes())?;
        hf_files(proto, &dir.join("tokenizer.model"))?.write(&dir)?;
    }

    let chars: usize = texts.iter().map(|t| t.chars().count()).sum();
    for name in ["llama2", "merged"] {
        let path = out.join(name).join("tokenizer.model");
        let tok = Tokenizer::from_path(&path)?;
        let (batch_ms, tokens) = best_ms(runs, &path, |tok| {
            tok.encode_batch(&texts, false, false)
                .map(|v| v.iter().map(Vec::len).sum())
                .unwrap_or(0)
        })?;
        let (loop_ms, _) = best_ms(runs, &path, |tok| {
            texts
                .iter()
                .map(|t| tok.encode(t, false, false).map(|v| v.len()).unwrap_or(0))
                .sum()
        })?;
        let (cxx_ms, _) = best_ms(runs.min(3), &path, |tok| {
            texts
                .iter()
                .map(|t| tok.encode_with_library(t).map(|v| v.len()).unwrap_or(0))
                .sum()
        })?;
        println!(
            "{}",
            serde_json::json!({
                "tokenizer": name, "texts": texts.len(), "chars": chars, "tokens": tokens,
                "fast_path": tok.uses_fast_path(), "threads": rayon::current_num_threads(),
                "batch_ms": batch_ms, "loop_ms": loop_ms, "cxx_loop_ms": cxx_ms,
            })
        );
    }
    Ok(())
}
