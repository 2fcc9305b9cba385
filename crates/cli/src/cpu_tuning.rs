//! CPU runtime tuning of the process: libtorch's bundled Intel MKL gets its AVX2 / AVX-512 kernels on
//! non-Intel x86 CPUs, and the whole process allocates through jemalloc instead of glibc malloc.
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
//! **malloc.** On Linux/glibc the binary links jemalloc with unprefixed symbols (tikv-jemalloc-sys,
//! `override_allocator_on_supported_platforms`): `malloc`, `free`, `posix_memalign`, … of the whole process,
//! libtorch's CPU tensors included (c10 allocates them with `posix_memalign`), resolve to it instead of glibc.
//! glibc leaves two bad choices for tensor-sized blocks (MiBs, allocated and freed many times per step):
//! - above its mmap threshold each block is a fresh `mmap`, returned on `free`: every tensor of every
//!   training or decode step costs page faults and zeroed pages (a third of the page faults and ~15 % of the
//!   CPU time of a LoRA step, measured);
//! - below it (the threshold rises dynamically to 32 MiB after the first large free) blocks come from one
//!   best-fit heap that only shrinks from the top: short-lived temporaries leave holes between the
//!   activations saved for backward, later larger requests do not fit them and the heap grows. Peak RSS
//!   was 35–55 % above the live tensors of a LoRA step (BENCHMARKS.md `## estimate`).
//!
//! jemalloc serves large blocks as page runs carved lowest-address-first from per-arena extents and
//! coalesces freed neighbours, so the holes stay reusable: peak RSS ≈ live tensors. Its decay (the purge of
//! unused pages back to the kernel) is off, [`malloc_conf`]: a training step frees and re-allocates the same
//! sizes every step, and purging them between steps would bring the page faults back (measured: 4–8× the
//! system time). Freed memory therefore stays mapped for reuse, as glibc's heap kept it.
//! `MALLOC_CONF` overrides this at run time, e.g. `MALLOC_CONF=dirty_decay_ms:10000` for a long-running
//! `serve` that should give idle memory back.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
use tikv_jemalloc_sys as _;

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

/// jemalloc's compile-time options (read before `main`; `MALLOC_CONF` in the environment takes precedence):
/// no decay, freed pages are kept for reuse (see the module docs).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[used]
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static malloc_conf: &[u8; 36] = b"dirty_decay_ms:-1,muzzy_decay_ms:-1\0";

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
