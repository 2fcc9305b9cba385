//! [`ProcessGroup`]: collectives on tch tensors across the ranks of a job — all_reduce (sum/avg),
//! reduce_scatter, all_gather, broadcast, barrier — on Gloo (CPU tensors) or NCCL (CUDA tensors).
//!
//! Every collective waits at most the group's timeout; a timeout or transport failure becomes a
//! [`DistError::Collective`] naming the rank and the operation.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tch::{Device, Kind, Tensor};

use crate::env::RankEnv;
use crate::gloo::{Elem, GlooComm};
use crate::store::{StoreError, TcpStore};

/// The collective engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Gloo,
    Nccl,
}

impl Backend {
    /// `nccl` for CUDA devices, `gloo` otherwise.
    pub fn for_device(device: Device) -> Self {
        if device.is_cuda() {
            Backend::Nccl
        } else {
            Backend::Gloo
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Gloo => "gloo",
            Backend::Nccl => "nccl",
        }
    }
}

impl FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "gloo" => Ok(Backend::Gloo),
            "nccl" => Ok(Backend::Nccl),
            other => Err(format!("unknown backend {other:?} (expected gloo or nccl)")),
        }
    }
}

/// How all_reduce / reduce_scatter combine the ranks' values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Avg,
}

/// A distributed operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("rank {rank}: {op} failed (timeout {timeout:?}): {msg}")]
    Collective {
        rank: usize,
        op: &'static str,
        timeout: Duration,
        msg: String,
    },
    #[error("rank {rank}: {op}: {msg}")]
    BadTensor {
        rank: usize,
        op: &'static str,
        msg: String,
    },
    #[error("rank {rank}: backend {backend} is not available: {reason}")]
    Unavailable {
        rank: usize,
        backend: &'static str,
        reason: String,
    },
}

/// The ranks of one job, connected.
#[derive(Debug)]
pub struct ProcessGroup {
    rank: usize,
    world_size: usize,
    backend: Backend,
    timeout: Duration,
    gloo: GlooComm,
}

impl ProcessGroup {
    /// Connects every rank of `env`: rank 0 serves the rendezvous store at MASTER_ADDR:MASTER_PORT, all
    /// ranks meet there and build the backend's communicator. Fails (naming the rank) when a peer does
    /// not arrive within `timeout`.
    pub fn init(env: &RankEnv, backend: Backend, timeout: Duration) -> Result<Self, DistError> {
        let rank = env.rank;
        if backend == Backend::Nccl {
            return Err(DistError::Unavailable {
                rank,
                backend: backend.name(),
                reason:
                    "the NCCL process group is not implemented yet in this build (use gloo on CPU \
                         tensors)"
                        .into(),
            });
        }
        let store = Arc::new(TcpStore::connect(
            rank,
            &env.master_addr,
            env.master_port,
            timeout,
        )?);
        let host = gloo_hostname(&env.master_addr);
        let gloo = GlooComm::connect(rank, env.world_size, &host, "gloo/default", store, timeout)
            .map_err(|msg| DistError::Collective {
            rank,
            op: "init (gloo rendezvous)",
            timeout,
            msg,
        })?;
        tracing::debug!(
            rank,
            world_size = env.world_size,
            "gloo process group connected"
        );
        Ok(ProcessGroup {
            rank,
            world_size: env.world_size,
            backend,
            timeout,
            gloo,
        })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world_size
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Reduces `t` in place across ranks.
    pub fn all_reduce(&self, t: &mut Tensor, op: ReduceOp) -> Result<(), DistError> {
        const OP: &str = "all_reduce";
        let elem = self.check(OP, t)?;
        // SAFETY: `t` is a contiguous CPU tensor of `numel` elements of `elem` (checked above).
        unsafe { self.gloo.allreduce_sum(elem, t.data_ptr(), t.numel()) }
            .map_err(|msg| self.fail(OP, msg))?;
        self.finish(OP, t, op)
    }

    /// Reduces `input` across ranks and returns this rank's chunk of the result: `input` is split into
    /// `world_size` equal chunks along dim 0 (its first dimension must divide evenly).
    ///
    /// Implemented as gloo's allreduce on a copy followed by taking the chunk (libgloo's reduce-scatter
    /// is the typed halving-doubling class only, with no bf16 support).
    pub fn reduce_scatter(&self, input: &Tensor, op: ReduceOp) -> Result<Tensor, DistError> {
        const OP: &str = "reduce_scatter";
        self.check(OP, input)?;
        let rows = input.size().first().copied().unwrap_or(0);
        if rows % self.world_size as i64 != 0 {
            return Err(self.bad(
                OP,
                format!(
                    "dim 0 ({rows}) is not divisible by the world size {}",
                    self.world_size
                ),
            ));
        }
        let mut full = input.copy();
        self.all_reduce(&mut full, op).map_err(|e| match e {
            DistError::Collective { msg, .. } => self.fail(OP, msg),
            e => e,
        })?;
        let chunk = rows / self.world_size as i64;
        Ok(full.narrow(0, chunk * self.rank as i64, chunk).contiguous())
    }

    /// Concatenates every rank's `t` (same shape and dtype on all ranks) along dim 0, in rank order.
    pub fn all_gather(&self, t: &Tensor) -> Result<Tensor, DistError> {
        const OP: &str = "all_gather";
        let elem = self.check(OP, t)?;
        let mut shape = t.size();
        if shape.is_empty() {
            shape.push(1);
        }
        shape[0] *= self.world_size as i64;
        let out = Tensor::empty(shape, (t.kind(), Device::Cpu));
        // SAFETY: `t` holds numel elements and `out` numel * world_size, both contiguous CPU of `elem`.
        unsafe {
            self.gloo
                .allgather(elem, t.data_ptr(), out.data_ptr(), t.numel())
        }
        .map_err(|msg| self.fail(OP, msg))?;
        Ok(out)
    }

    /// Replaces `t` on every rank with rank `root`'s `t`.
    pub fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<(), DistError> {
        const OP: &str = "broadcast";
        let elem = self.check(OP, t)?;
        if root >= self.world_size {
            return Err(self.bad(
                OP,
                format!(
                    "root {root} is not below the world size {}",
                    self.world_size
                ),
            ));
        }
        // SAFETY: as in all_reduce.
        unsafe { self.gloo.broadcast(elem, t.data_ptr(), t.numel(), root) }
            .map_err(|msg| self.fail(OP, msg))
    }

    /// Returns once every rank has called it.
    pub fn barrier(&self) -> Result<(), DistError> {
        self.gloo.barrier().map_err(|msg| self.fail("barrier", msg))
    }

    fn check(&self, op: &'static str, t: &Tensor) -> Result<Elem, DistError> {
        if t.device() != Device::Cpu {
            return Err(self.bad(
                op,
                format!("the gloo backend needs a CPU tensor, got {:?}", t.device()),
            ));
        }
        if !t.is_contiguous() {
            return Err(self.bad(op, "the tensor is not contiguous".into()));
        }
        match t.kind() {
            Kind::Float => Ok(Elem::F32),
            Kind::Half => Ok(Elem::F16),
            Kind::BFloat16 => Ok(Elem::Bf16),
            k => Err(self.bad(op, format!("dtype {k:?} is not supported (f32, f16, bf16)"))),
        }
    }

    fn finish(&self, op: &'static str, t: &mut Tensor, reduce: ReduceOp) -> Result<(), DistError> {
        if reduce == ReduceOp::Avg {
            let _ = t
                .f_div_scalar_(self.world_size as f64)
                .map_err(|e| self.bad(op, format!("averaging: {e}")))?;
        }
        Ok(())
    }

    fn fail(&self, op: &'static str, msg: String) -> DistError {
        DistError::Collective {
            rank: self.rank,
            op,
            timeout: self.timeout,
            msg,
        }
    }

    fn bad(&self, op: &'static str, msg: String) -> DistError {
        DistError::BadTensor {
            rank: self.rank,
            op,
            msg,
        }
    }
}

/// The address this rank's gloo endpoint listens on: `FERROTUNE_GLOO_HOST` if set; loopback when the
/// master is on loopback (single machine); else the machine's hostname, resolved by gloo.
fn gloo_hostname(master_addr: &str) -> String {
    if let Ok(h) = std::env::var("FERROTUNE_GLOO_HOST") {
        return h;
    }
    let loopback = master_addr == "localhost"
        || master_addr
            .parse::<std::net::IpAddr>()
            .map(|a| a.is_loopback())
            .unwrap_or(false);
    if loopback {
        "127.0.0.1".into()
    } else {
        String::new()
    }
}
