//! Loading TOML configs with command-line overrides and helpful errors.
//!
//! A config file is read as a TOML table, `--set key=value` overrides are applied on top (dotted keys reach
//! nested tables; values are parsed as TOML literals and fall back to plain strings), and the result is
//! deserialized into the caller's struct. Structs use `#[serde(deny_unknown_fields)]`, and an unknown key
//! is reported with the closest known name ("did you mean `learning_rate`?").

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("override `{0}`: expected key=value")]
    BadOverride(String),
}

/// Parses `text` (the contents of `path`) with `overrides` applied, into `T`.
pub fn parse_with_overrides<T: DeserializeOwned>(
    path: &Path,
    text: &str,
    overrides: &[String],
) -> Result<T, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let mut table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| invalid(e.to_string()))?;
    for o in overrides {
        apply_override(&mut table, o)?;
    }
    T::deserialize(toml::Value::Table(table)).map_err(|e| invalid(with_suggestion(&e.to_string())))
}

/// Reads `path` and parses it with [`parse_with_overrides`].
pub fn load_with_overrides<T: DeserializeOwned>(
    path: &Path,
    overrides: &[String],
) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_with_overrides(path, &text, overrides)
}

/// Serializes a resolved config as TOML (for `output_dir/resolved_config.toml`).
pub fn to_toml<T: Serialize>(cfg: &T) -> Result<String, toml::ser::Error> {
    toml::to_string_pretty(cfg)
}

/// Applies one `a.b.c=value` override to a TOML table.
pub fn apply_override(table: &mut toml::Table, kv: &str) -> Result<(), ConfigError> {
    let (key, raw) = kv
        .split_once('=')
        .ok_or_else(|| ConfigError::BadOverride(kv.to_string()))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(ConfigError::BadOverride(kv.to_string()));
    }
    let value = parse_value(raw.trim());
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().expect("split yields at least one part");
    let mut cur = table;
    for p in parts {
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| ConfigError::BadOverride(kv.to_string()))?;
    }
    cur.insert(last.to_string(), value);
    Ok(())
}

fn parse_value(raw: &str) -> toml::Value {
    // Parse as the right-hand side of a TOML assignment: numbers, bools, arrays, quoted strings.
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

/// Adds "did you mean `x`?" to serde's unknown-field message, which lists the expected names.
fn with_suggestion(msg: &str) -> String {
    let Some(rest) = msg.split("unknown field `").nth(1) else {
        return msg.to_string();
    };
    let Some((unknown, tail)) = rest.split_once('`') else {
        return msg.to_string();
    };
    let expected: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
    match closest(unknown, &expected) {
        Some(best) => format!("{}\n  did you mean `{best}`?", msg.trim_end()),
        None => msg.to_string(),
    }
}

/// The candidate closest to `word` by edit distance, if it is close enough to be a plausible typo.
pub fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (levenshtein(word, c), *c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(2))
        .min()
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Opt {
        lr: f64,
    }
    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        learning_rate: f64,
        num_train_epochs: u32,
        template: String,
        #[serde(default)]
        opt: Option<Opt>,
    }

    #[test]
    fn overrides_win_and_parse_as_toml_values() {
        let p = Path::new("x.toml");
        let c: Cfg = parse_with_overrides(
            p,
            "learning_rate = 1e-4\nnum_train_epochs = 3\ntemplate = \"alpaca\"",
            &[
                "num_train_epochs=5".into(),
                "template=llama2".into(),
                "opt.lr=0.5".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.num_train_epochs, 5);
        assert_eq!(c.template, "llama2");
        assert_eq!(c.opt, Some(Opt { lr: 0.5 }));
        assert!(matches!(
            parse_with_overrides::<Cfg>(p, "", &["novalue".into()]),
            Err(ConfigError::BadOverride(_))
        ));
    }

    #[test]
    fn unknown_key_names_file_and_suggests() {
        let err = parse_with_overrides::<Cfg>(
            Path::new("configs/demo.toml"),
            "learing_rate = 1e-4\nnum_train_epochs = 3\ntemplate = \"alpaca\"",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("configs/demo.toml"), "{err}");
        assert!(err.contains("did you mean `learning_rate`?"), "{err}");
        let err = parse_with_overrides::<Cfg>(Path::new("c.toml"), "learning_rate = 'fast'", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("learning_rate") || err.contains("invalid type"),
            "{err}"
        );
    }

    #[test]
    fn closest_rejects_unrelated_words() {
        assert_eq!(
            closest("lora_rnak", &["lora_rank", "lora_alpha"]),
            Some("lora_rank")
        );
        assert_eq!(closest("zzzzzzzz", &["lora_rank", "lora_alpha"]), None);
    }
}
