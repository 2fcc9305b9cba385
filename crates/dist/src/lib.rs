//! `ferrotune-dist`: running one training job on several processes.
//!
//! Reads the rank layout from the torchrun or Slurm environment, bootstraps process groups through a
//! rendezvous store, and runs collectives on tch tensors with Gloo (CPU) or NCCL (CUDA, via cudarc).
//! Also answers questions about the local CUDA devices, and launches jobs (`ferrotune launch`): local
//! workers, multi-node over ssh from a DeepSpeed-style hostfile, supervision and signal forwarding.

pub mod cuda;
pub mod env;
mod gloo;
pub mod group;
pub mod hostfile;
pub mod launch;
pub mod launch_signals;
pub mod launch_ssh;
pub mod launch_supervise;
mod nccl;
mod nccl_stream;
pub mod store;
#[cfg(test)]
mod testutil;

pub use env::{RankEnv, RankEnvError};
pub use group::{Backend, DistError, ProcessGroup, ReduceOp};
pub use launch::{LaunchError, LocalLaunch, NodeLayout};
