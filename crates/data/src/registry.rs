//! LLaMA-Factory-compatible dataset registries (`dataset_info.json`): a map from dataset name to where its
//! file is (`file_name`, relative to the registry's directory), its `formatting` (alpaca or sharegpt), whether
//! it is a preference set (`ranking`), and which `columns` and sharegpt `tags` hold what. Unknown keys
//! (hub URLs, subsets, ...) are accepted so existing registries load unchanged; remote-only entries are
//! reported when selected.

use crate::error::{DataError, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Record layout of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Formatting {
    #[default]
    Alpaca,
    Sharegpt,
}

/// Column names (LLaMA-Factory defaults when absent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Columns {
    pub prompt: String,
    pub query: String,
    pub response: String,
    pub history: Option<String>,
    pub messages: String,
    pub system: Option<String>,
    pub tools: Option<String>,
    pub chosen: Option<String>,
    pub rejected: Option<String>,
    pub kto_tag: Option<String>,
    pub images: Option<String>,
    pub videos: Option<String>,
    pub audios: Option<String>,
}

impl Default for Columns {
    fn default() -> Self {
        Columns {
            prompt: "instruction".into(),
            query: "input".into(),
            response: "output".into(),
            history: None,
            messages: "conversations".into(),
            system: None,
            tools: None,
            chosen: None,
            rejected: None,
            kto_tag: None,
            images: None,
            videos: None,
            audios: None,
        }
    }
}

/// Sharegpt role/content keys and role values (LLaMA-Factory defaults when absent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Tags {
    pub role_tag: String,
    pub content_tag: String,
    pub user_tag: String,
    pub assistant_tag: String,
    pub observation_tag: String,
    pub function_tag: String,
    pub system_tag: String,
}

impl Default for Tags {
    fn default() -> Self {
        Tags {
            role_tag: "from".into(),
            content_tag: "value".into(),
            user_tag: "human".into(),
            assistant_tag: "gpt".into(),
            observation_tag: "observation".into(),
            function_tag: "function_call".into(),
            system_tag: "system".into(),
        }
    }
}

impl Tags {
    /// The OpenAI `messages` convention (role/content, user/assistant/system/tool).
    pub fn openai() -> Tags {
        Tags {
            role_tag: "role".into(),
            content_tag: "content".into(),
            user_tag: "user".into(),
            assistant_tag: "assistant".into(),
            observation_tag: "tool".into(),
            function_tag: "function_call".into(),
            system_tag: "system".into(),
        }
    }
}

/// One registry entry.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DatasetAttr {
    #[serde(default)]
    pub file_name: Option<String>,
    #[serde(default)]
    pub formatting: Formatting,
    #[serde(default)]
    pub ranking: bool,
    #[serde(default)]
    pub columns: Columns,
    #[serde(default)]
    pub tags: Tags,
    #[serde(default)]
    pub num_samples: Option<u64>,
    #[serde(default)]
    pub hf_hub_url: Option<String>,
    #[serde(default)]
    pub ms_hub_url: Option<String>,
    #[serde(default)]
    pub split: Option<String>,
}

/// A dataset ready to read: its name, its files and how to interpret them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatasetSource {
    pub name: String,
    pub files: Vec<PathBuf>,
    pub attr: DatasetAttr,
}

/// A parsed `dataset_info.json` and the directory its file names are relative to.
#[derive(Debug, Clone)]
pub struct Registry {
    pub path: PathBuf,
    pub dir: PathBuf,
    pub entries: BTreeMap<String, DatasetAttr>,
}

impl Registry {
    /// Reads `dataset_info.json` (or the `dataset_info.json` inside a directory).
    pub fn load(path: &Path) -> Result<Registry> {
        let path = if path.is_dir() {
            path.join("dataset_info.json")
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&path).map_err(|e| DataError::io(&path, e))?;
        let entries: BTreeMap<String, DatasetAttr> =
            serde_json::from_str(&text).map_err(|e| DataError::Registry {
                path: path.clone(),
                msg: e.to_string(),
            })?;
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        Ok(Registry { path, dir, entries })
    }

    /// Resolves comma-separated dataset names to local files. Unknown names get a did-you-mean.
    pub fn resolve(&self, names: &str) -> Result<Vec<DatasetSource>> {
        let mut out = Vec::new();
        for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let Some(attr) = self.entries.get(name) else {
                let known: Vec<&str> = self.entries.keys().map(String::as_str).collect();
                let hint = ferrotune_core::config::closest(name, &known)
                    .map(|c| format!("; did you mean `{c}`?"))
                    .unwrap_or_default();
                return Err(DataError::Registry {
                    path: self.path.clone(),
                    msg: format!("no dataset named `{name}`{hint}"),
                });
            };
            let Some(file) = &attr.file_name else {
                return Err(DataError::Registry {
                    path: self.path.clone(),
                    msg: format!(
                        "dataset `{name}` has no local `file_name` (remote hub datasets are not supported: download it and register the file)"
                    ),
                });
            };
            let files = expand_files(&self.dir.join(file))?;
            out.push(DatasetSource {
                name: name.to_string(),
                files,
                attr: attr.clone(),
            });
        }
        if out.is_empty() {
            return Err(DataError::Config("no dataset names given".into()));
        }
        Ok(out)
    }
}

/// A file, or the data files of a directory (sorted by name).
pub fn expand_files(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| DataError::io(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("json" | "jsonl" | "txt")
                    )
            })
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(DataError::Config(format!(
                "{}: no .json/.jsonl/.txt files in this directory",
                path.display()
            )));
        }
        Ok(files)
    } else if path.is_file() {
        Ok(vec![path.to_path_buf()])
    } else {
        Err(DataError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "dataset file not found"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_keys_follow_llama_factory() {
        let json = r#"{
          "a": {"file_name": "a.json"},
          "b": {"file_name": "b.json", "formatting": "sharegpt", "ranking": true,
                "columns": {"messages": "messages"}, "tags": {"role_tag": "role", "user_tag": "user"}},
          "hub": {"hf_hub_url": "x/y", "subset": "s", "folder": "f"}
        }"#;
        let m: BTreeMap<String, DatasetAttr> = serde_json::from_str(json).unwrap();
        assert_eq!(m["a"].formatting, Formatting::Alpaca);
        assert_eq!(m["a"].columns.prompt, "instruction");
        assert_eq!(m["a"].columns.response, "output");
        assert_eq!(m["b"].columns.messages, "messages");
        assert_eq!(m["b"].tags.role_tag, "role");
        assert_eq!(m["b"].tags.content_tag, "value");
        assert!(m["b"].ranking);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("dataset_info.json"), json).unwrap();
        std::fs::write(dir.path().join("a.json"), "[]").unwrap();
        let reg = Registry::load(dir.path()).unwrap();
        assert_eq!(
            reg.resolve("a").unwrap()[0].files,
            vec![dir.path().join("a.json")]
        );
        let e = reg.resolve("hub").unwrap_err().to_string();
        assert!(e.contains("remote"), "{e}");
        let e = reg.resolve("a,bb").unwrap_err().to_string();
        assert!(e.contains("did you mean `b`"), "{e}");
    }
}
