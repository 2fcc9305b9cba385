//! Multi-node launches from a hostfile, pdsh-style: for every selected host, one
//! `ssh HOST 'cd CWD && exec env VARS... FERROTUNE launch --node-rank K ... -- ARGS'` whose remote
//! launcher starts that node's workers. The ssh processes are supervised like workers (output prefixed
//! `HOST: `); a remote launcher started with `--exit-with-stdin` stops its workers when its ssh goes away.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::hostfile::HostSlots;
use crate::launch::LaunchError;
use crate::launch_supervise::{supervise, SuperviseOptions, Unit};

/// Variables (by prefix, or exact name) copied from the launcher's environment to every node.
pub const FORWARDED_PREFIXES: &[&str] = &[
    "FERROTUNE_",
    "NCCL_",
    "GLOO_",
    "TORCH_",
    "CUDA_",
    "OMP_",
    "MKL_",
    "HF_",
    "RUST_LOG",
    "RUST_BACKTRACE",
    "LD_LIBRARY_PATH",
];

/// Everything needed to start the nodes of a hostfile job.
#[derive(Debug, Clone)]
pub struct MultiNodeLaunch {
    pub hosts: Vec<HostSlots>,
    pub master_addr: String,
    pub master_port: u16,
    /// The ssh program and its options (`["ssh"]`, `["ssh", "-p", "2222"]`).
    pub ssh: Vec<String>,
    /// The ferrotune binary, at the same path on every node (shared file system, as with pdsh).
    pub program: PathBuf,
    pub cwd: PathBuf,
    /// Variables to set on every node (see [`forwarded_env`]).
    pub env: Vec<(String, String)>,
    /// The worker command (subcommand and flags).
    pub args: Vec<String>,
    pub grace: Duration,
}

/// The command that starts one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCommand {
    pub node_rank: usize,
    pub host: String,
    /// ssh argv: program, options, host, remote shell command.
    pub argv: Vec<String>,
}

/// The variables of `vars` named by [`FORWARDED_PREFIXES`], sorted by name.
pub fn forwarded_env(vars: impl IntoIterator<Item = (String, String)>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(k, _)| k != "CUDA_VISIBLE_DEVICES")
        .filter(|(k, _)| FORWARDED_PREFIXES.iter().any(|p| k.starts_with(p)))
        .collect();
    out.sort();
    out
}

/// Quotes `s` for a POSIX shell (unquoted when it is made of safe characters only).
pub fn shell_quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

impl MultiNodeLaunch {
    /// Every node runs the same number of workers: the number of its selected slots.
    pub fn nproc_per_node(&self) -> Result<usize, LaunchError> {
        let first = self
            .hosts
            .first()
            .ok_or_else(|| LaunchError::Config("no hosts selected".into()))?;
        let n = first.slots.len();
        if let Some(h) = self.hosts.iter().find(|h| h.slots.len() != n) {
            return Err(LaunchError::Config(format!(
                "every node must run the same number of workers: {} has {} slot(s), {} has {}",
                first.host,
                n,
                h.host,
                h.slots.len()
            )));
        }
        Ok(n)
    }

    /// The ssh command line of every node, in node-rank order.
    pub fn node_commands(&self) -> Result<Vec<NodeCommand>, LaunchError> {
        let nproc = self.nproc_per_node()?;
        let nnodes = self.hosts.len();
        Ok(self
            .hosts
            .iter()
            .enumerate()
            .map(|(k, h)| {
                let devices: Vec<String> = h.slots.iter().map(|s| s.to_string()).collect();
                let mut words = vec!["cd".to_string(), shell_quote(&self.cwd.to_string_lossy())];
                words.extend(["&&".into(), "exec".into(), "env".into()]);
                for (key, value) in &self.env {
                    words.push(shell_quote(&format!("{key}={value}")));
                }
                words.push(format!("CUDA_VISIBLE_DEVICES={}", devices.join(",")));
                words.push(shell_quote(&self.program.to_string_lossy()));
                let launch = [
                    "launch".to_string(),
                    "--nproc-per-node".into(),
                    nproc.to_string(),
                    "--nnodes".into(),
                    nnodes.to_string(),
                    "--node-rank".into(),
                    k.to_string(),
                    "--master-addr".into(),
                    self.master_addr.clone(),
                    "--master-port".into(),
                    self.master_port.to_string(),
                    "--grace-period".into(),
                    self.grace.as_secs_f64().to_string(),
                    "--exit-with-stdin".into(),
                    "--".into(),
                ];
                words.extend(launch.iter().chain(&self.args).map(|w| shell_quote(w)));
                let mut argv = self.ssh.clone();
                argv.push(h.host.clone());
                argv.push(words.join(" "));
                NodeCommand {
                    node_rank: k,
                    host: h.host.clone(),
                    argv,
                }
            })
            .collect())
    }

    /// Starts every node over ssh and waits; Ok only when every node's launcher exits with status 0.
    pub fn run(&self) -> Result<(), LaunchError> {
        if self.ssh.is_empty() {
            return Err(LaunchError::Config("--ssh is empty".into()));
        }
        if self.args.is_empty() {
            return Err(LaunchError::Config("no worker command given".into()));
        }
        let nproc = self.nproc_per_node()?;
        let commands = self.node_commands()?;
        tracing::info!(
            "{} node(s) x {nproc} worker(s), master {}:{}",
            commands.len(),
            self.master_addr,
            self.master_port
        );
        let units = commands
            .into_iter()
            .map(|c| {
                let quoted: Vec<String> = c.argv.iter().map(|a| shell_quote(a)).collect();
                tracing::info!("node {} ({}): {}", c.node_rank, c.host, quoted.join(" "));
                let mut command = Command::new(&c.argv[0]);
                command.args(&c.argv[1..]);
                let first = c.node_rank * nproc;
                Unit {
                    label: format!(
                        "node {} ({}, ranks {}-{})",
                        c.node_rank,
                        c.host,
                        first,
                        first + nproc - 1
                    ),
                    prefix: format!("{}: ", c.host),
                    command,
                    keep_stdin: true,
                }
            })
            .collect();
        let options = SuperviseOptions {
            // The remote launchers need their own grace period to stop their workers first.
            grace: self.grace * 2 + Duration::from_secs(2),
            exit_with_stdin: false,
        };
        supervise(units, &options)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostfile::{filter_hosts, parse_hostfile};

    fn plan(include: &str) -> MultiNodeLaunch {
        let pool = parse_hostfile("master slots=2\nworker slots=2\nspare slots=2\n", "hf").unwrap();
        MultiNodeLaunch {
            hosts: filter_hosts(&pool, Some(include), None).unwrap(),
            master_addr: "master".into(),
            master_port: 29600,
            ssh: vec!["ssh".into(), "-p".into(), "2222".into()],
            program: "/opt/ferro tune/bin/ferrotune".into(),
            cwd: "/home/me/run's".into(),
            env: forwarded_env([
                ("NCCL_DEBUG".to_string(), "INFO".to_string()),
                ("HOME".to_string(), "/root".to_string()),
                ("FERROTUNE_X".to_string(), "a b".to_string()),
                ("CUDA_VISIBLE_DEVICES".to_string(), "7".to_string()),
            ]),
            args: vec![
                "train".into(),
                "cfg.toml".into(),
                "--set".into(),
                "output_dir=out dir".into(),
            ],
            grace: Duration::from_secs(10),
        }
    }

    #[test]
    fn ssh_command_lines_per_node() {
        let cmds = plan("master:0@worker:1").node_commands().unwrap();
        assert_eq!(cmds.len(), 2);
        let remote = |k: usize, dev: &str| {
            format!(
                "cd '/home/me/run'\\''s' && exec env 'FERROTUNE_X=a b' NCCL_DEBUG=INFO \
                 CUDA_VISIBLE_DEVICES={dev} '/opt/ferro tune/bin/ferrotune' launch --nproc-per-node 1 \
                 --nnodes 2 --node-rank {k} --master-addr master --master-port 29600 --grace-period 10 \
                 --exit-with-stdin -- train cfg.toml --set 'output_dir=out dir'"
            )
        };
        assert_eq!(
            cmds[0].argv,
            ["ssh", "-p", "2222", "master", &remote(0, "0")]
        );
        assert_eq!(
            cmds[1].argv,
            ["ssh", "-p", "2222", "worker", &remote(1, "1")]
        );
        assert_eq!((cmds[1].node_rank, cmds[1].host.as_str()), (1, "worker"));
    }

    #[test]
    fn the_remote_command_parses_back_to_the_same_words() {
        let cmds = plan("spare@worker").node_commands().unwrap();
        // Let a real shell split the remote command (replacing `cd`/`exec` by printing each word).
        let script = cmds[1]
            .argv
            .last()
            .unwrap()
            .replacen("cd ", "printf '%s\\n' ", 1);
        let script = script.replacen(" && exec env ", " ; printf '%s\\n' ", 1);
        let out = Command::new("sh").args(["-c", &script]).output().unwrap();
        let words: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        assert_eq!(words[0], "/home/me/run's");
        assert_eq!(words[1], "FERROTUNE_X=a b");
        assert_eq!(words[3], "CUDA_VISIBLE_DEVICES=0,1");
        assert_eq!(words[4], "/opt/ferro tune/bin/ferrotune");
        assert_eq!(
            (words[10].as_str(), words[11].as_str()),
            ("--node-rank", "1"),
            "node rank of the second host: {words:?}"
        );
        assert_eq!(words.last().unwrap(), "output_dir=out dir");
        assert_eq!(cmds[0].host, "worker", "hostfile order is kept");
    }

    #[test]
    fn uneven_slot_counts_are_refused() {
        let e = plan("master:0,1@worker:0")
            .node_commands()
            .unwrap_err()
            .to_string();
        assert!(e.contains("master has 2 slot(s), worker has 1"), "{e}");
    }

    #[test]
    fn only_known_prefixes_are_forwarded() {
        let env = plan("master").env;
        assert_eq!(
            env,
            [
                ("FERROTUNE_X".to_string(), "a b".to_string()),
                ("NCCL_DEBUG".to_string(), "INFO".to_string())
            ]
        );
    }
}
