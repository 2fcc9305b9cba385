//! Reading training text: `.txt` files line by line; `.json` / `.jsonl` files by collecting every string
//! value (each split into lines), so the corpora of poems, dialogues and alpaca records can be used as-is.

use crate::error::TokenizerError;
use serde_json::Value;
use std::path::Path;

fn collect_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.extend(
            s.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned),
        ),
        Value::Array(a) => a.iter().for_each(|x| collect_strings(x, out)),
        Value::Object(o) => o.values().for_each(|x| collect_strings(x, out)),
        _ => {}
    }
}

/// The non-empty lines of one corpus file (see the module docs for the formats).
pub fn read_corpus(path: &Path) -> Result<Vec<String>, TokenizerError> {
    let text = std::fs::read_to_string(path).map_err(|e| TokenizerError::read(path, e))?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mut out = Vec::new();
    match ext.as_str() {
        "json" => {
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| TokenizerError::invalid(path, format!("not JSON: {e}")))?;
            collect_strings(&v, &mut out);
        }
        "jsonl" => {
            for (i, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                let v: Value = serde_json::from_str(line).map_err(|e| {
                    TokenizerError::invalid(path, format!("line {}: not JSON: {e}", i + 1))
                })?;
                collect_strings(&v, &mut out);
            }
        }
        _ => out.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned),
        ),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_txt_json_and_jsonl() {
        let dir = tempfile::tempdir().unwrap();
        let txt = dir.path().join("a.txt");
        std::fs::write(&txt, "一行\n\n two \n").unwrap();
        assert_eq!(read_corpus(&txt).unwrap(), ["一行", "two"]);
        let json = dir.path().join("a.json");
        std::fs::write(
            &json,
            r#"[{"title": "关雎", "n": 1, "p": ["关关雎鸠\n在河之洲"]}]"#,
        )
        .unwrap();
        let mut got = read_corpus(&json).unwrap();
        got.sort();
        assert_eq!(got, ["关关雎鸠", "关雎", "在河之洲"]);
        let jsonl = dir.path().join("a.jsonl");
        std::fs::write(&jsonl, "{\"text\": \"x\"}\nnot json\n").unwrap();
        let err = read_corpus(&jsonl).unwrap_err().to_string();
        assert!(err.contains("a.jsonl") && err.contains("line 2"), "{err}");
    }
}
