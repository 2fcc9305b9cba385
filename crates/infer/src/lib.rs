//! `ferrotune-infer`: text generation on ferrotune models.
//!
//! KV-cached greedy and sampled decoding, batched prompts, streaming token iterators, chat sessions over the
//! data crate's templates, and the HTTP server (`/stream` and OpenAI-compatible endpoints).
