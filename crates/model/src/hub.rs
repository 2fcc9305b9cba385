//! Downloading a model repository from the Hugging Face Hub (or any server speaking its file endpoints).
//!
//! The file list comes from `{endpoint}/api/models/{repo}/revision/{rev}?blobs=true` (each sibling's path,
//! size and, for LFS files, sha256); each file from `{endpoint}/{repo}/resolve/{rev}/{path}` through
//! [`crate::hub_fetch`], which resumes, retries and verifies. The endpoint is `HF_ENDPOINT` or
//! huggingface.co; the token `HF_TOKEN`, else the token file of `huggingface-cli login`
//! (`HF_TOKEN_PATH`, `$HF_HOME/token`, `~/.cache/huggingface/token`).
//!
//! `hf-hub` was considered: its sync API resumes `.part` files, but it only writes into the HF cache layout
//! (blobs + symlinks), has no file filter and does not verify sha256, so this small ureq client is used.

use crate::hub_fetch::{fetch_file, FetchSpec};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a download failed. Every variant names the repository and, where there is one, the file.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("repository id {0:?} is not of the form ORG/NAME")]
    BadRepoId(String),
    #[error("{what} not found (HTTP 404 from {url}); check the repository id, the revision and the file name")]
    NotFound { what: String, url: String },
    #[error("access to {what} denied (HTTP {status} from {url}); the hub answers so for private or gated repositories (and, without a token, for missing ones): set HF_TOKEN to a token that may read it (or run `huggingface-cli login`)")]
    Unauthorized {
        what: String,
        status: u16,
        url: String,
    },
    #[error("{what}: HTTP {status} from {url}")]
    Http {
        what: String,
        status: u16,
        url: String,
    },
    #[error("{what}: giving up after {attempts} attempts ({url}): {last}")]
    Transport {
        what: String,
        attempts: u32,
        url: String,
        last: String,
    },
    #[error("{what}: unexpected response from {url}: {msg}")]
    BadResponse {
        what: String,
        url: String,
        msg: String,
    },
    #[error("{what}: downloaded file does not match the hub: {msg}")]
    Integrity { what: String, msg: String },
    #[error("no file of {repo} at revision {revision} matches --include {patterns:?}")]
    NothingMatched {
        repo: String,
        revision: String,
        patterns: Vec<String>,
    },
    #[error(transparent)]
    Fs(#[from] ferrotune_core::FsError),
}

/// What to download and how.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// Base URL, without trailing slash (`https://huggingface.co`).
    pub endpoint: String,
    pub token: Option<String>,
    pub revision: String,
    /// Glob patterns (`*`, `?`); a file is fetched when it matches any. Empty: every file.
    pub include: Vec<String>,
    /// Attempts per request after the first.
    pub retries: u32,
    /// First backoff delay; doubled after each failed attempt, capped at 30 s.
    pub backoff: Duration,
    pub progress: bool,
}

impl HubOptions {
    /// Defaults from the environment: `HF_ENDPOINT`, the token (see [`token_from_env`]), revision `main`.
    pub fn from_env() -> Self {
        let endpoint = std::env::var("HF_ENDPOINT")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "https://huggingface.co".to_string());
        HubOptions {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token: token_from_env(),
            revision: "main".into(),
            include: Vec::new(),
            retries: 5,
            backoff: Duration::from_millis(500),
            progress: true,
        }
    }
}

/// `HF_TOKEN`, else the first readable token file: `HF_TOKEN_PATH`, `$HF_HOME/token`,
/// `$XDG_CACHE_HOME/huggingface/token`, `~/.cache/huggingface/token`.
pub fn token_from_env() -> Option<String> {
    if let Some(t) = std::env::var("HF_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        return Some(t.trim().to_string());
    }
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let cache = var("XDG_CACHE_HOME").or_else(|| var("HOME").map(|h| h.join(".cache")));
    let candidates = [
        var("HF_TOKEN_PATH"),
        var("HF_HOME").map(|h| h.join("token")),
        cache.map(|c| c.join("huggingface/token")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// A file of the repository as the hub lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteFile {
    pub path: String,
    pub size: Option<u64>,
    pub sha256: Option<String>,
}

/// fnmatch-style matching: `*` any run of characters (slashes included, as huggingface_hub's patterns),
/// `?` one character.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Percent-encodes a path segment (revision names like `refs/pr/1` included).
fn encode(seg: &str) -> String {
    seg.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn encode_path(path: &str) -> String {
    path.split('/').map(encode).collect::<Vec<_>>().join("/")
}

pub(crate) fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .user_agent(concat!("ferrotune/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

fn validate_repo(repo: &str) -> Result<(), HubError> {
    let ok = repo.split('/').count() == 2
        && repo
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != "..");
    ok.then_some(())
        .ok_or_else(|| HubError::BadRepoId(repo.to_string()))
}

/// Lists the repository's files at the revision, with sizes and LFS sha256.
pub fn list_files(repo: &str, opts: &HubOptions) -> Result<Vec<RemoteFile>, HubError> {
    validate_repo(repo)?;
    let url = format!(
        "{}/api/models/{repo}/revision/{}?blobs=true",
        opts.endpoint,
        encode(&opts.revision)
    );
    let what = format!("repository {repo} (revision {})", opts.revision);
    let body = crate::hub_fetch::get_text(&agent(), &url, opts, &what)?;
    let bad = |msg: String| HubError::BadResponse {
        what: what.clone(),
        url: url.clone(),
        msg,
    };
    let v: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| bad(format!("not JSON: {e}")))?;
    let siblings = v
        .get("siblings")
        .and_then(|s| s.as_array())
        .ok_or_else(|| bad("no `siblings` list".into()))?;
    siblings
        .iter()
        .map(|s| {
            let path = s
                .get("rfilename")
                .and_then(|p| p.as_str())
                .ok_or_else(|| bad("a sibling without `rfilename`".into()))?;
            if path
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
                || path.starts_with('/')
            {
                return Err(bad(format!("unsafe file name {path:?}")));
            }
            let lfs = s.get("lfs");
            Ok(RemoteFile {
                path: path.to_string(),
                size: s
                    .get("size")
                    .and_then(|x| x.as_u64())
                    .or_else(|| lfs.and_then(|l| l.get("size")).and_then(|x| x.as_u64())),
                sha256: lfs
                    .and_then(|l| l.get("sha256"))
                    .and_then(|x| x.as_str())
                    .map(|h| h.to_ascii_lowercase()),
            })
        })
        .collect()
}

/// Downloads the repository's files (those matching `opts.include`) into `out`, returning their paths.
/// Files already present with the listed size and hash are kept.
pub fn download_repo(repo: &str, out: &Path, opts: &HubOptions) -> Result<Vec<PathBuf>, HubError> {
    let files: Vec<RemoteFile> = list_files(repo, opts)?
        .into_iter()
        .filter(|f| opts.include.is_empty() || opts.include.iter().any(|p| glob_match(p, &f.path)))
        .collect();
    if files.is_empty() {
        return Err(HubError::NothingMatched {
            repo: repo.into(),
            revision: opts.revision.clone(),
            patterns: opts.include.clone(),
        });
    }
    tracing::info!(repo, revision = %opts.revision, files = files.len(), out = %out.display(), "downloading");
    let agent = agent();
    let mut done = Vec::with_capacity(files.len());
    for f in &files {
        let url = format!(
            "{}/{repo}/resolve/{}/{}",
            opts.endpoint,
            encode(&opts.revision),
            encode_path(&f.path)
        );
        let dest = out.join(&f.path);
        let spec = FetchSpec {
            what: format!("file {} of {repo} (revision {})", f.path, opts.revision),
            url,
            dest: dest.clone(),
            size: f.size,
            sha256: f.sha256.clone(),
        };
        fetch_file(&agent, &spec, opts)?;
        done.push(dest);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*.safetensors", "model.safetensors"));
        assert!(glob_match("*.json", "sub/config.json"));
        assert!(glob_match("tokenizer.?odel", "tokenizer.model"));
        assert!(!glob_match("*.bin", "model.safetensors"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("a*b", "acbx"));
    }

    #[test]
    fn encodes_revisions_and_checks_repo_ids() {
        assert_eq!(encode("refs/pr/1"), "refs%2Fpr%2F1");
        assert_eq!(encode_path("a b/c.json"), "a%20b/c.json");
        assert!(validate_repo("org/name").is_ok());
        assert!(validate_repo("name").is_err());
        assert!(validate_repo("org/../x").is_err());
    }
}
