//! Build script of the `ferrotune` binary: the shared libtorch link settings (tools/build/torch_link.rs) plus
//! exporting `mkl_serv_intel_cpu_true` (src/cpu_tuning.rs) from the executable, so that libtorch's MKL
//! resolves its vendor check to it.

#[path = "../../tools/build/torch_link.rs"]
mod torch_link;

fn main() {
    torch_link::link_torch();
    println!("cargo:rustc-link-arg-bins=-Wl,--export-dynamic-symbol=mkl_serv_intel_cpu_true");
}
