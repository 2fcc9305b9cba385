//! Logging and error reporting for the binary: tracing to stderr (level from -v/-q, overridden by
//! RUST_LOG), errors as `error: ...` with their cause chain, and panics as one line instead of a backtrace.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Installs the tracing subscriber. Output goes to stderr so that stdout stays machine-readable.
pub fn init(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

/// Prints `error: <message>` and one `  caused by: ...` line per source.
pub fn report_error(e: &anyhow::Error) {
    eprintln!("error: {e}");
    for cause in e.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
}

/// Panics are bugs, but the user still gets one readable line (and a backtrace only with RUST_BACKTRACE).
pub fn install_panic_hook() {
    if std::env::var_os("RUST_BACKTRACE").is_some() {
        return;
    }
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let at = info
            .location()
            .map(|l| format!(" (at {}:{})", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!(
            "error: internal error: {msg}{at}; please report it (RUST_BACKTRACE=1 for details)"
        );
    }));
}
