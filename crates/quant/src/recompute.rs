//! `x · Wᵀ` for a weight that is cheap to rebuild and expensive to keep: the dense W of a quantized
//! projection. Through a small libtorch autograd Function (src/shim/recompute_matmul.cc) whose graph node
//! holds a closure that rebuilds W, not W itself: the forward rebuilds W, multiplies and frees it, and the
//! backward rebuilds it again for `dx = dy · W` (as bitsandbytes' `MatMul4Bit`). W gets no gradient.
//!
//! Why: with plain tensor ops autograd saves every dense dequantized projection until its backward — in
//! an activation-checkpointed QLoRA layer that is all seven of them at once (≈ 400 MB per Llama-2-7B layer
//! in bf16), the largest transient of the step. The price is one more dequantization per projection.
//! Without a graph to record (no grad mode, or `x` needs no gradient) the plain product is used.

use std::ffi::{c_char, c_void, CStr};
use tch::Tensor;

type WeightFn = unsafe extern "C" fn(*mut c_void) -> *mut c_void;
type DropFn = unsafe extern "C" fn(*mut c_void);

unsafe extern "C" {
    fn ftq_recomputed_matmul(
        x: *const c_void,
        state: *mut c_void,
        make: WeightFn,
        drop: DropFn,
        err: *mut *mut c_char,
    ) -> *mut c_void;
    fn ftq_free_error(err: *mut c_char);
}

/// The closure the graph node keeps: rebuilds the dense weight `[out, in]` in the product's dtype.
type Rebuild = Box<dyn Fn() -> Tensor + Send>;

/// `x · weight()ᵀ` (`x` `[..., in]`, `weight()` `[out, in]`, same dtype and device) with the gradient of
/// `x` computed from a rebuilt weight instead of a saved one. `weight` runs once in the forward and once
/// in the backward, without grad mode.
pub fn matmul_recomputing(x: &Tensor, weight: impl Fn() -> Tensor + Send + 'static) -> Tensor {
    if !x.requires_grad() {
        let w = weight();
        return x.matmul(&w.tr());
    }
    let state: *mut Rebuild = Box::into_raw(Box::new(Box::new(weight)));
    let mut err: *mut c_char = std::ptr::null_mut();
    // SAFETY: `x` is a live tch tensor (an `at::Tensor*`); the shim takes ownership of `state` and
    // releases it through `drop_rebuild` exactly once; the result is a new heap `at::Tensor*` that tch
    // owns from here on.
    let y = unsafe {
        ftq_recomputed_matmul(
            x.as_ptr().cast(),
            state.cast(),
            rebuild,
            drop_rebuild,
            &mut err,
        )
    };
    if y.is_null() {
        // SAFETY: on failure the shim set `err` to a malloc'd C string (or left it null).
        let msg = unsafe { take_error(err) };
        panic!("quantized matmul failed: {msg}");
    }
    // SAFETY: `y` is a fresh `at::Tensor*` allocated by the shim, now owned by this Tensor.
    unsafe { Tensor::from_ptr(y.cast()) }
}

/// # Safety
/// `err` is null or a message the shim allocated.
unsafe fn take_error(err: *mut c_char) -> String {
    if err.is_null() {
        return "unknown error".into();
    }
    // SAFETY: a NUL-terminated message from the shim, freed once by the shim's own `free`.
    unsafe {
        let msg = CStr::from_ptr(err).to_string_lossy().into_owned();
        ftq_free_error(err);
        msg
    }
}

/// Called by the shim (forward and backward): a new heap tensor with the rebuilt weight, or null when
/// the closure panicked (the shim turns that into a C++ exception, i.e. an autograd error).
unsafe extern "C" fn rebuild(state: *mut c_void) -> *mut c_void {
    // SAFETY: `state` is the live `Box<Rebuild>` handed to the shim, only read here.
    let f = unsafe { &*(state as *const Rebuild) };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(mut w) => {
            let p = w.as_mut_ptr();
            std::mem::forget(w);
            p.cast()
        }
        Err(_) => std::ptr::null_mut(),
    }
}

/// Called by the shim exactly once, when the last reference to `state` goes.
unsafe extern "C" fn drop_rebuild(state: *mut c_void) {
    // SAFETY: `state` came from `Box::into_raw` and the shim calls this once.
    drop(unsafe { Box::from_raw(state as *mut Rebuild) });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tch::{Device, Kind};

    /// Counts rebuilds and drops of one weight.
    fn counted(
        w: &Tensor,
        calls: &Arc<AtomicUsize>,
        drops: &Arc<AtomicUsize>,
    ) -> impl Fn() -> Tensor + Send {
        struct OnDrop(Arc<AtomicUsize>);
        impl Drop for OnDrop {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let (w, calls, guard) = (w.shallow_clone(), calls.clone(), OnDrop(drops.clone()));
        move || {
            let _keep = &guard;
            calls.fetch_add(1, Ordering::SeqCst);
            w.copy()
        }
    }

    #[test]
    fn same_value_and_input_gradient_as_plain_matmul_rebuilding_twice() {
        same_as_plain_matmul_on(Device::Cpu);
        // On CUDA the backward runs on autograd's device thread, which calls back into Rust.
        if tch::Cuda::is_available() {
            same_as_plain_matmul_on(Device::Cuda(0));
        }
    }

    fn same_as_plain_matmul_on(dev: Device) {
        tch::manual_seed(3);
        let opts = (Kind::Float, dev);
        let w = Tensor::randn([5, 7], opts);
        let x = Tensor::randn([2, 3, 7], opts).set_requires_grad(true);
        let g = Tensor::randn([2, 3, 5], opts);
        let (calls, drops) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));

        let y = matmul_recomputing(&x, counted(&w, &calls, &drops));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "one rebuild in the forward"
        );
        assert_eq!(
            drops.load(Ordering::SeqCst),
            0,
            "the graph holds the closure"
        );
        (&y * &g).sum(Kind::Float).backward();
        assert_eq!(calls.load(Ordering::SeqCst), 2, "one more in the backward");
        let dx = x.grad();
        drop(y);
        assert_eq!(drops.load(Ordering::SeqCst), 1, "released with the graph");

        // The oracle: libtorch's own matmul and its autograd.
        let x2 = x.detach().set_requires_grad(true);
        let y2 = x2.matmul(&w.tr());
        (&y2 * &g).sum(Kind::Float).backward();
        let rec = matmul_recomputing(&x.detach(), move || w.copy());
        assert_eq!(f64::try_from((y2.detach() - rec).abs().max()).unwrap(), 0.0);
        assert!(
            dx.allclose(&x2.grad(), 1e-5, 1e-5, false),
            "dx = dy·W on {dev:?}"
        );
    }

    #[test]
    fn no_graph_when_the_input_needs_no_gradient_and_errors_surface() {
        let opts = (Kind::Float, Device::Cpu);
        let w = Tensor::randn([4, 3], opts);
        let x = Tensor::randn([2, 3], opts);
        let (calls, drops) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let y = matmul_recomputing(&x, counted(&w, &calls, &drops));
        assert!(!y.requires_grad());
        assert_eq!(
            (calls.load(Ordering::SeqCst), drops.load(Ordering::SeqCst)),
            (1, 1)
        );

        // A weight of the wrong shape: libtorch's error comes back as a panic naming the operation.
        let x = Tensor::randn([2, 5], opts).set_requires_grad(true);
        let bad = std::panic::catch_unwind(|| {
            matmul_recomputing(&x, move || Tensor::zeros([4, 3], opts))
        });
        let msg = bad
            .err()
            .and_then(|e| e.downcast::<String>().ok())
            .expect("a panic message");
        assert!(msg.contains("quantized matmul failed"), "{msg}");
    }
}
