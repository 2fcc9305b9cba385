//! `ferrotune-quant`: quantized weights for memory-lean fine-tuning and inference.
//!
//! int8 per-row absmax (LLM.int8 style), 4-bit NF4 / FP4 blockwise with double quantization (bitsandbytes'
//! code tables and byte layout), GPTQ int4, and a `QuantLinear` that dequantizes on the fly and carries LoRA.
//!
//! # API (stable; other crates build on it)
//! - [`format`]: [`QuantSpec`] { `method`: [`QuantMethod`] (`Int8 { threshold }`, `Nf4`, `Fp4`,
//!   `Rtn { bits, group_size }`, `Gptq { bits, group_size, act_order }`), `double_quant`, `compute_dtype`
//!   (tch `Kind`), `block_size` (64) }, the [`QuantKernel`] trait (a `ferrotune_model::LinearKernel` that
//!   also names its `method()`, lists its `tensors(prefix)` for saving and its `resident_bytes()`),
//!   [`QuantWeight`] (what a projection's `BaseWeight::Kernel` holds; `QuantWeight::base(kernel)` builds the
//!   base weight, [`quant_kernel`] finds the kernel of a projection again) and the HF-style
//!   `quantization_config` (`QuantSpec::to_hf_config` / `from_hf_config`).
//! - [`quantize_model`]`(&mut LlamaForCausalLM, &QuantSpec) -> QuantReport`: quantizes every decoder
//!   projection in place (freeing the dense weights); [`quantize_weight`] quantizes one weight;
//!   [`memory_report`] counts quantized/dense bytes.
//! - [`load_model`]`(dir, dtype, device, Option<&QuantSpec>)`: a 16-bit or pre-quantized directory, quantized
//!   while streaming when a spec is given; [`load_quantized`] / [`load_prequantized`] /
//!   [`dir_quantization`]; [`save_quantized`] writes a pre-quantized directory.
//! - [`QuantLinear`]: the NF4/FP4/int8 kernel; `blockwise`, `int8` and `codes` hold bitsandbytes' algorithms.

pub mod blockwise;
pub mod calibrate;
pub mod codes;
pub mod cuda_dequant;
pub mod error;
pub mod format;
pub mod gptq;
pub mod gptq_linear;
pub mod gptq_merge;
pub mod gptq_model;
pub mod int8;
pub mod load;
pub mod quant_linear;
pub mod quantize;
pub mod recompute;
pub mod rtn;
pub mod save;

pub use error::QuantError;
pub use format::{
    quant_kernel, QuantKernel, QuantMethod, QuantSpec, QuantWeight, DEFAULT_BLOCK_SIZE,
    DOUBLE_QUANT_BLOCK_SIZE,
};
pub use gptq::{gptq_quantize, GptqConfig, Hessian};
pub use gptq_linear::Int4GroupLinear;
pub use gptq_merge::{dequantize_model, MERGE_ROUNDING_WARNING};
pub use gptq_model::{quantize_model_int4, Int4Method};
pub use load::{
    dir_quantization, drop_quantized_vars, kernel_from_tensors, load_model, load_prequantized,
    load_quantized, Loaded,
};
pub use quant_linear::{QuantData, QuantLinear};
pub use quantize::{memory_report, quantize_model, quantize_weight, QuantReport};
pub use rtn::quantize_rtn;
pub use save::{quantized_state_dict, save_quantized};
