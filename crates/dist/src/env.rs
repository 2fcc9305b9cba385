//! The rank layout of a distributed job, read from the environment that `torchrun`, `ferrotune launch` or
//! Slurm (`srun`) sets.

use std::collections::HashMap;

/// Where this process sits in the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankEnv {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    pub local_world_size: usize,
    pub master_addr: String,
    pub master_port: u16,
}

/// The environment describes no valid job.
#[derive(Debug, thiserror::Error)]
pub enum RankEnvError {
    #[error("environment variable {name}={value:?} is not a valid {what}")]
    Invalid {
        name: String,
        value: String,
        what: &'static str,
    },
    #[error("rank {rank} is not below world size {world_size}")]
    RankOutOfRange { rank: usize, world_size: usize },
}

impl RankEnv {
    /// A single process: rank 0 of 1 on localhost.
    pub fn single() -> Self {
        RankEnv {
            rank: 0,
            world_size: 1,
            local_rank: 0,
            local_world_size: 1,
            master_addr: "127.0.0.1".into(),
            master_port: 29500,
        }
    }

    /// Reads the process environment: torchrun variables first, then Slurm's, else a single process.
    pub fn from_env() -> Result<Self, RankEnvError> {
        Self::from_vars(&std::env::vars().collect())
    }

    /// Reads the given variables (testable form of [`RankEnv::from_env`]).
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, RankEnvError> {
        let get = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| vars.get(*n).map(|v| (n.to_string(), v.clone())))
        };
        let num =
            |names: &[&str], what: &'static str, default: usize| -> Result<usize, RankEnvError> {
                match get(names) {
                    None => Ok(default),
                    Some((name, value)) => value
                        .trim()
                        .parse()
                        .map_err(|_| RankEnvError::Invalid { name, value, what }),
                }
            };
        let single = Self::single();
        let rank = num(&["RANK", "SLURM_PROCID"], "rank", 0)?;
        let world_size = num(&["WORLD_SIZE", "SLURM_NTASKS"], "world size", 1)?;
        let local_rank = num(&["LOCAL_RANK", "SLURM_LOCALID"], "local rank", 0)?;
        let local_world_size = num(
            &["LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"],
            "local world size",
            world_size,
        )?;
        let master_addr = get(&["MASTER_ADDR"])
            .map(|(_, v)| v)
            .unwrap_or(single.master_addr);
        let master_port = num(&["MASTER_PORT"], "port", single.master_port as usize)?;
        let master_port = u16::try_from(master_port).map_err(|_| RankEnvError::Invalid {
            name: "MASTER_PORT".into(),
            value: master_port.to_string(),
            what: "port",
        })?;
        if world_size == 0 || rank >= world_size {
            return Err(RankEnvError::RankOutOfRange { rank, world_size });
        }
        Ok(RankEnv {
            rank,
            world_size,
            local_rank,
            local_world_size,
            master_addr,
            master_port,
        })
    }

    pub fn is_main(&self) -> bool {
        self.rank == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn torchrun_slurm_and_single() {
        let e = RankEnv::from_vars(&vars(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "29400"),
        ]))
        .unwrap();
        assert_eq!(
            (e.rank, e.world_size, e.local_rank, e.local_world_size),
            (3, 4, 1, 2)
        );
        assert_eq!((e.master_addr.as_str(), e.master_port), ("10.0.0.1", 29400));
        let s = RankEnv::from_vars(&vars(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "1"),
        ]))
        .unwrap();
        assert_eq!((s.rank, s.world_size, s.local_rank), (5, 8, 1));
        assert_eq!(RankEnv::from_vars(&vars(&[])).unwrap(), RankEnv::single());
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = RankEnv::from_vars(&vars(&[("RANK", "two")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("RANK") && e.contains("two"), "{e}");
        let e = RankEnv::from_vars(&vars(&[("RANK", "2"), ("WORLD_SIZE", "2")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("rank 2"), "{e}");
        assert!(RankEnv::from_vars(&vars(&[("MASTER_PORT", "70000")])).is_err());
    }
}
