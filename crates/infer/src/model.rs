//! What the engine needs from a model: one call mapping (tokens, positions, mask, KV cache) to logits.
//!
//! Keeping this a small trait lets the engine, the scheduler and the server be tested with a tiny
//! deterministic model ([`crate::testing::ToyModel`]) and run unchanged on the Llama of `ferrotune-model`
//! ([`crate::llama::LlamaEngineModel`]).

use crate::error::{InferError, Result};
use tch::{Device, Tensor};

/// Per-layer key/value cache of a batch: `(k, v)`, each `[B, n_kv_heads, T_cached, head_dim]`.
#[derive(Debug, Default)]
pub struct KvCache {
    /// One entry per layer, `None` before the first forward.
    pub layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// An empty cache for `n_layers` layers.
    pub fn new(n_layers: usize) -> Self {
        KvCache {
            layers: (0..n_layers).map(|_| None).collect(),
        }
    }

    /// Cached sequence length (0 when empty).
    pub fn len(&self) -> i64 {
        match self.layers.first() {
            Some(Some((k, _))) => k.size()[2],
            _ => 0,
        }
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps the batch rows `idx` (in that order).
    pub fn select_rows(&mut self, idx: &Tensor) {
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.index_select(0, idx);
            *v = v.index_select(0, idx);
        }
    }

    /// Drops the first `n` cached positions of every row.
    pub fn drop_front(&mut self, n: i64) {
        for (k, v) in self.layers.iter_mut().flatten() {
            let t = k.size()[2];
            *k = k.narrow(2, n, t - n);
            *v = v.narrow(2, n, t - n);
        }
    }

    /// Inserts `n` zero positions in front of every row (left padding, masked out by the caller).
    pub fn pad_front(&mut self, n: i64) {
        if n == 0 {
            return;
        }
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = pad_dim2(k, n);
            *v = pad_dim2(v, n);
        }
    }

    /// Appends the rows of `other` (same length and layer count) after this cache's rows.
    pub fn append_rows(&mut self, other: KvCache) -> Result<()> {
        if self.layers.len() != other.layers.len() {
            return Err(InferError::param("kv_cache", "layer counts differ"));
        }
        for (mine, theirs) in self.layers.iter_mut().zip(other.layers) {
            *mine = match (mine.take(), theirs) {
                (Some((k1, v1)), Some((k2, v2))) => {
                    Some((Tensor::cat(&[k1, k2], 0), Tensor::cat(&[v1, v2], 0)))
                }
                (None, t) => t,
                (m, None) => m,
            };
        }
        Ok(())
    }
}

fn pad_dim2(t: &Tensor, n: i64) -> Tensor {
    let mut shape = t.size();
    shape[2] = n;
    Tensor::cat(
        &[
            Tensor::zeros(shape.as_slice(), (t.kind(), t.device())),
            t.shallow_clone(),
        ],
        2,
    )
}

/// A causal language model the engine can drive.
pub trait CausalLm: Send {
    /// Logits `[B, T', V]` for `input_ids` `[B, T]` (i64) at `positions` `[B, T]` (i64, RoPE positions),
    /// attending where `mask` (bool `[B, 1, T, T_cached + T]`, true = may attend) allows, reading and
    /// extending `cache`. `adapters[b]` is row `b`'s LoRA adapter (`None`: the base model); rows of one
    /// batch may use different adapters. The engine reads only the last position, so `T'` may be 1 (only
    /// the last position's logits) or `T`.
    fn forward(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        mask: &Tensor,
        cache: &mut KvCache,
        adapters: &[Option<String>],
    ) -> Result<Tensor>;
    /// Number of decoder layers (the cache's length).
    fn n_layers(&self) -> usize;
    /// Longest sequence (prompt + completion) the model handles.
    fn max_context(&self) -> usize;
    /// Device the inputs must live on.
    fn device(&self) -> Device;
    /// Adapter names rows can use (empty for a plain model).
    fn adapters(&self) -> Vec<String> {
        Vec::new()
    }
}
