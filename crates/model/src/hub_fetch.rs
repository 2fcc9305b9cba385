//! One resumable, verified file download (and the retried GET behind the file listing).
//!
//! Bytes go to `<name>.incomplete` beside the destination. A later attempt (after a dropped connection, a
//! timeout, a 5xx or 429) asks for the rest with `Range: bytes=N-`; a server that answers 200 instead of
//! 206 restarts the file. Attempts are bounded (`retries`), with exponential backoff. When the body is
//! complete its size and sha256 are checked against the hub's listing, the file is synced and renamed to
//! its final name: a half-written file never carries the final name. 401/403/404 fail at once.

use crate::hub::{HubError, HubOptions};
use ferrotune_core::FsError;
use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One file to fetch.
#[derive(Debug, Clone)]
pub struct FetchSpec {
    /// Human name for errors: `file config.json of org/name (revision main)`.
    pub what: String,
    pub url: String,
    pub dest: PathBuf,
    pub size: Option<u64>,
    pub sha256: Option<String>,
}

/// What one attempt ended with, when it did not produce the whole file.
enum Attempt {
    /// Worth retrying (dropped connection, 5xx, short body).
    Retry(String),
    Fatal(HubError),
}

fn status_error(what: &str, url: &str, status: u16) -> Attempt {
    match status {
        401 | 403 => Attempt::Fatal(HubError::Unauthorized {
            what: what.into(),
            status,
            url: url.into(),
        }),
        404 => Attempt::Fatal(HubError::NotFound {
            what: what.into(),
            url: url.into(),
        }),
        429 | 500..=599 => Attempt::Retry(format!("HTTP {status}")),
        _ => Attempt::Fatal(HubError::Http {
            what: what.into(),
            status,
            url: url.into(),
        }),
    }
}

fn request(
    agent: &ureq::Agent,
    url: &str,
    opts: &HubOptions,
    range_from: u64,
) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
    let mut req = agent.get(url);
    if let Some(t) = &opts.token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    if range_from > 0 {
        req = req.header("Range", &format!("bytes={range_from}-"));
    }
    req.call()
}

/// Runs `attempt` up to `1 + opts.retries` times with exponential backoff between retryable failures.
fn with_retries<T>(
    what: &str,
    url: &str,
    opts: &HubOptions,
    mut attempt: impl FnMut() -> Result<T, Attempt>,
) -> Result<T, HubError> {
    let mut delay = opts.backoff;
    let mut last = String::new();
    for n in 0..=opts.retries {
        if n > 0 {
            tracing::warn!(what, attempt = n + 1, error = %last, "retrying after {delay:?}");
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_secs(30));
        }
        match attempt() {
            Ok(v) => return Ok(v),
            Err(Attempt::Fatal(e)) => return Err(e),
            Err(Attempt::Retry(msg)) => last = msg,
        }
    }
    Err(HubError::Transport {
        what: what.into(),
        attempts: opts.retries + 1,
        url: url.into(),
        last,
    })
}

/// GETs a small text resource (the file listing), retrying transient failures.
pub(crate) fn get_text(
    agent: &ureq::Agent,
    url: &str,
    opts: &HubOptions,
    what: &str,
) -> Result<String, HubError> {
    with_retries(what, url, opts, || {
        let mut resp = request(agent, url, opts, 0).map_err(|e| Attempt::Retry(e.to_string()))?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(status_error(what, url, status));
        }
        resp.body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .map_err(|e| Attempt::Retry(e.to_string()))
    })
}

fn incomplete_path(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!("{name}.incomplete"))
}

fn sha256_of(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether `path` already holds the listed content.
fn matches_listing(path: &Path, spec: &FetchSpec) -> io::Result<Option<String>> {
    let len = fs::metadata(path)?.len();
    if let Some(size) = spec.size.filter(|s| *s != len) {
        return Ok(Some(format!("size {len} bytes, listed {size}")));
    }
    if let Some(want) = &spec.sha256 {
        let got = sha256_of(path)?;
        if &got != want {
            return Ok(Some(format!("sha256 {got}, listed {want}")));
        }
    }
    Ok(None)
}

fn progress_bar(spec: &FetchSpec, show: bool) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::with_draw_target(
        spec.size,
        indicatif::ProgressDrawTarget::stderr(),
    );
    let style = indicatif::ProgressStyle::with_template(
        "{msg:30!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .expect("valid template")
    .progress_chars("=> ");
    pb.set_style(style);
    pb.set_message(
        spec.dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    pb
}

/// One attempt: continue `tmp` from its current length; Ok when the body ended normally.
fn attempt_once(
    agent: &ureq::Agent,
    spec: &FetchSpec,
    opts: &HubOptions,
    tmp: &Path,
    pb: &indicatif::ProgressBar,
) -> Result<(), Attempt> {
    let io_fatal = |op: &'static str, e: io::Error| Attempt::Fatal(FsError::new(op, tmp, e).into());
    let mut have = fs::metadata(tmp).map(|m| m.len()).unwrap_or(0);
    if let Some(size) = spec.size {
        if have == size {
            return Ok(());
        }
        if have > size {
            have = 0;
        }
    }
    let mut resp =
        request(agent, &spec.url, opts, have).map_err(|e| Attempt::Retry(e.to_string()))?;
    let status = resp.status().as_u16();
    let append = match status {
        206 => {
            let cr = resp
                .headers()
                .get("content-range")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let start = cr.strip_prefix("bytes ").and_then(|r| r.split('-').next());
            if start.and_then(|s| s.parse::<u64>().ok()) != Some(have) {
                return Err(Attempt::Fatal(HubError::BadResponse {
                    what: spec.what.clone(),
                    url: spec.url.clone(),
                    msg: format!("asked for bytes {have}-, got Content-Range {cr:?}"),
                }));
            }
            true
        }
        200 => false,
        416 => {
            // Our partial file is not a prefix the server can continue: start over.
            fs::remove_file(tmp).map_err(|e| io_fatal("removing", e))?;
            return Err(Attempt::Retry(
                "HTTP 416 for the partial file; restarting it".into(),
            ));
        }
        s => return Err(status_error(&spec.what, &spec.url, s)),
    };
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(tmp)
        .map_err(|e| io_fatal("opening", e))?;
    pb.set_position(if append { have } else { 0 });
    let mut reader = resp.body_mut().as_reader();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                file.flush().map_err(|e| io_fatal("writing", e))?;
                return Err(Attempt::Retry(format!("connection dropped: {e}")));
            }
        };
        file.write_all(&buf[..n])
            .map_err(|e| io_fatal("writing", e))?;
        pb.inc(n as u64);
    }
    file.sync_all().map_err(|e| io_fatal("syncing", e))?;
    let got = fs::metadata(tmp).map_err(|e| io_fatal("reading", e))?.len();
    match spec.size {
        Some(size) if got < size => Err(Attempt::Retry(format!(
            "body ended at {got} of {size} bytes"
        ))),
        _ => Ok(()),
    }
}

/// Downloads `spec` to `spec.dest` (resuming a previous `.incomplete` file), verifying size and sha256.
pub fn fetch_file(
    agent: &ureq::Agent,
    spec: &FetchSpec,
    opts: &HubOptions,
) -> Result<(), HubError> {
    if spec.dest.is_file() && matches!(matches_listing(&spec.dest, spec), Ok(None)) {
        tracing::info!(file = %spec.dest.display(), "already downloaded");
        return Ok(());
    }
    if let Some(parent) = spec.dest.parent() {
        fs::create_dir_all(parent).map_err(|e| FsError::new("creating directory", parent, e))?;
    }
    let tmp = incomplete_path(&spec.dest);
    let pb = progress_bar(spec, opts.progress);
    with_retries(&spec.what, &spec.url, opts, || {
        attempt_once(agent, spec, opts, &tmp, &pb)
    })?;
    pb.finish_and_clear();
    match matches_listing(&tmp, spec) {
        Ok(None) => {}
        Ok(Some(msg)) => {
            let _ = fs::remove_file(&tmp);
            return Err(HubError::Integrity {
                what: spec.what.clone(),
                msg,
            });
        }
        Err(e) => return Err(FsError::new("hashing", &tmp, e).into()),
    }
    fs::rename(&tmp, &spec.dest).map_err(|e| FsError::new("renaming into place", &spec.dest, e))?;
    tracing::info!(file = %spec.dest.display(), "downloaded");
    Ok(())
}
