//! `ferrotune-quant`: quantized weights for memory-lean fine-tuning and inference.
//!
//! int8 per-row absmax (LLM.int8 style), 4-bit NF4 / FP4 blockwise with double quantization (bitsandbytes'
//! code tables and byte layout), GPTQ int4, and a `QuantLinear` that dequantizes on the fly and carries LoRA.
