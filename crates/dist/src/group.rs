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
use crate::nccl::NcclComm;
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

/// The ranks of one job (or of a subgroup of it), connected.
#[derive(Debug)]
pub struct ProcessGroup {
    /// This process's rank within the group.
    rank: usize,
    world_size: usize,
    /// This process's rank in the whole job (errors name it).
    global_rank: usize,
    backend: Backend,
    timeout: Duration,
    comm: Comm,
    /// What subgroups bootstrap through: the job's store, the CUDA device, the gloo listen address.
    store: Arc<TcpStore>,
    local_rank: usize,
    gloo_host: String,
}

/// The connected backend.
#[derive(Debug)]
enum Comm {
    Gloo(GlooComm),
    Nccl(NcclComm),
}

impl ProcessGroup {
    /// Connects every rank of `env`: rank 0 serves the rendezvous store at MASTER_ADDR:MASTER_PORT, all
    /// ranks meet there and build the backend's communicator. Fails (naming the rank) when a peer does
    /// not arrive within `timeout`.
    pub fn init(env: &RankEnv, backend: Backend, timeout: Duration) -> Result<Self, DistError> {
        let rank = env.rank;
        if backend == Backend::Nccl {
            nccl_preflight(env)?;
        }
        let store = Arc::new(TcpStore::connect(
            rank,
            &env.master_addr,
            env.master_port,
            timeout,
        )?);
        let members: Vec<usize> = (0..env.world_size).collect();
        Self::connect(
            rank,
            &members,
            "default",
            backend,
            timeout,
            store,
            env.local_rank,
            gloo_hostname(&env.master_addr),
        )
    }

    /// A new group of the job's ranks `members` (global ranks, ascending; this rank among them), named
    /// `name` (unique per group in the job: the store keys of its rendezvous live under it). Like torch's
    /// `new_group`, every member calls it with the same arguments; non-members do not call it. The new
    /// group's rank of this process is its position in `members`.
    pub fn subgroup(&self, name: &str, members: &[usize]) -> Result<ProcessGroup, DistError> {
        let bad = |msg: String| DistError::BadTensor {
            rank: self.global_rank,
            op: "subgroup",
            msg,
        };
        if members.is_empty() || members.windows(2).any(|w| w[0] >= w[1]) {
            return Err(bad(format!(
                "subgroup `{name}`: members {members:?} must be ascending and distinct"
            )));
        }
        if members.iter().any(|&m| m >= self.world_size) {
            return Err(bad(format!(
                "subgroup `{name}`: members {members:?} reach beyond the world size {}",
                self.world_size
            )));
        }
        let Some(sub_rank) = members.iter().position(|&m| m == self.rank) else {
            return Err(bad(format!(
                "subgroup `{name}`: this rank ({}) is not among the members {members:?}",
                self.rank
            )));
        };
        Self::connect(
            sub_rank,
            members,
            &format!("sub/{name}"),
            self.backend,
            self.timeout,
            self.store.clone(),
            self.local_rank,
            self.gloo_host.clone(),
        )
        .map(|mut g| {
            g.global_rank = self.global_rank;
            g
        })
    }

    /// Builds the backend communicator of `members` (this process at position `rank`) through `store`.
    #[allow(clippy::too_many_arguments)]
    fn connect(
        rank: usize,
        members: &[usize],
        name: &str,
        backend: Backend,
        timeout: Duration,
        store: Arc<TcpStore>,
        local_rank: usize,
        gloo_host: String,
    ) -> Result<Self, DistError> {
        let world_size = members.len();
        let global_rank = members[rank];
        let fail = |op: &'static str, msg: String| DistError::Collective {
            rank: global_rank,
            op,
            timeout,
            msg,
        };
        let comm = match backend {
            Backend::Nccl => {
                let prefix = format!("nccl/{name}");
                let nccl =
                    NcclComm::connect(rank, world_size, local_rank, &prefix, &store, timeout)
                        .map_err(|msg| fail("init (nccl communicator)", msg))?;
                tracing::debug!(
                    rank = global_rank,
                    group = name,
                    world_size,
                    device = nccl.device(),
                    "nccl process group connected"
                );
                Comm::Nccl(nccl)
            }
            Backend::Gloo => {
                let prefix = format!("gloo/{name}");
                let gloo = GlooComm::connect(
                    rank,
                    world_size,
                    &gloo_host,
                    &prefix,
                    store.clone(),
                    timeout,
                )
                .map_err(|msg| fail("init (gloo rendezvous)", msg))?;
                tracing::debug!(
                    rank = global_rank,
                    group = name,
                    world_size,
                    "gloo process group connected"
                );
                Comm::Gloo(gloo)
            }
        };
        Ok(ProcessGroup {
            rank,
            world_size,
            global_rank,
            backend,
            timeout,
            comm,
            store,
            local_rank,
            gloo_host,
        })
    }

    /// This process's rank within the group.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// This process's rank in the whole job.
    pub fn global_rank(&self) -> usize {
        self.global_rank
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
        let gloo = match &self.comm {
            Comm::Gloo(g) => g,
            // SAFETY: `t` is a contiguous tensor of `numel` elements of `elem` on the communicator's
            // device (checked above).
            Comm::Nccl(n) => {
                return unsafe { n.all_reduce(elem, t.data_ptr(), t.numel(), op) }
                    .map_err(|msg| self.fail(OP, msg))
            }
        };
        // SAFETY: `t` is a contiguous CPU tensor of `numel` elements of `elem` (checked above).
        unsafe { gloo.allreduce_sum(elem, t.data_ptr(), t.numel()) }
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
        let elem = self.check(OP, input)?;
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
        if let Comm::Nccl(n) = &self.comm {
            let mut shape = input.size();
            shape[0] = rows / self.world_size as i64;
            let out = Tensor::empty(shape, (input.kind(), input.device()));
            let per_rank = input.numel() / self.world_size;
            // SAFETY: `input` holds per_rank * world elements and `out` per_rank, both contiguous on the
            // communicator's device with dtype `elem`.
            unsafe { n.reduce_scatter(elem, input.data_ptr(), out.data_ptr(), per_rank, op) }
                .map_err(|msg| self.fail(OP, msg))?;
            return Ok(out);
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
        let out = Tensor::empty(shape, (t.kind(), t.device()));
        // SAFETY: `t` holds numel elements and `out` numel * world_size, both contiguous of `elem` on the
        // backend's device (checked above).
        match &self.comm {
            Comm::Gloo(g) => unsafe { g.allgather(elem, t.data_ptr(), out.data_ptr(), t.numel()) },
            Comm::Nccl(n) => unsafe { n.all_gather(elem, t.data_ptr(), out.data_ptr(), t.numel()) },
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
        match &self.comm {
            Comm::Gloo(g) => unsafe { g.broadcast(elem, t.data_ptr(), t.numel(), root) },
            Comm::Nccl(n) => unsafe { n.broadcast(elem, t.data_ptr(), t.numel(), root) },
        }
        .map_err(|msg| self.fail(OP, msg))
    }

    /// Returns once every rank has called it.
    pub fn barrier(&self) -> Result<(), DistError> {
        match &self.comm {
            Comm::Gloo(g) => g.barrier().map_err(|msg| self.fail("barrier", msg)),
            Comm::Nccl(n) => {
                // NCCL has no barrier: all-reduce one element on the device.
                let t = Tensor::zeros([1], (Kind::Float, Device::Cuda(n.device())));
                // SAFETY: one contiguous f32 element on the communicator's device.
                unsafe { n.all_reduce(Elem::F32, t.data_ptr(), 1, ReduceOp::Sum) }
                    .map_err(|msg| self.fail("barrier", msg))
            }
        }
    }

    fn check(&self, op: &'static str, t: &Tensor) -> Result<Elem, DistError> {
        match &self.comm {
            Comm::Gloo(_) if t.device() != Device::Cpu => {
                return Err(self.bad(
                    op,
                    format!("the gloo backend needs a CPU tensor, got {:?}", t.device()),
                ));
            }
            Comm::Nccl(n) if t.device() != Device::Cuda(n.device()) => {
                return Err(self.bad(
                    op,
                    format!(
                        "the nccl backend of this rank needs a tensor on cuda:{}, got {:?}",
                        n.device(),
                        t.device()
                    ),
                ));
            }
            _ => {}
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
            rank: self.global_rank,
            op,
            timeout: self.timeout,
            msg,
        }
    }

    fn bad(&self, op: &'static str, msg: String) -> DistError {
        DistError::BadTensor {
            rank: self.global_rank,
            op,
            msg,
        }
    }
}

/// Fails early (before any rendezvous) when this rank cannot run NCCL: no CUDA device for LOCAL_RANK
/// in this libtorch, or libcuda / libnccl cannot be loaded.
fn nccl_preflight(env: &RankEnv) -> Result<(), DistError> {
    let unavailable = |reason: String| DistError::Unavailable {
        rank: env.rank,
        backend: "nccl",
        reason,
    };
    let n = if tch::Cuda::is_available() {
        tch::Cuda::device_count().max(0) as usize
    } else {
        0
    };
    if env.local_rank >= n {
        return Err(unavailable(format!(
            "it needs CUDA device cuda:{} (LOCAL_RANK) but libtorch sees {n} CUDA device(s){}",
            env.local_rank,
            if n == 0 {
                " — use the gloo backend on CPU"
            } else {
                ""
            }
        )));
    }
    NcclComm::available().map_err(unavailable)
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
