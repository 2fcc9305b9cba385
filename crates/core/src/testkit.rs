//! Helpers for tests across the workspace: where the Python oracle interpreter and the shared real-data
//! fixtures are, and how a test that needs absent fixtures reports itself skipped by name.
//!
//! The oracle python is `$FERROTUNE_PYTHON` (exported by tools/with-torch), else the default venv of
//! tools/setup-torch.sh. Fixtures are `$FERROTUNE_FIXTURES`, else `../shared/fixtures` beside the workspace.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The workspace root (two levels above a crate's manifest dir).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent()
        .and_then(Path::parent)
        .unwrap_or(here)
        .to_path_buf()
}

/// The Python interpreter with torch, transformers, peft, sentencepiece... installed (tools/requirements-test.txt).
pub fn oracle_python() -> PathBuf {
    if let Some(p) = std::env::var_os("FERROTUNE_PYTHON") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("FERROTUNE_TORCH_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
                });
            cache.join("ferrotune/torch-2.11.0")
        });
    home.join("bin/python")
}

/// The shared real-data fixtures directory, if present.
pub fn fixtures_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("FERROTUNE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../shared/fixtures"));
    dir.is_dir().then_some(dir)
}

/// A fixture file by relative path (`tokenizers/llama2-tokenizer.model`), or `None` after printing
/// `skipped: <test>: ...` straight to stderr (not captured by the test harness, so it is always seen).
pub fn fixture_or_skip(test: &str, rel: &str) -> Option<PathBuf> {
    match fixtures_dir().map(|d| d.join(rel)).filter(|p| p.exists()) {
        Some(p) => Some(p),
        None => {
            report_skip(
                test,
                &format!("fixture {rel} is absent (../shared/fixtures or $FERROTUNE_FIXTURES)"),
            );
            None
        }
    }
}

/// Prints `skipped: <test>: <why>` on the real stderr.
pub fn report_skip(test: &str, why: &str) {
    let _ = writeln!(std::io::stderr(), "skipped: {test}: {why}");
}

/// Runs a Python oracle script from `tests/oracle/` with arguments, returning its stdout; panics with
/// the script's stderr if it fails (a test failure, with the reason in view).
pub fn run_oracle(script: &str, args: &[&str]) -> String {
    let path = workspace_root().join("tests/oracle").join(script);
    let out = std::process::Command::new(oracle_python())
        .arg(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "starting {} with {}: {e}",
                path.display(),
                oracle_python().display()
            )
        });
    assert!(
        out.status.success(),
        "oracle {} failed ({}):\n{}",
        path.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("oracle prints UTF-8")
}

/// The `main` of a `harness = false` test binary: runs `cases` (those whose name contains a command-line
/// filter, or all), each caught on panic, printing `test NAME ... ok|FAILED (secs)`; exits 1 when one failed.
pub fn run_cases(cases: &[(&str, fn())]) {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut failed = 0;
    for (name, case) in cases {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let start = std::time::Instant::now();
        let ok = std::panic::catch_unwind(*case).is_ok();
        println!(
            "test {name} ... {} ({:.2}s)",
            if ok { "ok" } else { "FAILED" },
            start.elapsed().as_secs_f64()
        );
        failed += usize::from(!ok);
    }
    if failed > 0 {
        eprintln!("{failed} test(s) failed");
        std::process::exit(1);
    }
}

/// Runs `program` with `args`, panicking with its stderr unless it succeeds; returns its stdout.
pub fn run_ok(program: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("stdout is UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_workspace_and_python() {
        assert!(workspace_root().join("Cargo.toml").is_file());
        assert!(workspace_root().join("crates/core").is_dir());
        assert!(oracle_python().ends_with("bin/python"));
    }
}
