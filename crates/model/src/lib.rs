//! `ferrotune-model`: the Llama family on libtorch (tch).
//!
//! Llama / Mistral / Qwen2-style decoders configured from HF `config.json`, HF checkpoint loading and saving
//! (safetensors, sharded, memory-mapped), LoRA adapters in PEFT's exact file format, vocabulary resizing and
//! activation checkpointing. Module and field names follow the checkpoint keys.

pub mod attention;
pub mod cache;
pub mod checkpoint_index;
pub mod checkpointing;
pub mod config;
pub mod convert;
pub mod convert_gguf;
pub mod convert_llama2c;
pub mod convert_meta;
pub mod convert_pickle;
pub mod convert_vocab;
pub mod device;
pub mod error;
pub mod fused_ce;
pub mod hub;
pub mod hub_fetch;
pub mod layers;
pub mod linear;
pub mod llama;
pub mod lora;
pub mod lora_model;
pub mod mask;
pub mod pretrained;
pub mod resize;
pub mod rope;
pub mod safetensors_io;

pub use cache::KvCache;
pub use checkpoint_index::CheckpointIndex;
pub use config::{LlamaConfig, RopeScaling};
pub use device::{dtype_of, kind_of, resolve_device};
pub use error::ModelError;
pub use linear::{AdapterSelection, AdapterState, BaseWeight, Linear, LinearKernel};
pub use llama::{layer_index, shifted_ce_sum, DecoderLayer, LlamaForCausalLM, LlamaModel};
pub use lora::{LoraAdapter, LoraConfig, ALL_TARGETS};
pub use lora_model::{ADAPTER_CONFIG, ADAPTER_WEIGHTS};
pub use mask::{padding_position_ids, segment_position_ids, AttentionMask};
pub use pretrained::{
    checkpoint_files, generation_config, load_pretrained, load_weights, save_pretrained,
    staging_dir, write_shards, DEFAULT_MAX_SHARD_SIZE,
};
