//! Special-token ids (bos/eos/pad/unk) and the HF side files that name them (`tokenizer_config.json`,
//! `special_tokens_map.json`), where a token is either a string or an `{"content": ...}` object.

use serde_json::Value;
use std::path::Path;

/// The special ids a tokenizer knows; `None` where the model defines no such token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpecialIds {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub pad: Option<u32>,
    pub unk: Option<u32>,
}

/// Special-token strings named by the HF side files of a directory (each `None` when not named).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpecialNames {
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub pad: Option<String>,
    pub unk: Option<String>,
}

impl SpecialNames {
    /// Reads `tokenizer_config.json` then `special_tokens_map.json` in `dir` (the first to name a token wins).
    /// Unreadable or malformed files are skipped with a warning: they only refine ids the model already has.
    pub fn from_dir(dir: &Path) -> SpecialNames {
        let mut names = SpecialNames::default();
        for file in ["tokenizer_config.json", "special_tokens_map.json"] {
            let path = dir.join(file);
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let value: Value = match serde_json::from_str(&text) {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!("{}: not JSON ({e}); ignoring it", path.display());
                    continue;
                }
            };
            for (slot, key) in [
                (&mut names.bos, "bos_token"),
                (&mut names.eos, "eos_token"),
                (&mut names.pad, "pad_token"),
                (&mut names.unk, "unk_token"),
            ] {
                if slot.is_none() {
                    *slot = token_content(value.get(key));
                }
            }
        }
        names
    }
}

/// A token given as `"<s>"` or `{"content": "<s>", ...}`.
fn token_content(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_string_and_object_tokens() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"bos_token": {"content": "<s>", "lstrip": false}, "pad_token": null}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("special_tokens_map.json"),
            r#"{"bos_token": "<x>", "eos_token": "</s>", "pad_token": "<unk>"}"#,
        )
        .unwrap();
        let n = SpecialNames::from_dir(dir.path());
        assert_eq!(n.bos.as_deref(), Some("<s>"));
        assert_eq!(n.eos.as_deref(), Some("</s>"));
        assert_eq!(n.pad.as_deref(), Some("<unk>"));
        assert_eq!(n.unk, None);
    }
}
