//! `ferrotune-infer`: text generation on ferrotune models.
//!
//! KV-cached greedy and sampled decoding, batched prompts, streaming token iterators, chat sessions over the
//! data crate's templates, and the HTTP server (`/stream` and OpenAI-compatible endpoints).
//!
//! Layers, bottom up: [`sampling`] and [`stop`] (pure logic), [`codec`] (tokenizer view + incremental
//! decoding), [`model`] (the [`CausalLm`] trait and KV cache), [`batch`] (left-padded batch tensors),
//! [`sequence`] (per-request state), [`generate`] (batch and streaming generation), [`scheduler`]
//! (continuous batching engine thread) and [`server`] (axum). [`llama`], [`templates`] and [`load`] connect
//! them to `ferrotune-model`, `ferrotune-data` and `ferrotune-tokenizer`.

pub mod batch;
pub mod chat;
pub mod codec;
pub mod error;
pub mod generate;
pub mod llama;
pub mod load;
pub mod model;
pub mod sampling;
pub mod scheduler;
pub mod sequence;
pub mod server;
pub mod stop;
pub mod templates;
pub mod testing;
mod tokenizer_codec;

pub use codec::{IncrementalDecoder, TextCodec};
pub use error::{InferError, Result};
pub use generate::{generate_batch, Completion, TokenStream};
pub use model::{CausalLm, KvCache};
pub use sampling::{Sampler, SamplingParams};
pub use scheduler::{EngineConfig, EngineHandle, Event, GenRequest};
pub use sequence::{FinishReason, GenerationParams};
