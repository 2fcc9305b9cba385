//! End-to-end tests of `ferrotune launch`: real worker processes (`ferrotune dist-selftest`) that build a
//! Gloo process group from the environment the launcher sets and check all_reduce / all_gather /
//! broadcast against values computed from the rank numbers; failure, SIGKILL and SIGINT handling; two
//! launchers as two nodes; and a hostfile job whose "ssh" is a stand-in script running the remote command
//! locally (this machine has no sshd).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ferrotune");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `ferrotune` whose stdout/stderr lines are collected as they arrive.
struct Job {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    lines: Receiver<(bool, String)>,
    stdout: String,
    stderr: String,
}

impl Job {
    fn start(args: &[&str], cwd: Option<&Path>) -> Job {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env_remove("OMP_NUM_THREADS")
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(d) = cwd {
            cmd.current_dir(d);
        }
        let mut child = cmd.spawn().unwrap();
        let (tx, rx) = channel();
        for (is_err, src) in [
            (
                false,
                Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            ),
            (true, Box::new(child.stderr.take().unwrap())),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(src).lines().map_while(Result::ok) {
                    let _ = tx.send((is_err, line));
                }
            });
        }
        Job {
            stdin: child.stdin.take(),
            child,
            lines: rx,
            stdout: String::new(),
            stderr: String::new(),
        }
    }

    /// `ferrotune launch --nproc-per-node 2 --master-port PORT [launch_flags] -- dist-selftest [selftest_flags]`.
    fn selftest2(port: &str, launch_flags: &[&str], selftest_flags: &[&str]) -> Job {
        let mut args = vec!["launch", "--nproc-per-node", "2", "--master-port", port];
        args.extend_from_slice(launch_flags);
        args.extend_from_slice(&["--", "dist-selftest"]);
        args.extend_from_slice(selftest_flags);
        Job::start(&args, None)
    }

    /// Asserts that stdout (`err` false) or stderr (`err` true) contains `needle`, printing both if not.
    fn expect(&self, err: bool, needle: &str) {
        let text = if err { &self.stderr } else { &self.stdout };
        assert!(
            text.contains(needle),
            "missing {needle:?}\n{}",
            self.output()
        );
    }

    fn record(&mut self, (is_err, line): (bool, String)) {
        let s = if is_err {
            &mut self.stderr
        } else {
            &mut self.stdout
        };
        s.push_str(&line);
        s.push('\n');
    }

    /// Reads output until a stdout line (already seen or new) contains `needle`; returns that line.
    fn wait_for(&mut self, needle: &str, limit: Duration) -> String {
        if let Some(l) = self.stdout.lines().find(|l| l.contains(needle)) {
            return l.to_string();
        }
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(l) = self.lines.recv_timeout(Duration::from_millis(100)) {
                let hit = !l.0 && l.1.contains(needle);
                let text = l.1.clone();
                self.record(l);
                if hit {
                    return text;
                }
            }
        }
        let _ = self.child.kill();
        panic!(
            "no line with {needle:?} within {limit:?}\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
    }

    /// Waits for the exit (killing it after `limit`); returns the status and how long it took.
    fn finish(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                panic!(
                    "still running after {limit:?}\nstdout:\n{}\nstderr:\n{}",
                    self.stdout, self.stderr
                );
            }
            while let Ok(l) = self.lines.try_recv() {
                self.record(l);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = start.elapsed();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(500)) {
            self.record(l);
        }
        (status, took)
    }

    fn output(&self) -> String {
        format!("stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr)
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// The self-test line rank `r` of world `w` must print: sum of (k + 1) over ranks, every rank's
/// [10k, 10k + 1] in rank order, and the last rank's [100(w - 1) + i].
fn collective_results(w: usize) -> String {
    let sum = (w * (w + 1) / 2) as f32;
    let gathered: Vec<f32> = (0..w)
        .flat_map(|k| [10.0 * k as f32, 10.0 * k as f32 + 1.0])
        .collect();
    let bcast: Vec<f32> = (0..3).map(|i| (100 * (w - 1) + i) as f32).collect();
    format!(
        "all_reduce {:?} all_gather {gathered:?} broadcast {bcast:?} ok",
        [sum; 3]
    )
}

fn port_arg() -> String {
    free_port().to_string()
}

#[test]
fn world_2_selftest_runs_rank_prefixed_and_exits_0() {
    let port = port_arg();
    let mut job = Job::selftest2(&port, &[], &[]);
    let (status, _) = job.finish(Duration::from_secs(60));
    assert!(status.success(), "{}", job.output());
    let cores = std::thread::available_parallelism().unwrap().get();
    let omp = (cores / 2).max(1);
    for r in 0..2 {
        let want = format!(
            "[rank {r}] selftest rank {r}/2 local {r}/2 node 0 omp {omp} master 127.0.0.1:{port}: {}",
            collective_results(2)
        );
        assert!(
            job.stdout.lines().any(|l| l == want),
            "missing {want:?}\n{}",
            job.output()
        );
    }
    job.expect(
        true,
        &format!("OMP_NUM_THREADS is unset: using {omp} per worker"),
    );
}

#[test]
fn sigkilled_worker_fails_the_launch_naming_rank_and_signal() {
    let port = port_arg();
    let mut job = Job::selftest2(&port, &["--grace-period", "5"], &["--hang"]);
    let line = job.wait_for("selftest rank 1 pid", Duration::from_secs(60));
    job.wait_for("selftest rank 0 pid", Duration::from_secs(30));
    let pid: u32 = line.split_whitespace().nth(6).unwrap().parse().unwrap();
    signal(pid, "-KILL");
    let (status, took) = job.finish(Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{}", job.output());
    assert!(took < Duration::from_secs(60), "took {took:?}");
    let want = format!("error: rank 1 (pid {pid}) was killed by signal 9 (SIGKILL)");
    job.expect(true, &want);
    // The surviving rank was asked to stop with SIGTERM.
    job.expect(false, "[rank 0] selftest rank 0 received SIGTERM");
}

#[test]
fn failing_worker_exit_status_is_named() {
    let port = port_arg();
    let mut job = Job::selftest2(
        &port,
        &[],
        &["--hang", "--fail-rank", "1", "--exit-code", "7"],
    );
    let (status, took) = job.finish(Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{}", job.output());
    assert!(took < Duration::from_secs(60));
    job.expect(true, "error: rank 1 (pid ");
    job.expect(true, "exited with status 7");
    job.expect(
        true,
        "[rank 1] selftest rank 1: failing on purpose with status 7",
    );
}

#[test]
fn sigint_is_forwarded_to_every_worker() {
    let port = port_arg();
    let mut job = Job::selftest2(&port, &[], &["--hang"]);
    job.wait_for("selftest rank 0 pid", Duration::from_secs(60));
    job.wait_for("selftest rank 1 pid", Duration::from_secs(30));
    signal(job.child.id(), "-INT");
    let (status, _) = job.finish(Duration::from_secs(60));
    // Both workers saw SIGINT and exited 0, so the launch succeeds.
    assert!(status.success(), "{}", job.output());
    for r in 0..2 {
        let want = format!("[rank {r}] selftest rank {r} received SIGINT");
        job.expect(false, &want);
    }
    job.expect(true, "SIGINT: forwarding it");
}

#[test]
fn two_launchers_form_a_two_node_job() {
    let port = port_arg();
    let node = |k: &str| {
        Job::start(
            &[
                "launch",
                "--nnodes",
                "2",
                "--node-rank",
                k,
                "--nproc-per-node",
                "1",
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                &port,
                "--",
                "dist-selftest",
            ],
            None,
        )
    };
    let (mut n0, mut n1) = (node("0"), node("1"));
    let (s0, _) = n0.finish(Duration::from_secs(60));
    let (s1, _) = n1.finish(Duration::from_secs(60));
    assert!(
        s0.success() && s1.success(),
        "node 0:\n{}\nnode 1:\n{}",
        n0.output(),
        n1.output()
    );
    for (r, job) in [(0, &n0), (1, &n1)] {
        let want = format!(
            "[rank {r}] selftest rank {r}/2 local 0/1 node {r} omp {} master 127.0.0.1:{port}: {}",
            std::thread::available_parallelism().unwrap().get(),
            collective_results(2)
        );
        assert!(
            job.stdout.lines().any(|l| l == want),
            "missing {want:?}\n{}",
            job.output()
        );
    }
}

#[test]
fn hostfile_include_starts_each_node_over_ssh() {
    let dir = tempfile::tempdir().unwrap();
    let fake_ssh = dir.path().join("fake-ssh");
    std::fs::write(
        &fake_ssh,
        "#!/bin/sh\n# Stand-in for ssh: drops the options, records the remote command, runs it here.\n\
         while [ $# -gt 2 ]; do shift; done\n\
         printf '%s\\n' \"$2\" > \"$(dirname \"$0\")/ssh-$1.cmd\"\n\
         exec sh -c \"$2\"\n",
    )
    .unwrap();
    std::fs::set_permissions(
        &fake_ssh,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("hostfile"),
        "# test cluster\nnodeA slots=2\n\nnodeB slots=2\nnodeC slots=1\n",
    )
    .unwrap();
    let ssh = format!("{} -o BatchMode=yes", fake_ssh.display());
    let port = port_arg();
    let mut job = Job::start(
        &[
            "launch",
            "--hostfile",
            "hostfile",
            "--include",
            "nodeA:1@nodeB:0",
            "--ssh",
            &ssh,
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            &port,
            "--",
            "dist-selftest",
        ],
        Some(dir.path()),
    );
    let (status, _) = job.finish(Duration::from_secs(60));
    assert!(status.success(), "{}", job.output());
    for (r, host) in [(0, "nodeA"), (1, "nodeB")] {
        let want = format!(
            "{host}: [rank {r}] selftest rank {r}/2 local 0/1 node {r} omp {} master \
             127.0.0.1:{port}: {}",
            std::thread::available_parallelism().unwrap().get(),
            collective_results(2)
        );
        assert!(
            job.stdout.lines().any(|l| l == want),
            "missing {want:?}\n{}",
            job.output()
        );
        let cmd = std::fs::read_to_string(dir.path().join(format!("ssh-{host}.cmd"))).unwrap();
        let cwd = dir.path().canonicalize().unwrap();
        assert!(
            cmd.starts_with(&format!("cd {} && exec env ", cwd.display())),
            "{cmd}"
        );
        assert!(
            cmd.contains(&format!("CUDA_VISIBLE_DEVICES={}", 1 - r)),
            "slot {} of {host}: {cmd}",
            1 - r
        );
        assert!(
            cmd.contains(&format!(
                "--nnodes 2 --node-rank {r} --master-addr 127.0.0.1"
            )),
            "{cmd}"
        );
        // the ssh command is logged
        job.expect(true, &format!("node {r} ({host}): "));
    }
    assert!(!dir.path().join("ssh-nodeC.cmd").exists());
}

#[test]
fn slurm_sbatch_script_runs_one_launcher_per_node() {
    // Stand-ins for Slurm: `scontrol show hostnames` names this machine, `srun` runs its command once
    // per node (SLURM_NODEID 0 and 1) and fails when one of them does.
    let dir = tempfile::tempdir().unwrap();
    let write_exe = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    };
    write_exe("scontrol", "#!/bin/sh\necho 127.0.0.1\necho 127.0.0.2\n");
    write_exe(
        "srun",
        "#!/bin/sh\nwhile [ \"${1#--}\" != \"$1\" ]; do shift; done\n\
         SLURM_NODEID=0 \"$@\" & a=$!\nSLURM_NODEID=1 \"$@\" & b=$!\n\
         wait $a || exit 1\nwait $b || exit 1\n",
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/slurm/train.sbatch");
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap()
    );
    let port = port_arg();
    let out = Command::new("bash")
        .arg(&script)
        .arg("dist-selftest")
        .env("PATH", path)
        .env("FERROTUNE", BIN)
        .env("SLURM_NNODES", "2")
        .env("SLURM_JOB_NODELIST", "node[1-2]")
        .env("NPROC_PER_NODE", "1")
        .env("MASTER_PORT", &port)
        .env_remove("OMP_NUM_THREADS")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let text = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{:?}: {text}", out.status);
    for r in 0..2 {
        let want = format!(
            "[rank {r}] selftest rank {r}/2 local 0/1 node {r} omp {} master 127.0.0.1:{port}: {}",
            std::thread::available_parallelism().unwrap().get(),
            collective_results(2)
        );
        assert!(
            stdout.lines().any(|l| l == want),
            "missing {want:?}\n{text}"
        );
    }
}

#[test]
fn remote_launcher_stops_its_workers_when_stdin_closes() {
    // What a node started over ssh does when the connection goes away (sshd closes its stdin).
    let port = port_arg();
    let mut job = Job::start(
        &[
            "launch",
            "--nproc-per-node",
            "1",
            "--master-port",
            &port,
            "--exit-with-stdin",
            "--",
            "dist-selftest",
            "--hang",
        ],
        None,
    );
    job.wait_for("selftest rank 0 pid", Duration::from_secs(60));
    drop(job.stdin.take());
    let (status, _) = job.finish(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{}", job.output());
    job.expect(false, "[rank 0] selftest rank 0 received SIGTERM");
    job.expect(
        true,
        "error: stopped by EOF on stdin (the controlling connection closed); rank 0",
    );
}

#[test]
fn workers_die_with_a_sigkilled_launcher() {
    let port = port_arg();
    let mut job = Job::start(
        &[
            "launch",
            "--master-port",
            &port,
            "--",
            "dist-selftest",
            "--hang",
        ],
        None,
    );
    let line = job.wait_for("selftest rank 0 pid", Duration::from_secs(60));
    let pid: u32 = line.split_whitespace().nth(6).unwrap().parse().unwrap();
    signal(job.child.id(), "-KILL");
    job.finish(Duration::from_secs(10));
    // Gone, or a zombie waiting for whoever adopted it: either way no longer running.
    let running = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                !s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(false)
    };
    let start = Instant::now();
    while running() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!running(), "worker {pid} outlived its launcher");
}
