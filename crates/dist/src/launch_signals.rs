//! Signals for the launcher and its workers: counters of the SIGINT / SIGTERM this process received
//! (an async-signal-safe handler that only increments atomics; callers poll), sending a signal to a child,
//! and readable names for exit signals.

use std::sync::atomic::{AtomicUsize, Ordering};

static SIGINTS: AtomicUsize = AtomicUsize::new(0);
static SIGTERMS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    match sig {
        libc::SIGINT => SIGINTS.fetch_add(1, Ordering::SeqCst),
        _ => SIGTERMS.fetch_add(1, Ordering::SeqCst),
    };
}

/// Replaces the default action of SIGINT and SIGTERM with counting (see [`received`]).
pub fn install_counters() -> std::io::Result<()> {
    let handler = on_signal as extern "C" fn(libc::c_int);
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only touches atomics, which is async-signal-safe.
        let previous = unsafe { libc::signal(sig, handler as libc::sighandler_t) };
        if previous == libc::SIG_ERR {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// How many SIGINT and SIGTERM this process received since [`install_counters`].
pub fn received() -> (usize, usize) {
    (
        SIGINTS.load(Ordering::SeqCst),
        SIGTERMS.load(Ordering::SeqCst),
    )
}

/// The signals the launcher sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Int,
    Term,
    Kill,
}

impl Signal {
    pub fn number(self) -> i32 {
        match self {
            Signal::Int => libc::SIGINT,
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
        }
    }
}

/// Sends `sig` to process `pid`; a process that is already gone is not an error.
pub fn send(pid: u32, sig: Signal) -> std::io::Result<()> {
    kill(pid, sig, false)
}

/// Sends `sig` to the process group led by `pid` (the child and whatever it started), as a terminal
/// would; a group that is already gone is not an error.
pub fn send_group(pid: u32, sig: Signal) -> std::io::Result<()> {
    kill(pid, sig, true)
}

fn kill(pid: u32, sig: Signal, group: bool) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "bad pid"))?;
    let target = if group { -pid } else { pid };
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(target, sig.number()) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(e)
    }
}

/// `SIGKILL` for 9, and so on; `signal N` for the uncommon ones.
pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        _ => return format!("signal {sig}"),
    };
    name.to_string()
}

/// "exited with status 3" / "was killed by signal 9 (SIGKILL)".
pub fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig} ({})", signal_name(sig)),
        (None, None) => format!("ended with {status}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn exit_descriptions_come_from_real_processes() {
        let s = Command::new("sh").args(["-c", "exit 7"]).status().unwrap();
        assert_eq!(describe_exit(s), "exited with status 7");
        let s = Command::new("sh")
            .args(["-c", "kill -9 $$"])
            .status()
            .unwrap();
        assert_eq!(describe_exit(s), "was killed by signal 9 (SIGKILL)");
        let s = Command::new("sh")
            .args(["-c", "kill -TERM $$"])
            .status()
            .unwrap();
        assert_eq!(describe_exit(s), "was killed by signal 15 (SIGTERM)");
    }
}
