//! The fused 4-bit dequantization kernel for CUDA: one launch per weight turns packed NF4/FP4 codes and
//! their fp32 absmax into the dense weight in fp32, bf16 or fp16 — the same values as the tensor-op path
//! (`quant_map[code] · absmax` in fp32, then one round-to-nearest-even cast), bit for bit.
//!
//! Why: the tensor-op path costs about a dozen small libtorch ops per 4 Mi elements; a QLoRA step of a 7B
//! model dequantizes 224 projections three times (forward, recompute, backward), and at that size the
//! step becomes bound by the CPU launching kernels. The kernel source is compiled at run time with NVRTC
//! (from the torch wheel's `nvidia/cu13/lib`, loaded by cudarc like the driver), once per device, and
//! launched on libtorch's current stream (src/shim/cuda_stream.cc), so it is ordered with torch's own
//! work. When NVRTC or the driver cannot be used, callers fall back to the tensor ops (one warning).

use cudarc::driver::{result as cu, sys};
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::{Mutex, OnceLock};
use tch::{Device, Kind, Tensor};

/// The kernels: one thread per packed byte (two values; element `2j` is the high nibble).
pub const KERNEL_SOURCE: &str = r#"
__device__ __forceinline__ float ftq_f32(float f) { return f; }
__device__ __forceinline__ unsigned short ftq_bf16(float f) {
  unsigned int u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (unsigned short)(u >> 16);
}
__device__ __forceinline__ unsigned short ftq_f16(float f) {
  unsigned short h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
}
#define FTQ_DEQUANT4(NAME, T, CVT)                                                                   \
  extern "C" __global__ void NAME(const unsigned char* __restrict__ packed,                         \
                                  const float* __restrict__ absmax, const float* __restrict__ map,  \
                                  T* __restrict__ out, long long n, long long block) {              \
    const long long bytes = (n + 1) / 2;                                                             \
    for (long long j = blockIdx.x * (long long)blockDim.x + threadIdx.x; j < bytes;                  \
         j += (long long)gridDim.x * blockDim.x) {                                                   \
      const unsigned char b = packed[j];                                                             \
      const long long e = 2 * j;                                                                     \
      const float s = absmax[e / block];                                                             \
      out[e] = CVT(map[b >> 4] * s);                                                                 \
      if (e + 1 < n) out[e + 1] = CVT(map[b & 15] * s);                                              \
    }                                                                                                \
  }
FTQ_DEQUANT4(ftq_dequant4_f32, float, ftq_f32)
FTQ_DEQUANT4(ftq_dequant4_bf16, unsigned short, ftq_bf16)
FTQ_DEQUANT4(ftq_dequant4_f16, unsigned short, ftq_f16)
"#;

const THREADS: u32 = 256;
const MAX_BLOCKS: i64 = 1 << 16;

unsafe extern "C" {
    fn ftq_current_cuda_stream(device: i32, out: *mut *mut c_void) -> i32;
}

/// The loaded kernels of one device.
struct Kernels {
    ctx: sys::CUcontext,
    f32: sys::CUfunction,
    bf16: sys::CUfunction,
    f16: sys::CUfunction,
}

// SAFETY: CUDA function and context handles may be used from any thread of the process.
unsafe impl Send for Kernels {}

/// Per device ordinal: the kernels, or `None` once loading failed (not retried).
static LOADED: OnceLock<Mutex<HashMap<usize, Option<Kernels>>>> = OnceLock::new();

/// Compiles [`KERNEL_SOURCE`] to PTX for `arch` (e.g. `compute_90`) with NVRTC. Also used by the tests on
/// machines without a GPU, where libnvrtc is still present in the torch wheel.
pub fn compile_ptx(arch: &str) -> Result<String, String> {
    preload_nvrtc_builtins();
    // cudarc panics when the library cannot be loaded.
    std::panic::catch_unwind(|| {
        let opts = cudarc::nvrtc::CompileOptions {
            options: vec![format!("--gpu-architecture={arch}")],
            ..Default::default()
        };
        cudarc::nvrtc::compile_ptx_with_opts(KERNEL_SOURCE, opts)
            .map(|p| p.to_src())
            .map_err(|e| format!("NVRTC: {e:?}"))
    })
    .unwrap_or_else(|_| Err("NVRTC (libnvrtc.so) could not be loaded".into()))
}

/// libnvrtc dlopens its builtins library by bare name, which finds it only on LD_LIBRARY_PATH (the
/// binary's rpath applies to the binary's own loads, not to libnvrtc's). Loading it from here first, by
/// the same name, puts it in the process, where libnvrtc's lookup finds it.
fn preload_nvrtc_builtins() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        for name in [c"libnvrtc-builtins.so.13.0", c"libnvrtc-builtins.so.13"] {
            // SAFETY: dlopen of a library with no initialisation side effects; the handle is kept for the
            // life of the process.
            if !unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) }.is_null()
            {
                break;
            }
        }
    });
}

fn load(ordinal: usize) -> Result<Kernels, String> {
    std::panic::catch_unwind(|| -> Result<Kernels, String> {
        let e = |what: &str, err: cu::DriverError| format!("{what}: {err:?}");
        // SAFETY: plain driver calls on a device/context this process already uses through libtorch.
        unsafe {
            if !sys::is_culib_present() {
                return Err("the CUDA driver library is not present".into());
            }
            cu::init().map_err(|x| e("cuInit", x))?;
            let dev = cu::device::get(ordinal as i32).map_err(|x| e("cuDeviceGet", x))?;
            let cc = |a| cu::device::get_attribute(dev, a).map_err(|x| e("compute capability", x));
            let major = cc(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
            let minor = cc(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
            let ptx = compile_ptx(&format!("compute_{major}{minor}"))?;
            // libtorch's context: the device's primary context (kept retained for the process).
            let ctx = cu::primary_ctx::retain(dev).map_err(|x| e("cuDevicePrimaryCtxRetain", x))?;
            cu::ctx::set_current(ctx).map_err(|x| e("cuCtxSetCurrent", x))?;
            let image = CString::new(ptx).map_err(|_| "PTX with a NUL byte".to_string())?;
            let module = cu::module::load_data(image.as_ptr().cast())
                .map_err(|x| e("cuModuleLoadData", x))?;
            let f = |name: &str| {
                cu::module::get_function(module, CString::new(name).unwrap())
                    .map_err(|x| e("cuModuleGetFunction", x))
            };
            Ok(Kernels {
                ctx,
                f32: f("ftq_dequant4_f32")?,
                bf16: f("ftq_dequant4_bf16")?,
                f16: f("ftq_dequant4_f16")?,
            })
        }
    })
    .unwrap_or_else(|_| Err("the CUDA driver library could not be loaded".into()))
}

/// The dense `numel` values `quant_map[code] · absmax[i / block]` in `kind` (f32, bf16 or f16) from the
/// packed codes (uint8 `[⌈numel/2⌉]`), the fp32 absmax per block and the fp32 16-value map, all on the
/// same CUDA device. `None` off CUDA, for another kind, or when the kernel cannot be used (then the
/// caller uses the tensor ops).
pub fn dequantize_4bit(
    packed: &Tensor,
    absmax: &Tensor,
    quant_map: &Tensor,
    numel: i64,
    block: i64,
    kind: Kind,
) -> Option<Tensor> {
    let Device::Cuda(ordinal) = packed.device() else {
        return None;
    };
    if !matches!(kind, Kind::Float | Kind::BFloat16 | Kind::Half) || block % 2 != 0 {
        return None;
    }
    let mut loaded = LOADED.get_or_init(Default::default).lock().ok()?;
    let k = loaded
        .entry(ordinal)
        .or_insert_with(|| match load(ordinal) {
            Ok(k) => Some(k),
            Err(msg) => {
                tracing::warn!(
                    device = ordinal,
                    "fused 4-bit dequantization unavailable, using tensor ops: {msg}"
                );
                None
            }
        });
    let k = k.as_ref()?;
    let f = match kind {
        Kind::Float => k.f32,
        Kind::BFloat16 => k.bf16,
        _ => k.f16,
    };
    let packed = packed.contiguous();
    let absmax = absmax.to_kind(Kind::Float).contiguous();
    let map = quant_map
        .to_device(packed.device())
        .to_kind(Kind::Float)
        .contiguous();
    let out = Tensor::empty([numel], (kind, packed.device()));
    let mut stream: *mut c_void = std::ptr::null_mut();
    // SAFETY: the shim writes libtorch's current stream of this device (or fails and leaves it).
    if unsafe { ftq_current_cuda_stream(ordinal as i32, &mut stream) } != 0 {
        return None;
    }
    let bytes = (numel + 1) / 2;
    let blocks = ((bytes + THREADS as i64 - 1) / THREADS as i64).clamp(1, MAX_BLOCKS) as u32;
    let (mut a, mut b, mut c, mut d) = (
        packed.data_ptr() as u64,
        absmax.data_ptr() as u64,
        map.data_ptr() as u64,
        out.data_ptr() as u64,
    );
    let (mut n, mut bs) = (numel, block);
    let mut params: [*mut c_void; 6] = [
        (&mut a as *mut u64).cast(),
        (&mut b as *mut u64).cast(),
        (&mut c as *mut u64).cast(),
        (&mut d as *mut u64).cast(),
        (&mut n as *mut i64).cast(),
        (&mut bs as *mut i64).cast(),
    ];
    // SAFETY: the pointers are device buffers of the sizes the kernel reads and writes (packed ⌈n/2⌉
    // bytes, absmax ⌈n/block⌉ floats, map 16 floats, out n elements), alive until the launch is ordered
    // on libtorch's stream (the caching allocator reuses freed blocks in stream order).
    let launched = unsafe {
        cu::ctx::set_current(k.ctx).and_then(|_| {
            cu::launch_kernel(
                f,
                (blocks, 1, 1),
                (THREADS, 1, 1),
                0,
                stream as sys::CUstream,
                &mut params,
            )
        })
    };
    match launched {
        Ok(()) => Some(out),
        Err(err) => {
            tracing::warn!(
                device = ordinal,
                "fused 4-bit dequantization failed: {err:?}"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blockwise::{quantize_4bit, FourBit};

    #[test]
    fn kernel_source_compiles_with_nvrtc() {
        // SAFETY: only dlopens candidate names.
        if !std::panic::catch_unwind(|| unsafe { cudarc::nvrtc::sys::is_culib_present() })
            .unwrap_or(false)
        {
            eprintln!("skipped kernel_source_compiles_with_nvrtc: libnvrtc not loadable here");
            return;
        }
        for arch in ["compute_80", "compute_90"] {
            let ptx = compile_ptx(arch).unwrap_or_else(|e| panic!("{arch}: {e}"));
            for k in ["ftq_dequant4_f32", "ftq_dequant4_bf16", "ftq_dequant4_f16"] {
                assert!(ptx.contains(&format!(".entry {k}")), "{arch}: no entry {k}");
            }
        }
    }

    #[test]
    fn fused_kernel_equals_tensor_ops_bit_for_bit_on_cuda() {
        let cpu = Tensor::randn([3, 1000], (Kind::Float, Device::Cpu));
        assert!(
            dequantize_4bit(&cpu, &cpu, &cpu, 3000, 64, Kind::Float).is_none(),
            "off CUDA the caller uses tensor ops"
        );
        if !tch::Cuda::is_available() {
            eprintln!("skipped fused_kernel_equals_tensor_ops_bit_for_bit_on_cuda: no CUDA device");
            return;
        }
        tch::manual_seed(7);
        let dev = Device::Cuda(0);
        // An odd element count (a partial last block and a half-used last byte), large and tiny values.
        let w = (Tensor::randn([77, 131], (Kind::Float, dev)) * 0.05).to_kind(Kind::BFloat16);
        for four in [FourBit::Nf4, FourBit::Fp4] {
            for dq in [false, true] {
                let p = quantize_4bit(&w, four, 64, dq);
                for kind in [Kind::Float, Kind::BFloat16, Kind::Half] {
                    let fused = dequantize_4bit(
                        &p.packed,
                        &p.absmax_f32(),
                        &p.quant_map,
                        p.numel,
                        64,
                        kind,
                    )
                    .expect("the fused kernel on CUDA");
                    let ops = p.dequantize_chunked(kind, 1 << 12);
                    let same = fused
                        .to_kind(Kind::Float)
                        .eq_tensor(&ops.to_kind(Kind::Float))
                        .all();
                    assert!(
                        bool::try_from(same).unwrap(),
                        "{four:?} dq {dq} {kind:?} differs"
                    );
                }
            }
        }
    }
}
