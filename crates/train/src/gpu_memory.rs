//! Peak GPU memory of a run on CUDA. libtorch's caching-allocator statistics (`max_memory_allocated`)
//! are not reachable through tch, so the trainer samples the device's used memory (total − free,
//! `cuMemGetInfo` through cudarc's driver API, loaded at run time) after every micro-batch's backward and
//! after every optimizer step, and keeps the maximum. The baseline (used memory once this process's
//! context exists, before the model is created) is subtracted: as the caching allocator keeps what it
//! reserved for the whole run, the result is libtorch's peak reserved memory (weights, activations,
//! gradients, optimizer state, cuBLAS workspaces) — comparable to PyTorch's
//! `torch.cuda.max_memory_reserved()` and an upper bound of `max_memory_allocated()`. Nothing else
//! should use the device meanwhile.

use cudarc::driver::{result as cu, sys};
use tch::Device;

/// A sampler of one CUDA device's used memory.
#[derive(Debug)]
pub struct GpuMemory {
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

    /// Peak used memory of the whole device (every process, CUDA contexts included), in MiB.
    pub fn device_peak_mib(&self) -> f64 {
        self.peak as f64 / (1024.0 * 1024.0)
    }
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
        if tch::Cuda::is_available() {
            let mut m = GpuMemory::new(Device::Cuda(0)).expect("a CUDA sampler");
            let t = tch::Tensor::zeros([64 << 20], (tch::Kind::Float, Device::Cuda(0)));
            m.sample();
            assert!(
                m.peak_mib() >= 250.0,
                "256 MiB allocated, saw {}",
                m.peak_mib()
            );
            drop(t);
        }
    }
}
