//! `ferrotune launch` on one node: starts `nproc_per_node` workers (the same binary with a subcommand)
//! with the torchrun environment — RANK = node_rank * nproc_per_node + LOCAL_RANK, WORLD_SIZE,
//! LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK / NODE_RANK, MASTER_ADDR, MASTER_PORT, and OMP_NUM_THREADS =
//! cores / nproc when unset — and supervises them (see [`crate::launch_supervise`]).

use std::path::PathBuf;
use std::process::Command;

use crate::hostfile::HostfileError;
use crate::launch_supervise::{supervise, SuperviseError, SuperviseOptions, Unit};

/// A launch that cannot start or did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Hostfile(#[from] HostfileError),
    #[error(transparent)]
    Job(#[from] SuperviseError),
}

/// The shape of the job and where rank 0's rendezvous store listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLayout {
    pub nproc_per_node: usize,
    pub nnodes: usize,
    pub node_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
}

impl NodeLayout {
    pub fn validate(&self) -> Result<(), LaunchError> {
        if self.nproc_per_node == 0 {
            return Err(LaunchError::Config(
                "--nproc-per-node must be at least 1".into(),
            ));
        }
        if self.nnodes == 0 {
            return Err(LaunchError::Config("--nnodes must be at least 1".into()));
        }
        if self.node_rank >= self.nnodes {
            return Err(LaunchError::Config(format!(
                "--node-rank {} is not below --nnodes {}",
                self.node_rank, self.nnodes
            )));
        }
        if self.master_addr.trim().is_empty() {
            return Err(LaunchError::Config("--master-addr is empty".into()));
        }
        Ok(())
    }

    pub fn world_size(&self) -> usize {
        self.nproc_per_node * self.nnodes
    }

    /// The global rank of this node's `local_rank`.
    pub fn global_rank(&self, local_rank: usize) -> usize {
        self.node_rank * self.nproc_per_node + local_rank
    }

    /// The variables a worker gets (besides the inherited environment).
    pub fn worker_env(&self, local_rank: usize) -> Vec<(String, String)> {
        let kv = |k: &str, v: String| (k.to_string(), v);
        vec![
            kv("RANK", self.global_rank(local_rank).to_string()),
            kv("WORLD_SIZE", self.world_size().to_string()),
            kv("LOCAL_RANK", local_rank.to_string()),
            kv("LOCAL_WORLD_SIZE", self.nproc_per_node.to_string()),
            kv("GROUP_RANK", self.node_rank.to_string()),
            kv("NODE_RANK", self.node_rank.to_string()),
            kv("GROUP_WORLD_SIZE", self.nnodes.to_string()),
            kv("MASTER_ADDR", self.master_addr.clone()),
            kv("MASTER_PORT", self.master_port.to_string()),
        ]
    }
}

/// OMP_NUM_THREADS for each worker: None when the user set it (it is inherited), else
/// max(1, cores / nproc_per_node) as torchrun's rule of thumb.
pub fn omp_threads(nproc_per_node: usize, user_value: Option<&str>, cores: usize) -> Option<usize> {
    match user_value {
        Some(_) => None,
        None => Some((cores / nproc_per_node.max(1)).max(1)),
    }
}

/// The workers of one node.
#[derive(Debug, Clone)]
pub struct LocalLaunch {
    pub layout: NodeLayout,
    /// The binary the workers run (normally `std::env::current_exe()`).
    pub program: PathBuf,
    /// Its arguments (a subcommand and its flags).
    pub args: Vec<String>,
    pub options: SuperviseOptions,
}

impl LocalLaunch {
    /// Starts the workers and waits for them; Ok only when all exit with status 0.
    pub fn run(&self) -> Result<(), LaunchError> {
        self.layout.validate()?;
        if self.args.is_empty() {
            return Err(LaunchError::Config(
                "no worker command given (e.g. `ferrotune launch --nproc-per-node 2 -- train CONFIG.toml`)"
                    .into(),
            ));
        }
        let l = &self.layout;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let user_omp = std::env::var("OMP_NUM_THREADS").ok();
        let omp = omp_threads(l.nproc_per_node, user_omp.as_deref(), cores);
        match (omp, &user_omp) {
            (Some(t), _) => tracing::info!(
                "OMP_NUM_THREADS is unset: using {t} per worker ({cores} cores / {} workers)",
                l.nproc_per_node
            ),
            (None, Some(v)) => tracing::info!("OMP_NUM_THREADS={v} (from the environment)"),
            (None, None) => {}
        }
        tracing::info!(
            "node {} of {}: starting ranks {}..{} of world size {} (master {}:{}): {} {}",
            l.node_rank,
            l.nnodes,
            l.global_rank(0),
            l.global_rank(l.nproc_per_node - 1),
            l.world_size(),
            l.master_addr,
            l.master_port,
            self.program.display(),
            self.args.join(" ")
        );
        let units = (0..l.nproc_per_node)
            .map(|local| {
                let rank = l.global_rank(local);
                let mut command = Command::new(&self.program);
                command.args(&self.args).envs(l.worker_env(local));
                if let Some(t) = omp {
                    command.env("OMP_NUM_THREADS", t.to_string());
                }
                Unit {
                    label: format!("rank {rank}"),
                    prefix: format!("[rank {rank}] "),
                    command,
                    keep_stdin: false,
                }
            })
            .collect();
        supervise(units, &self.options)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(nproc: usize, nnodes: usize, node_rank: usize) -> NodeLayout {
        NodeLayout {
            nproc_per_node: nproc,
            nnodes,
            node_rank,
            master_addr: "10.1.2.3".into(),
            master_port: 29511,
        }
    }

    #[test]
    fn worker_env_follows_torchrun() {
        let l = layout(4, 3, 2);
        let env: std::collections::HashMap<_, _> = l.worker_env(1).into_iter().collect();
        let get = |k: &str| env[k].as_str();
        assert_eq!(get("RANK"), "9");
        assert_eq!(get("WORLD_SIZE"), "12");
        assert_eq!(get("LOCAL_RANK"), "1");
        assert_eq!(get("LOCAL_WORLD_SIZE"), "4");
        assert_eq!((get("GROUP_RANK"), get("NODE_RANK")), ("2", "2"));
        assert_eq!(
            (get("MASTER_ADDR"), get("MASTER_PORT")),
            ("10.1.2.3", "29511")
        );
        // What the workers read back is the layout we meant.
        let vars = env.into_iter().collect();
        let read = crate::RankEnv::from_vars(&vars).unwrap();
        assert_eq!(
            (
                read.rank,
                read.world_size,
                read.local_rank,
                read.local_world_size
            ),
            (9, 12, 1, 4)
        );
    }

    #[test]
    fn layout_errors_name_the_flag() {
        let e = layout(2, 2, 2).validate().unwrap_err().to_string();
        assert!(
            e.contains("--node-rank 2") && e.contains("--nnodes 2"),
            "{e}"
        );
        let e = layout(0, 1, 0).validate().unwrap_err().to_string();
        assert!(e.contains("--nproc-per-node"), "{e}");
    }

    #[test]
    fn omp_threads_split_the_cores_unless_set() {
        assert_eq!(omp_threads(2, None, 16), Some(8));
        assert_eq!(omp_threads(3, None, 2), Some(1));
        assert_eq!(omp_threads(2, Some("4"), 16), None);
    }
}
