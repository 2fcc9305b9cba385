//! Ctrl-C (and SIGTERM) during training: the first signal asks the loop to save a checkpoint at the end of
//! the current step and exit cleanly; a second one exits at once (status 130), as users expect.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

static REQUESTED: AtomicBool = AtomicBool::new(false);
static INSTALLED: OnceLock<bool> = OnceLock::new();

/// Installs the handler once per process (later calls are no-ops). Returns false when another handler
/// owns the signal, in which case Ctrl-C keeps its default behaviour.
pub fn install() -> bool {
    *INSTALLED.get_or_init(|| {
        ctrlc::set_handler(|| {
            if REQUESTED.swap(true, Ordering::SeqCst) {
                eprintln!("\ninterrupted twice: exiting without saving");
                std::process::exit(130);
            }
            eprintln!(
                "\ninterrupt: saving a checkpoint after this step (Ctrl-C again to quit now)"
            );
        })
        .is_ok()
    })
}

/// True once a stop was requested.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Asks the loop to stop, as a signal would (used by tests and by callers embedding the trainer).
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Clears a request (a new run in the same process).
pub fn reset() {
    REQUESTED.store(false, Ordering::SeqCst);
}
