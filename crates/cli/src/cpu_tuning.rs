//! CPU runtime tuning of the process: libtorch's bundled Intel MKL gets its AVX2 / AVX-512 kernels on
//! non-Intel x86 CPUs, and glibc's allocator keeps large freed blocks for reuse.
//!
//! **MKL.**
//! MKL picks its code path from the CPU's features only after a vendor check
//! (`mkl_serv_intel_cpu_true`); on AMD processors that check fails and every GEMM/GEMV runs MKL's generic
//! SSE2 kernels (`mkl_blas_def_*`), several times slower than the `mkl_blas_avx512_*` / `avx2` ones the
//! same CPU supports. libtorch_cpu.so calls the check through its PLT, so the definition below — exported
//! from the executable by crates/cli/build.rs (`--export-dynamic-symbol`) — takes precedence over MKL's
//! own. MKL still selects the kernel set from CPUID feature bits, so a CPU only gets instructions it has.
//!
//! `FERROTUNE_MKL_VENDOR_CHECK=1` restores MKL's behaviour (the generic path on non-Intel CPUs), e.g. to
//! compare against a stock PyTorch on the same machine.
//!
//! **malloc.** glibc serves blocks above its mmap threshold (dynamic, at most 32 MiB) with fresh `mmap`s and
//! returns heap memory above 128 KiB at the top to the kernel: every large tensor of every training step or
//! decode step then costs page faults and zeroed pages (measured: a third of the page faults and ~15 % of
//! the CPU time of a LoRA step). [`tune_malloc`] raises the mmap threshold to its 32 MiB maximum and keeps
//! up to 1 GiB of freed memory for reuse; peak RSS is unchanged (the memory was in use at the peak anyway).

use std::sync::OnceLock;

/// 1 ("an Intel CPU") unless `FERROTUNE_MKL_VENDOR_CHECK=1`, then the real vendor test.
#[no_mangle]
pub extern "C" fn mkl_serv_intel_cpu_true() -> std::os::raw::c_int {
    static ANSWER: OnceLock<std::os::raw::c_int> = OnceLock::new();
    *ANSWER.get_or_init(|| {
        if std::env::var_os("FERROTUNE_MKL_VENDOR_CHECK").is_some_and(|v| v == "1") {
            i32::from(is_genuine_intel())
        } else {
            1
        }
    })
}

/// Sets glibc's `M_MMAP_THRESHOLD` to 32 MiB and `M_TRIM_THRESHOLD` to 1 GiB (call first thing in `main`).
/// `FERROTUNE_MALLOC_DEFAULTS=1` leaves glibc's defaults.
pub fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("FERROTUNE_MALLOC_DEFAULTS").is_none_or(|v| v != "1") {
        // SAFETY: mallopt only changes allocator parameters; called before other threads exist.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn is_genuine_intel() -> bool {
    let r = std::arch::x86_64::__cpuid(0);
    let mut v = [0u8; 12];
    v[..4].copy_from_slice(&r.ebx.to_le_bytes());
    v[4..8].copy_from_slice(&r.edx.to_le_bytes());
    v[8..].copy_from_slice(&r.ecx.to_le_bytes());
    &v == b"GenuineIntel"
}

#[cfg(not(target_arch = "x86_64"))]
fn is_genuine_intel() -> bool {
    false
}
