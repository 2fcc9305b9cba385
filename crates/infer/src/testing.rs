//! Small deterministic stand-ins for tests and examples: [`ToyModel`], a one-layer attention-only
//! transformer with fixed pseudo-random weights that honours positions, masks and the KV cache exactly as a
//! real model must (so batched, cached and continuous-batched decoding can be checked against one-by-one
//! decoding), and [`ByteCodec`], a byte-level tokenizer (ids 3..=258 are bytes, 1 = BOS, 2 = EOS).

use crate::codec::TextCodec;
use crate::error::Result;
use crate::model::{CausalLm, KvCache};
use crate::sampling::SplitMix64;
use std::time::Duration;
use tch::{Device, Kind, Tensor};

/// Byte-level tokenizer: `0` pad/unk, `1` BOS, `2` EOS, `3 + b` the byte `b`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ByteCodec;

impl ByteCodec {
    /// Vocabulary size.
    pub const VOCAB: usize = 259;
}

impl TextCodec for ByteCodec {
    fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let mut ids: Vec<u32> = add_bos.then_some(1).into_iter().collect();
        ids.extend(text.bytes().map(|b| b as u32 + 3));
        Ok(ids)
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        let bytes: Vec<u8> = ids
            .iter()
            .filter(|&&i| (3..259).contains(&i))
            .map(|&i| (i - 3) as u8)
            .collect();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn bos_id(&self) -> Option<u32> {
        Some(1)
    }

    fn eos_id(&self) -> Option<u32> {
        Some(2)
    }

    fn piece_id(&self, _piece: &str) -> Option<u32> {
        None
    }
}

/// A one-layer, one-head attention model with seeded weights; see the module doc.
#[derive(Debug)]
pub struct ToyModel {
    emb: Tensor,
    wq: Tensor,
    wk: Tensor,
    wv: Tensor,
    freqs: Tensor,
    vocab: usize,
    max_context: usize,
    /// Sleep per forward call (to make streams slow enough to cancel in tests).
    pub delay: Duration,
    adapters: Vec<String>,
}

fn seeded(rng: &mut SplitMix64, shape: &[i64], scale: f64) -> Tensor {
    let n: i64 = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| ((rng.next_f64() * 2.0 - 1.0) * scale) as f32)
        .collect();
    Tensor::from_slice(&v).view(shape)
}

impl ToyModel {
    /// A model over `vocab` ids, hidden size 16, from `seed`.
    pub fn new(vocab: usize, max_context: usize, seed: u64) -> Self {
        let d = 16;
        let mut rng = SplitMix64::new(seed);
        ToyModel {
            emb: seeded(&mut rng, &[vocab as i64, d], 1.0),
            wq: seeded(&mut rng, &[d, d], 0.5),
            wk: seeded(&mut rng, &[d, d], 0.5),
            wv: seeded(&mut rng, &[d, d], 0.5),
            freqs: seeded(&mut rng, &[d], 1.0),
            vocab,
            max_context,
            delay: Duration::ZERO,
            adapters: Vec::new(),
        }
    }

    /// Registers adapter names; a row using adapter `i` gets +100 on the logit of id `3 + i` (byte `i`),
    /// an effect tests can see.
    pub fn with_adapters(mut self, names: &[&str]) -> Self {
        self.adapters = names.iter().map(|s| s.to_string()).collect();
        self
    }
}

impl CausalLm for ToyModel {
    fn forward(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        mask: &Tensor,
        cache: &mut KvCache,
        adapters: &[Option<String>],
    ) -> Result<Tensor> {
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        let (b, t) = (input_ids.size()[0], input_ids.size()[1]);
        let x = self
            .emb
            .index_select(0, &input_ids.view([-1]))
            .view([b, t, -1]);
        let pe = (positions.to_kind(Kind::Float).unsqueeze(-1) * &self.freqs).sin();
        let x = x + pe;
        let q = x.matmul(&self.wq).unsqueeze(1);
        let mut k = x.matmul(&self.wk).unsqueeze(1);
        let mut v = x.matmul(&self.wv).unsqueeze(1);
        if let Some((pk, pv)) = cache.layers[0].take() {
            k = Tensor::cat(&[pk, k], 2);
            v = Tensor::cat(&[pv, v], 2);
        }
        let scores = q.matmul(&k.transpose(-1, -2)) / 4.0;
        let scores = scores.masked_fill(&mask.logical_not(), f64::NEG_INFINITY);
        let out = scores.softmax(-1, Kind::Float).matmul(&v).squeeze_dim(1);
        cache.layers[0] = Some((k, v));
        let logits = (x + out).matmul(&self.emb.tr()) * 3.0;
        let mut bias = vec![0f32; (b as usize) * self.vocab];
        for (r, a) in adapters.iter().enumerate() {
            if let Some(a) = a {
                let i = self
                    .adapters
                    .iter()
                    .position(|n| n == a)
                    .ok_or_else(|| crate::error::InferError::UnknownModel(a.clone()))?;
                bias[r * self.vocab + 3 + i] = 100.0;
            }
        }
        Ok(logits + Tensor::from_slice(&bias).view([b, 1, self.vocab as i64]))
    }

    fn n_layers(&self) -> usize {
        1
    }

    fn max_context(&self) -> usize {
        self.max_context
    }

    fn device(&self) -> Device {
        Device::Cpu
    }

    fn adapters(&self) -> Vec<String> {
        self.adapters.clone()
    }
}
