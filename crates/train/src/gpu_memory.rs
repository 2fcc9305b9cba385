//! Peak GPU memory of a run on CUDA, two ways:
//! - libtorch's caching-allocator statistics (`max_memory_allocated` / `max_memory_reserved`, the
//!   numbers PyTorch users quote), read through a small C++ shim over c10's `DeviceAllocator`
//!   (src/shim/alloc_stats.cc) since tch does not expose them;
//! - the device's used memory (total − free, `cuMemGetInfo` through cudarc's driver API, loaded at run
//!   time), sampled after every micro-batch's backward and after every optimizer step, above a baseline
//!   taken once this process's context exists, before the model is created. It includes what the
//!   allocator does not count (cuBLAS workspaces, lazily loaded kernels) and bounds the reserved peak
//!   from above. Nothing else should use the device meanwhile.

use cudarc::driver::{result as cu, sys};
use tch::Device;

/// A sampler of one CUDA device's used memory.
#[derive(Debug)]
pub struct GpuMemory {
    ordinal: usize,
    dev: sys::CUdevice,
    ctx: sys::CUcontext,
    baseline: usize,
    peak: usize,
}

impl GpuMemory {
    /// A sampler for `device`; `None` on CPU or when the CUDA driver cannot be used.
    pub fn new(device: Device) -> Option<Self> {
        let Device::Cuda(ordinal) = device else {
            return None;
        };
        // cudarc panics when libcuda cannot be loaded; a failed probe only loses the statistic.
        std::panic::catch_unwind(|| {
            // SAFETY: only dlopens candidate names.
            if !unsafe { sys::is_culib_present() } {
                return None;
            }
            cu::init().ok()?;
            let dev = cu::device::get(ordinal as i32).ok()?;
            // SAFETY: `dev` came from device::get; released in Drop. This is the context libtorch uses.
            let ctx = unsafe { cu::primary_ctx::retain(dev) }.ok()?;
            let mut m = GpuMemory {
                ordinal,
                dev,
                ctx,
                baseline: 0,
                peak: 0,
            };
            m.baseline = m.used()?;
            m.peak = m.baseline;
            Some(m)
        })
        .ok()
        .flatten()
    }

    fn used(&self) -> Option<usize> {
        // SAFETY: the context is retained for our lifetime.
        unsafe { cu::ctx::set_current(self.ctx) }.ok()?;
        let (free, total) = cu::mem_get_info().ok()?;
        Some(total.saturating_sub(free))
    }

    /// Takes one sample.
    pub fn sample(&mut self) {
        if let Some(u) = self.used() {
            self.peak = self.peak.max(u);
        }
    }

    /// Peak used memory above the baseline, in MiB.
    pub fn peak_mib(&self) -> f64 {
        self.peak.saturating_sub(self.baseline) as f64 / (1024.0 * 1024.0)
    }

    /// libtorch's caching-allocator statistics for this device since the process started, when a CUDA
    /// allocator is initialized.
    pub fn allocator(&self) -> Option<AllocatorStats> {
        allocator_stats(self.ordinal)
    }

    /// Peak used memory of the whole device (every process, CUDA contexts included), in MiB.
    pub fn device_peak_mib(&self) -> f64 {
        self.peak as f64 / (1024.0 * 1024.0)
    }
}

/// libtorch's CUDA caching-allocator counters of one device, in MiB.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AllocatorStats {
    pub allocated_mib: f64,
    /// `torch.cuda.max_memory_allocated()`.
    pub peak_allocated_mib: f64,
    pub reserved_mib: f64,
    /// `torch.cuda.max_memory_reserved()`.
    pub peak_reserved_mib: f64,
}

unsafe extern "C" {
    fn ftt_cuda_alloc_stats(device: i32, out: *mut i64, reset_peaks: i32) -> i32;
}

/// The allocator statistics of CUDA device `ordinal`; `None` without an initialized CUDA allocator.
pub fn allocator_stats(ordinal: usize) -> Option<AllocatorStats> {
    let mut out = [0i64; 4];
    // SAFETY: `out` has the four slots the shim fills; the shim catches every C++ exception.
    let rc = unsafe { ftt_cuda_alloc_stats(ordinal as i32, out.as_mut_ptr(), 0) };
    let mib = |b: i64| b as f64 / (1024.0 * 1024.0);
    (rc == 0).then(|| AllocatorStats {
        allocated_mib: mib(out[0]),
        peak_allocated_mib: mib(out[1]),
        reserved_mib: mib(out[2]),
        peak_reserved_mib: mib(out[3]),
    })
}

impl Drop for GpuMemory {
    fn drop(&mut self) {
        // SAFETY: retained in new, released once.
        unsafe {
            let _ = cu::primary_ctx::release(self.dev);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_has_no_gpu_sampler_and_cuda_samples_grow() {
        assert!(GpuMemory::new(Device::Cpu).is_none());
        if !tch::Cuda::is_available() {
            // The shim answers "no CUDA allocator" rather than failing.
            assert_eq!(allocator_stats(0), None);
        }
        if tch::Cuda::is_available() {
            let mut m = GpuMemory::new(Device::Cuda(0)).expect("a CUDA sampler");
            let t = tch::Tensor::zeros([64 << 20], (tch::Kind::Float, Device::Cuda(0)));
            m.sample();
            assert!(
                m.peak_mib() >= 250.0,
                "256 MiB allocated, saw {}",
                m.peak_mib()
            );
            let a = m.allocator().expect("allocator statistics on CUDA");
            assert!(
                a.allocated_mib >= 256.0 && a.peak_allocated_mib >= a.allocated_mib,
                "{a:?}"
            );
            assert!(a.peak_reserved_mib >= a.peak_allocated_mib, "{a:?}");
            drop(t);
        }
    }
}
