//! Build script of ferrotune-train: the libtorch linking every tch crate needs (shared
//! tools/build/torch_link.rs), plus the C++ reader of libtorch's CUDA caching-allocator statistics
//! behind `gpu_memory` (src/shim/alloc_stats.cc).

#[path = "../../tools/build/torch_link.rs"]
mod torch_link;
#[path = "../../tools/build/torch_shim.rs"]
mod torch_shim;

fn main() {
    torch_link::link_torch();
    torch_shim::compile_torch_shim(&["src/shim/alloc_stats.cc"], "ferrotune_alloc_stats");
}
