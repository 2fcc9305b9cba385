//! The CUDA side of the NCCL process group, through the driver API (cudarc, loaded at run time): binding
//! the device's primary context (the one libtorch uses) to the calling thread, and waiting — with a
//! deadline — for the work enqueued on the stream the collectives run on.
//!
//! Stream: every NCCL call is enqueued on the legacy default stream (handle 0). That is libtorch's current
//! stream unless a program switches streams, which tch cannot do, so kernels that produced a tensor are
//! ordered before the collective that reads it and kernels that read the result after it, without a
//! device-wide synchronisation. The host then waits for a CUDA event recorded after the call, polling it
//! (plus the communicator's asynchronous error) until the deadline: a peer that never joins becomes an
//! error instead of a hang.

use std::time::{Duration, Instant};

use cudarc::driver::result as cu;
use cudarc::driver::sys;

/// Whether the CUDA driver library can be loaded (cudarc panics on first use when it cannot).
pub(crate) fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the candidate library names.
    std::panic::catch_unwind(|| unsafe { sys::is_culib_present() }).unwrap_or(false)
}

/// Whether `libnccl.so` (the name cudarc loads) can be loaded.
pub(crate) fn nccl_present() -> bool {
    // SAFETY: only tries to dlopen the candidate library names.
    std::panic::catch_unwind(|| unsafe { cudarc::nccl::sys::is_culib_present() }).unwrap_or(false)
}

/// The primary context of one device, retained, with one reusable event.
#[derive(Debug)]
pub(crate) struct DeviceStream {
    ordinal: i32,
    dev: sys::CUdevice,
    ctx: sys::CUcontext,
    event: sys::CUevent,
}

/// Why a wait ended without the work finishing.
#[derive(Debug)]
pub(crate) enum WaitError {
    /// The deadline passed (the caller aborts the communicator).
    Timeout,
    /// CUDA or the communicator reported an error.
    Failed(String),
}

impl DeviceStream {
    /// Retains device `ordinal`'s primary context and makes it current on this thread (NCCL picks the
    /// device from the current context at communicator creation).
    pub(crate) fn bind(ordinal: usize) -> Result<Self, String> {
        let ordinal =
            i32::try_from(ordinal).map_err(|_| format!("bad device ordinal {ordinal}"))?;
        let e =
            |what: &str, err: cu::DriverError| format!("CUDA {what} (device {ordinal}): {err:?}");
        cu::init().map_err(|err| e("init", err))?;
        let dev = cu::device::get(ordinal).map_err(|err| e("device lookup", err))?;
        // SAFETY: `dev` came from device::get; the context is released in Drop.
        let ctx =
            unsafe { cu::primary_ctx::retain(dev) }.map_err(|err| e("primary context", err))?;
        // SAFETY: `ctx` is a live primary context.
        unsafe { cu::ctx::set_current(ctx) }.map_err(|err| e("set context", err))?;
        let event = cu::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
            .map_err(|err| e("event create", err))?;
        Ok(DeviceStream {
            ordinal,
            dev,
            ctx,
            event,
        })
    }

    pub(crate) fn ordinal(&self) -> i32 {
        self.ordinal
    }

    /// Makes the context current on the calling thread (collectives may come from another thread
    /// than the one that created the group).
    pub(crate) fn make_current(&self) -> Result<(), String> {
        // SAFETY: the context is retained for our lifetime.
        unsafe { cu::ctx::set_current(self.ctx) }
            .map_err(|e| format!("CUDA set context (device {}): {e:?}", self.ordinal))
    }

    /// The stream collectives are enqueued on (the legacy default stream).
    pub(crate) fn stream(&self) -> cudarc::nccl::sys::cudaStream_t {
        std::ptr::null_mut()
    }

    /// Waits until everything enqueued on the stream so far has finished. `poll` runs between queries
    /// (the communicator's async-error check); the wait fails with [`WaitError::Timeout`] at `deadline`.
    pub(crate) fn wait(
        &self,
        deadline: Instant,
        mut poll: impl FnMut() -> Result<(), String>,
    ) -> Result<(), WaitError> {
        // SAFETY: the event and context are live; stream 0 is the legacy default stream.
        unsafe { cu::event::record(self.event, std::ptr::null_mut()) }
            .map_err(|e| WaitError::Failed(format!("CUDA event record: {e:?}")))?;
        let mut nap = Duration::from_micros(20);
        loop {
            // SAFETY: as above.
            match unsafe { cu::event::query(self.event) } {
                Ok(()) => return Ok(()),
                Err(cu::DriverError(sys::CUresult::CUDA_ERROR_NOT_READY)) => {}
                Err(e) => return Err(WaitError::Failed(format!("CUDA event query: {e:?}"))),
            }
            poll().map_err(WaitError::Failed)?;
            if Instant::now() >= deadline {
                return Err(WaitError::Timeout);
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(2));
        }
    }
}

impl Drop for DeviceStream {
    fn drop(&mut self) {
        // SAFETY: created in bind; released once.
        unsafe {
            let _ = cu::event::destroy(self.event);
            let _ = cu::primary_ctx::release(self.dev);
        }
    }
}

// SAFETY: the handles are plain driver handles, valid from any thread once the context is made current
// (every use goes through `make_current` first).
unsafe impl Send for DeviceStream {}
unsafe impl Sync for DeviceStream {}
