//! `ferrotune-model`: the Llama family on libtorch (tch).
//!
//! Llama / Mistral / Qwen2-style decoders configured from HF `config.json`, HF checkpoint loading and saving
//! (safetensors, sharded, memory-mapped), LoRA adapters in PEFT's exact file format, vocabulary resizing and
//! converters from other checkpoint layouts. Module and field names follow the checkpoint keys.

pub mod device;

pub use device::{kind_of, resolve_device};
