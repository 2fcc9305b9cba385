//! [`NcclComm`]: one NCCL communicator (cudarc bindings, libnccl loaded at run time — nothing links NCCL at
//! build time), bootstrapped through the rendezvous store, with deadline-bounded collectives on device
//! pointers.
//!
//! Bootstrap: rank 0 creates the unique id and publishes it under `<prefix>/nccl-unique-id`; every rank
//! reads it and creates its communicator on its device (LOCAL_RANK). The communicator is non-blocking
//! (`ncclConfig_t.blocking = 0`): creation and every enqueue return at once and are polled with
//! `ncclCommGetAsyncError`; completion is awaited through a CUDA event ([`crate::nccl_stream`]). When a
//! deadline passes the communicator is aborted (`ncclCommAbort`) and every later call fails at once.
//! `FERROTUNE_NCCL_BLOCKING=1` uses blocking creation/enqueue instead (completion is still deadline-bound).

use std::ffi::{c_int, c_void, CStr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cudarc::nccl::sys::{self as nccl, ncclDataType_t, ncclRedOp_t, ncclResult_t};

use crate::gloo::Elem;
use crate::group::ReduceOp;
use crate::nccl_stream::{self, DeviceStream, WaitError};
use crate::store::TcpStore;

/// `ncclConfig_t` as NCCL 2.28 lays it out (the wheel torch 2.11 ships); `version` tells a newer library
/// which fields exist.
#[repr(C)]
struct Config228 {
    size: usize,
    magic: u32,
    version: u32,
    blocking: c_int,
    cga_cluster_size: c_int,
    min_ctas: c_int,
    max_ctas: c_int,
    net_name: *const i8,
    split_share: c_int,
    traffic_class: c_int,
    comm_name: *const i8,
    collnet_enable: c_int,
    cta_policy: c_int,
    shrink_share: c_int,
    nvls_ctas: c_int,
    n_channels_per_net_peer: c_int,
    nvlink_centric_sched: c_int,
}

impl Config228 {
    /// `NCCL_CONFIG_INITIALIZER` of nccl.h 2.28.9 with `blocking` set.
    fn new(blocking: bool) -> Self {
        const UNDEF: c_int = c_int::MIN;
        Config228 {
            size: std::mem::size_of::<Self>(),
            magic: 0xcafe_beef,
            version: 22809,
            blocking: c_int::from(blocking),
            cga_cluster_size: UNDEF,
            min_ctas: UNDEF,
            max_ctas: UNDEF,
            net_name: std::ptr::null(),
            split_share: UNDEF,
            traffic_class: UNDEF,
            comm_name: std::ptr::null(),
            collnet_enable: UNDEF,
            cta_policy: UNDEF,
            shrink_share: UNDEF,
            nvls_ctas: UNDEF,
            n_channels_per_net_peer: UNDEF,
            nvlink_centric_sched: UNDEF,
        }
    }
}

/// A connected NCCL communicator on one CUDA device.
#[derive(Debug)]
pub(crate) struct NcclComm {
    comm: Mutex<nccl::ncclComm_t>,
    dev: DeviceStream,
    rank: usize,
    timeout: Duration,
    aborted: AtomicBool,
}

// SAFETY: the communicator handle is only used under the mutex (NCCL communicators are not thread-safe).
unsafe impl Send for NcclComm {}
unsafe impl Sync for NcclComm {}

fn blocking_mode() -> bool {
    std::env::var("FERROTUNE_NCCL_BLOCKING").is_ok_and(|v| v == "1" || v == "true")
}

fn err_text(r: ncclResult_t) -> String {
    // SAFETY: ncclGetErrorString returns a static string for any result code.
    let s = unsafe { nccl::ncclGetErrorString(r) };
    if s.is_null() {
        format!("{r:?}")
    } else {
        // SAFETY: non-null, NUL-terminated, static.
        format!("{r:?}: {}", unsafe { CStr::from_ptr(s) }.to_string_lossy())
    }
}

impl NcclComm {
    /// Checks that libcuda and libnccl can be loaded, without panicking; the message says how to fix it.
    pub(crate) fn available() -> Result<(), String> {
        if !nccl_stream::driver_present() {
            return Err("the CUDA driver library (libcuda.so) cannot be loaded".into());
        }
        if !nccl_stream::nccl_present() {
            return Err("libnccl.so cannot be loaded: put a directory holding libnccl.so (a link to the \
                        torch wheel's nvidia/nccl/lib/libnccl.so.2; tools/setup-torch.sh makes one in \
                        $FERROTUNE_EXTRA_LIB) on LD_LIBRARY_PATH"
                .into());
        }
        Ok(())
    }

    /// Creates this rank's communicator on CUDA device `device` (see the module docs).
    pub(crate) fn connect(
        rank: usize,
        world_size: usize,
        device: usize,
        prefix: &str,
        store: &TcpStore,
        timeout: Duration,
    ) -> Result<Self, String> {
        Self::available()?;
        let dev = DeviceStream::bind(device)?;
        let key = format!("{prefix}/nccl-unique-id");
        let id = if rank == 0 {
            let id = nccl_call(cudarc::nccl::result::get_uniqueid)
                .map_err(|e| format!("ncclGetUniqueId: {e}"))?;
            let bytes: Vec<u8> = id.internal.iter().map(|b| *b as u8).collect();
            store
                .set(key.as_bytes(), &bytes)
                .map_err(|e| e.to_string())?;
            id
        } else {
            let bytes = store
                .get(key.as_bytes(), timeout)
                .map_err(|e| e.to_string())?;
            let mut id = nccl::ncclUniqueId { internal: [0; 128] };
            if bytes.len() != id.internal.len() {
                return Err(format!(
                    "the NCCL unique id from the store has {} bytes, expected 128",
                    bytes.len()
                ));
            }
            for (d, s) in id.internal.iter_mut().zip(&bytes) {
                *d = *s as _;
            }
            id
        };
        let blocking = blocking_mode();
        let mut comm: nccl::ncclComm_t = std::ptr::null_mut();
        let mut cfg = Config228::new(blocking);
        // SAFETY: `comm` receives the handle; `cfg` is a valid 2.28 config (its size and version say so).
        let r = unsafe {
            nccl::ncclCommInitRankConfig(
                &mut comm,
                world_size as c_int,
                id,
                rank as c_int,
                (&mut cfg as *mut Config228).cast(),
            )
        };
        if !matches!(r, ncclResult_t::ncclSuccess | ncclResult_t::ncclInProgress) {
            return Err(format!("ncclCommInitRankConfig: {}", err_text(r)));
        }
        let me = NcclComm {
            comm: Mutex::new(comm),
            dev,
            rank,
            timeout,
            aborted: AtomicBool::new(false),
        };
        let guard = me.comm.lock().unwrap_or_else(|p| p.into_inner());
        me.settle(*guard, Instant::now() + timeout)
            .map_err(|e| format!("ncclCommInitRank (device cuda:{device}): {e}"))?;
        drop(guard);
        tracing::debug!(
            rank,
            world_size,
            device,
            blocking,
            "NCCL communicator ready"
        );
        Ok(me)
    }

    /// Polls the communicator's async state until it leaves `ncclInProgress`; aborts at the deadline.
    fn settle(&self, comm: nccl::ncclComm_t, deadline: Instant) -> Result<(), String> {
        loop {
            match self.async_error(comm) {
                ncclResult_t::ncclSuccess => return Ok(()),
                ncclResult_t::ncclInProgress => {}
                r => {
                    self.abort(comm);
                    return Err(err_text(r));
                }
            }
            if Instant::now() >= deadline {
                self.abort(comm);
                return Err(format!(
                    "no progress within {:?}: a peer did not join or stalled; communicator aborted",
                    self.timeout
                ));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn async_error(&self, comm: nccl::ncclComm_t) -> ncclResult_t {
        let mut st = ncclResult_t::ncclSuccess;
        // SAFETY: `comm` is a live (not yet destroyed) communicator.
        let r = unsafe { nccl::ncclCommGetAsyncError(comm, &mut st) };
        if r != ncclResult_t::ncclSuccess {
            return r;
        }
        st
    }

    fn abort(&self, comm: nccl::ncclComm_t) {
        if !self.aborted.swap(true, Ordering::SeqCst) {
            tracing::warn!(rank = self.rank, "aborting the NCCL communicator");
            // SAFETY: live communicator; after this no call uses it (aborted is set).
            unsafe {
                let _ = nccl::ncclCommAbort(comm);
            }
        }
    }

    /// Enqueues one collective (`call` gets the communicator and stream), then waits for it with the
    /// group's deadline. `send`/`recv` etc. are the caller's responsibility (see the unsafe callers).
    fn run(
        &self,
        call: impl FnOnce(nccl::ncclComm_t, nccl::cudaStream_t) -> ncclResult_t,
    ) -> Result<(), String> {
        let comm = self.comm.lock().unwrap_or_else(|p| p.into_inner());
        if self.aborted.load(Ordering::SeqCst) {
            return Err("the NCCL communicator was aborted after an earlier failure".into());
        }
        self.dev.make_current()?;
        let deadline = Instant::now() + self.timeout;
        let r = call(*comm, self.dev.stream());
        match r {
            ncclResult_t::ncclSuccess | ncclResult_t::ncclInProgress => {}
            r => return Err(err_text(r)),
        }
        if r == ncclResult_t::ncclInProgress {
            self.settle(*comm, deadline)?;
        }
        let poll = || match self.async_error(*comm) {
            ncclResult_t::ncclSuccess | ncclResult_t::ncclInProgress => Ok(()),
            r => Err(err_text(r)),
        };
        match self.dev.wait(deadline, poll) {
            Ok(()) => Ok(()),
            Err(WaitError::Failed(m)) => {
                self.abort(*comm);
                Err(m)
            }
            Err(WaitError::Timeout) => {
                self.abort(*comm);
                Err(format!(
                    "not finished within {:?} on cuda:{}: a peer did not join or stalled; communicator aborted",
                    self.timeout,
                    self.dev.ordinal()
                ))
            }
        }
    }

    /// In-place all-reduce of `n` elements at device pointer `ptr`.
    ///
    /// # Safety
    /// `ptr` is a live, contiguous device allocation of `n` elements of `elem` on this comm's device.
    pub(crate) unsafe fn all_reduce(
        &self,
        elem: Elem,
        ptr: *mut c_void,
        n: usize,
        op: ReduceOp,
    ) -> Result<(), String> {
        // SAFETY: per the caller's contract.
        self.run(|c, s| unsafe { nccl::ncclAllReduce(ptr, ptr, n, dtype(elem), red(op), c, s) })
    }

    /// Reduce-scatter: `recv` (`n_per_rank` elements) gets this rank's reduced chunk of `send`.
    ///
    /// # Safety
    /// `send` holds `n_per_rank * world` elements and `recv` `n_per_rank`, both on this device.
    pub(crate) unsafe fn reduce_scatter(
        &self,
        elem: Elem,
        send: *const c_void,
        recv: *mut c_void,
        n_per_rank: usize,
        op: ReduceOp,
    ) -> Result<(), String> {
        // SAFETY: per the caller's contract.
        self.run(|c, s| unsafe {
            nccl::ncclReduceScatter(send, recv, n_per_rank, dtype(elem), red(op), c, s)
        })
    }

    /// All-gather: `recv` (`n_per_rank * world` elements) gets every rank's `send` in rank order.
    ///
    /// # Safety
    /// `send` holds `n_per_rank` elements and `recv` `n_per_rank * world`, both on this device.
    pub(crate) unsafe fn all_gather(
        &self,
        elem: Elem,
        send: *const c_void,
        recv: *mut c_void,
        n_per_rank: usize,
    ) -> Result<(), String> {
        // SAFETY: per the caller's contract.
        self.run(|c, s| unsafe { nccl::ncclAllGather(send, recv, n_per_rank, dtype(elem), c, s) })
    }

    /// In-place broadcast from `root`.
    ///
    /// # Safety
    /// As [`NcclComm::all_reduce`].
    pub(crate) unsafe fn broadcast(
        &self,
        elem: Elem,
        ptr: *mut c_void,
        n: usize,
        root: usize,
    ) -> Result<(), String> {
        // SAFETY: per the caller's contract.
        self.run(|c, s| unsafe {
            nccl::ncclBroadcast(ptr, ptr, n, dtype(elem), root as c_int, c, s)
        })
    }

    /// The CUDA device ordinal this communicator runs on.
    pub(crate) fn device(&self) -> usize {
        self.dev.ordinal() as usize
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        let comm = *self.comm.get_mut().unwrap_or_else(|p| p.into_inner());
        if comm.is_null() || self.aborted.load(Ordering::SeqCst) {
            return;
        }
        let _ = self.dev.make_current();
        // A healthy communicator is finalized (bounded by the timeout), then destroyed; else aborted.
        // SAFETY: live communicator, used by nobody else any more.
        let r = unsafe { nccl::ncclCommFinalize(comm) };
        let ok = matches!(r, ncclResult_t::ncclSuccess | ncclResult_t::ncclInProgress)
            && self.settle(comm, Instant::now() + self.timeout).is_ok();
        if ok {
            // SAFETY: finalized above.
            unsafe {
                let _ = nccl::ncclCommDestroy(comm);
            }
        } else {
            self.abort(comm);
        }
    }
}

/// Runs an NCCL call that panics when libnccl cannot be loaded (checked before, but never unwind).
fn nccl_call<T>(
    f: impl FnOnce() -> Result<T, cudarc::nccl::result::NcclError>,
) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(err_text(e.0)),
        Err(_) => Err("libnccl could not be loaded".into()),
    }
}

fn dtype(e: Elem) -> ncclDataType_t {
    match e {
        Elem::F32 => ncclDataType_t::ncclFloat32,
        Elem::F16 => ncclDataType_t::ncclFloat16,
        Elem::Bf16 => ncclDataType_t::ncclBfloat16,
    }
}

fn red(op: ReduceOp) -> ncclRedOp_t {
    match op {
        ReduceOp::Sum => ncclRedOp_t::ncclSum,
        ReduceOp::Avg => ncclRedOp_t::ncclAvg,
    }
}

#[cfg(test)]
mod tests {
    use crate::{Backend, ProcessGroup, RankEnv, ReduceOp};
    use std::time::Duration;
    use tch::{Device, Kind, Tensor};

    /// Without CUDA the NCCL group fails at once with an error naming the rank, the backend and the
    /// device it wanted; with CUDA, a world-1 group all-reduces (sum of one rank = the input).
    #[test]
    fn nccl_group_needs_cuda_or_works_at_world_1() {
        let env = RankEnv {
            master_port: crate::testutil::free_port(),
            ..RankEnv::single()
        };
        let res = ProcessGroup::init(&env, Backend::Nccl, Duration::from_secs(20));
        if !tch::Cuda::is_available() {
            let e = res.unwrap_err().to_string();
            assert!(
                e.contains("rank 0") && e.contains("nccl") && e.contains("cuda:0"),
                "{e}"
            );
            return;
        }
        let pg = res.unwrap();
        let mut t = Tensor::arange(6, (Kind::Float, Device::Cuda(0)));
        pg.all_reduce(&mut t, ReduceOp::Sum).unwrap();
        assert_eq!(
            Vec::<f32>::try_from(t.to_device(Device::Cpu)).unwrap(),
            [0., 1., 2., 3., 4., 5.]
        );
        let cpu = Tensor::zeros([2], (Kind::Float, Device::Cpu));
        let e = pg.all_gather(&cpu).unwrap_err().to_string();
        assert!(e.contains("cuda:0"), "{e}");
    }
}
