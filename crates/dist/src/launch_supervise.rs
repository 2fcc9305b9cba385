//! Runs a set of child processes as one job: every line they print is prefixed (`[rank 3] ...`),
//! SIGINT/SIGTERM sent to the launcher are forwarded to them, and when one of them fails (non-zero exit or
//! a signal) the others get SIGTERM, then SIGKILL after a grace period, and the failure is reported naming
//! the child and how it ended.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::launch_signals::{self, describe_exit, Signal};

/// One child of the job: its name in messages ("rank 1", "node 1 (worker-1)"), the prefix of its output
/// lines, and the command (stdio is set by the supervisor).
#[derive(Debug)]
pub struct Unit {
    pub label: String,
    pub prefix: String,
    pub command: Command,
    /// Give the child a stdin pipe that stays open while the launcher runs (for `ssh`, whose remote
    /// command sees EOF when the connection goes away); otherwise stdin is /dev/null.
    pub keep_stdin: bool,
}

/// How the supervisor behaves.
#[derive(Debug, Clone)]
pub struct SuperviseOptions {
    /// Between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// Treat EOF on the launcher's own stdin like SIGTERM (a remote launcher whose ssh went away).
    pub exit_with_stdin: bool,
}

/// Why a job did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("starting {label}: {source}")]
    Spawn {
        label: String,
        source: std::io::Error,
    },
    #[error("{label} (pid {pid}) {how}; the other processes were stopped")]
    Failed {
        label: String,
        pid: u32,
        how: String,
    },
    #[error("stopped by {cause}; {label} (pid {pid}) {how}")]
    Stopped {
        cause: String,
        label: String,
        pid: u32,
        how: String,
    },
}

struct Running {
    label: String,
    child: Child,
    stdin: Option<ChildStdin>,
    status: Option<ExitStatus>,
}

/// Starts every unit and waits for all of them. Ok only when every child exits with status 0.
pub fn supervise(units: Vec<Unit>, opts: &SuperviseOptions) -> Result<(), SuperviseError> {
    if let Err(e) = launch_signals::install_counters() {
        tracing::warn!("cannot catch SIGINT/SIGTERM ({e}); they will not be forwarded");
    }
    let stdin_closed = Arc::new(AtomicBool::new(false));
    if opts.exit_with_stdin {
        let flag = Arc::clone(&stdin_closed);
        std::thread::spawn(move || {
            let mut sink = [0u8; 256];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
            flag.store(true, Ordering::SeqCst);
        });
    }
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let mut pumps = 0usize;
    let mut running: Vec<Running> = Vec::with_capacity(units.len());
    for unit in units {
        match start(unit, &done_tx) {
            Ok(r) => {
                pumps += 2;
                running.push(r);
            }
            Err(e) => {
                signal_all(&mut running, Signal::Kill);
                for r in &mut running {
                    let _ = r.child.wait();
                }
                return Err(e);
            }
        }
    }
    drop(done_tx);
    let result = watch(&mut running, opts, &stdin_closed);
    // Let the output threads print what is left; a grandchild holding a pipe open must not block us.
    let deadline = Instant::now() + Duration::from_secs(2);
    while pumps > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            break;
        }
        pumps -= 1;
    }
    result
}

fn start(mut unit: Unit, done: &mpsc::Sender<()>) -> Result<Running, SuperviseError> {
    let cmd = &mut unit.command;
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if unit.keep_stdin {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    {
        use std::os::unix::process::CommandExt;
        // Own process group: a terminal's Ctrl-C reaches the launcher only, which forwards it once.
        cmd.process_group(0);
        #[cfg(target_os = "linux")]
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                // Die with the launcher even when it is SIGKILLed and cannot stop us itself.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().map_err(|source| SuperviseError::Spawn {
        label: unit.label.clone(),
        source,
    })?;
    let out = child.stdout.take().expect("piped stdout");
    let err = child.stderr.take().expect("piped stderr");
    spawn_pump(out, unit.prefix.clone(), false, done.clone());
    spawn_pump(err, unit.prefix, true, done.clone());
    Ok(Running {
        label: unit.label,
        stdin: child.stdin.take(),
        child,
        status: None,
    })
}

/// Copies `src` line by line to the launcher's stdout or stderr, each line prefixed.
fn spawn_pump(
    src: impl Read + Send + 'static,
    prefix: String,
    to_stderr: bool,
    done: mpsc::Sender<()>,
) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(src);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if !buf.ends_with(b"\n") {
                buf.push(b'\n');
            }
            let mut line = Vec::with_capacity(prefix.len() + buf.len());
            line.extend_from_slice(prefix.as_bytes());
            line.extend_from_slice(&buf);
            // A closed launcher stdout/stderr must not stop the pump (the child would block on a full pipe).
            let _ = if to_stderr {
                std::io::stderr().lock().write_all(&line)
            } else {
                let mut o = std::io::stdout().lock();
                o.write_all(&line).and_then(|_| o.flush())
            };
        }
        let _ = done.send(());
    });
}

fn signal_all(running: &mut [Running], sig: Signal) {
    for r in running.iter_mut().filter(|r| r.status.is_none()) {
        // The child leads its own process group (see `start`): signal it and anything it started.
        if let Err(e) = launch_signals::send_group(r.child.id(), sig) {
            tracing::warn!("sending {sig:?} to {} (pid {}): {e}", r.label, r.child.id());
        }
        if sig != Signal::Int {
            r.stdin = None;
        }
    }
}

/// The supervision loop: polls the children and the launcher's signals every 50 ms.
fn watch(
    running: &mut [Running],
    opts: &SuperviseOptions,
    stdin_closed: &AtomicBool,
) -> Result<(), SuperviseError> {
    let (mut seen_int, mut seen_term) = launch_signals::received();
    let mut failure: Option<(usize, ExitStatus)> = None;
    let mut cause: Option<String> = None;
    let mut kill_at: Option<Instant> = None;
    let mut killed = false;
    let mut stdin_handled = false;
    loop {
        for i in 0..running.len() {
            if running[i].status.is_some() {
                continue;
            }
            let Ok(Some(status)) = running[i].child.try_wait() else {
                continue;
            };
            running[i].status = Some(status);
            let (label, pid) = (running[i].label.clone(), running[i].child.id());
            if status.success() {
                tracing::debug!("{label} (pid {pid}) exited with status 0");
                continue;
            }
            if failure.is_none() {
                failure = Some((i, status));
                tracing::error!(
                    "{label} (pid {pid}) {}; stopping the others (SIGTERM, SIGKILL after {:?})",
                    describe_exit(status),
                    opts.grace
                );
                signal_all(running, Signal::Term);
                kill_at.get_or_insert(Instant::now() + opts.grace);
            }
        }
        if running.iter().all(|r| r.status.is_some()) {
            break;
        }
        let (ints, terms) = launch_signals::received();
        if ints > seen_int {
            seen_int = ints;
            let n = ints;
            cause.get_or_insert_with(|| "SIGINT".into());
            if n == 1 {
                tracing::warn!("SIGINT: forwarding it to the workers (again to terminate them)");
                signal_all(running, Signal::Int);
            } else if n == 2 {
                tracing::warn!("second SIGINT: terminating the workers (again to kill them)");
                signal_all(running, Signal::Term);
                kill_at.get_or_insert(Instant::now() + opts.grace);
            } else {
                kill_at = Some(Instant::now());
            }
        }
        let stdin_gone = !stdin_handled && stdin_closed.load(Ordering::SeqCst);
        if terms > seen_term || stdin_gone {
            seen_term = terms;
            stdin_handled |= stdin_gone;
            let what = if stdin_gone {
                "EOF on stdin (the controlling connection closed)"
            } else {
                "SIGTERM"
            };
            cause.get_or_insert_with(|| what.into());
            tracing::warn!("{what}: terminating the workers");
            signal_all(running, Signal::Term);
            kill_at.get_or_insert(Instant::now() + opts.grace);
        }
        if !killed && kill_at.is_some_and(|t| Instant::now() >= t) {
            killed = true;
            tracing::warn!("grace period over: killing the remaining workers");
            signal_all(running, Signal::Kill);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let Some((i, status)) = failure else {
        return Ok(());
    };
    let r = &running[i];
    let (label, pid, how) = (r.label.clone(), r.child.id(), describe_exit(status));
    Err(match cause {
        Some(cause) => SuperviseError::Stopped {
            cause,
            label,
            pid,
            how,
        },
        None => SuperviseError::Failed { label, pid, how },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(label: &str, script: &str) -> Unit {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        Unit {
            label: label.into(),
            prefix: format!("[{label}] "),
            command,
            keep_stdin: false,
        }
    }

    fn opts() -> SuperviseOptions {
        SuperviseOptions {
            grace: Duration::from_secs(1),
            exit_with_stdin: false,
        }
    }

    #[test]
    fn all_zero_is_success() {
        supervise(vec![sh("a", "exit 0"), sh("b", "echo b; exit 0")], &opts()).unwrap();
    }

    #[test]
    fn a_failure_stops_the_others_and_is_named() {
        let start = Instant::now();
        let err = supervise(
            vec![
                sh("sleeper", "exec sleep 30"),
                sh("rank 1", "sleep 0.2; exit 4"),
            ],
            &opts(),
        )
        .unwrap_err();
        let SuperviseError::Failed { label, how, .. } = &err else {
            panic!("{err}");
        };
        assert_eq!(
            (label.as_str(), how.as_str()),
            ("rank 1", "exited with status 4")
        );
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the sleeper was not stopped"
        );
    }

    #[test]
    fn a_child_ignoring_sigterm_is_killed_after_the_grace_period() {
        let start = Instant::now();
        let err = supervise(
            vec![
                sh("stubborn", "trap '' TERM; while :; do sleep 0.1; done"),
                sh("rank 0", "kill -KILL $$"),
            ],
            &opts(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("rank 0 (pid ") && err.contains("signal 9 (SIGKILL)"),
            "{err}"
        );
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(10),
            "{took:?}"
        );
    }

    #[test]
    fn a_missing_program_is_a_spawn_error() {
        let mut u = sh("rank 0", "");
        u.command = Command::new("/nonexistent/ferrotune");
        let e = supervise(vec![u], &opts()).unwrap_err().to_string();
        assert!(e.starts_with("starting rank 0:"), "{e}");
    }
}
