//! Build script of ferrotune-dist: the libtorch linking every tch crate needs (shared
//! tools/build/torch_link.rs), plus the C++ shim over Debian's libgloo (src/shim/gloo_shim.cc).

#[path = "../../tools/build/torch_link.rs"]
mod torch_link;

fn main() {
    torch_link::link_torch();
    println!("cargo:rerun-if-changed=src/shim/gloo_shim.cc");
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .file("src/shim/gloo_shim.cc")
        .warnings(true)
        .compile("ferrotune_gloo_shim");
    // libtorch_cpu carries its own copy of gloo's symbols; libgloo must come first in the lookup order
    // so the shim (compiled against Debian's headers) binds to Debian's library.
    println!("cargo:rustc-link-lib=dylib=gloo");
}
