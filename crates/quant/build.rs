//! Build script of ferrotune-quant: the libtorch linking every tch crate needs (shared
//! tools/build/torch_link.rs), plus the C++ autograd Function behind `recompute::matmul_recomputing`
//! (src/shim/recompute_matmul.cc) and the current-stream lookup of the fused CUDA kernels
//! (src/shim/cuda_stream.cc), compiled against the headers of the same libtorch tch links.

#[path = "../../tools/build/torch_link.rs"]
mod torch_link;
#[path = "../../tools/build/torch_shim.rs"]
mod torch_shim;

fn main() {
    torch_link::link_torch();
    torch_shim::compile_torch_shim(
        &["src/shim/recompute_matmul.cc", "src/shim/cuda_stream.cc"],
        "ferrotune_quant_shim",
    );
}
