//! For build scripts of crates with a C++ shim written against libtorch's own headers (quant's autograd
//! Function, train's allocator statistics): included as a module beside torch_link.rs
//! (`#[path = "../../tools/build/torch_shim.rs"] mod torch_shim;`); needs the `cc` build-dependency.

use std::env;
use std::path::PathBuf;

/// Compiles the C++ files `files` (relative to the crate) into the static library `name`, against the
/// headers of the libtorch tch links (`$LIBTORCH/include`, or `$LIBTORCH_INCLUDE/include`), with the flags
/// the PyPI wheel was built with. Needs the `cc` build-dependency.
pub fn compile_torch_shim(files: &[&str], name: &str) {
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    println!("cargo:rerun-if-env-changed=LIBTORCH_INCLUDE");
    let include = env::var("LIBTORCH_INCLUDE")
        .or_else(|_| env::var("LIBTORCH"))
        .map(|p| PathBuf::from(p).join("include"))
        .expect(
            "LIBTORCH is not set: build through `just` or tools/with-torch (tools/setup-torch.sh)",
        );
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .pic(true)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        // The PyPI wheel is built with the C++11 ABI (torch._C._GLIBCXX_USE_CXX11_ABI is True).
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .define("GLOG_USE_GLOG_EXPORT", None)
        .flag_if_supported("-Wno-unused-parameter")
        .files(files)
        .compile(name);
}
