//! Build script shared by every crate that links libtorch (model, quant, dist, train, infer, cli); each names
//! it with `build = "../../tools/build/torch_link.rs"`.
//!
//! 1. rpath: torch-sys puts `-Wl,-rpath` only on its own C++ objects, so without this a binary (or test
//!    binary) does not start unless LD_LIBRARY_PATH points at torch/lib.
//! 2. libtorch_cuda: rustc links with `--as-needed`; nothing references libtorch_cuda directly, so it would
//!    be dropped and `tch::Cuda::is_available()` would be false on a GPU machine. Force it in.
//!
//! The lib dir comes from the same variables torch-sys reads (set by tools/setup-torch.sh via
//! tools/with-torch). A crate that needs more in its build script includes this file as a module
//! (`#[path = "../../tools/build/torch_link.rs"] mod torch_link;`) and calls [`link_torch`] (and
//! tools/build/torch_shim.rs for C++ written against libtorch's headers).

use std::env;
use std::path::PathBuf;

#[allow(dead_code)]
fn main() {
    link_torch();
}

/// Prints the cargo directives above (rpath, forced libtorch_cuda).
pub fn link_torch() {
    for v in ["LIBTORCH", "LIBTORCH_LIB", "FERROTUNE_EXTRA_LIB"] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    let lib = env::var("LIBTORCH_LIB")
        .or_else(|_| env::var("LIBTORCH"))
        .map(|p| PathBuf::from(p).join("lib"));
    let Ok(lib) = lib else {
        println!("cargo:warning=LIBTORCH is not set: binaries get no rpath (build through `just` or tools/with-torch)");
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    // The wheel's CUDA runtime libraries (libnvrtc for quant's fused kernels, dlopened by cudarc).
    if let Some(cu) = lib
        .parent()
        .and_then(|t| t.parent())
        .map(|s| s.join("nvidia/cu13/lib"))
    {
        if cu.is_dir() {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{}", cu.display());
        }
    }
    // The directory with the libnccl.so link (cudarc dlopens it by that name), from the setup script.
    if let Ok(extra) = env::var("FERROTUNE_EXTRA_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{extra}");
    }
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
