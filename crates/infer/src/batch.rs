//! The tensor side of a decoding batch: left-padded rows sharing one KV cache, each with its own RoPE
//! positions, that can grow (new prompts are prefilled and merged in) and shrink (finished or cancelled rows
//! are dropped) between decode steps — the mechanism behind continuous batching.
//!
//! Layout: every row's cache holds `L` positions, the row's real tokens right-aligned and zero keys/values
//! in front; `mask [B, L]` marks the real ones. A decode step feeds one token per row at the row's own
//! position and attends to the row's real cached positions plus itself. When the longest rows leave, the
//! columns that became padding for every row are cut off again.

use crate::error::Result;
use crate::model::{CausalLm, KvCache};
use tch::{Device, Kind, Tensor};

/// Last-position logits of some rows, copied to the CPU as f32.
#[derive(Debug, Clone)]
pub struct RowLogits {
    data: Vec<f32>,
    vocab: usize,
}

impl RowLogits {
    fn from_tensor(last: &Tensor) -> Result<Self> {
        let vocab = last.size()[1] as usize;
        let cpu = last
            .to_kind(Kind::Float)
            .to_device(Device::Cpu)
            .contiguous()
            .view([-1]);
        Ok(RowLogits {
            data: Vec::<f32>::try_from(&cpu)?,
            vocab,
        })
    }

    /// Logits of row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.vocab..(i + 1) * self.vocab]
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.data.len() / self.vocab.max(1)
    }
}

/// Rows being decoded together.
#[derive(Debug)]
pub struct DecodeBatch {
    cache: KvCache,
    /// `[B, L]` bool, true where the cache holds a real token.
    mask: Option<Tensor>,
    /// Next RoPE position of each row (= its number of real tokens).
    positions: Vec<i64>,
    /// LoRA adapter of each row.
    adapters: Vec<Option<String>>,
    pad_id: i64,
    n_layers: usize,
}

impl DecodeBatch {
    /// An empty batch for a model with `n_layers` layers; `pad_id` fills the left padding of prompts.
    pub fn new(n_layers: usize, pad_id: u32) -> Self {
        DecodeBatch {
            cache: KvCache::new(n_layers),
            mask: None,
            positions: Vec::new(),
            adapters: Vec::new(),
            pad_id: pad_id as i64,
            n_layers,
        }
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// Cached length `L` (padding included).
    pub fn cache_len(&self) -> i64 {
        self.cache.len()
    }

    /// Prefills `prompts` together (left-padded to the longest) and appends them as new rows at the end,
    /// row `i` using LoRA adapter `adapters[i]` (missing entries: base model). Returns their last-position
    /// logits, in order.
    pub fn prefill(
        &mut self,
        model: &dyn CausalLm,
        prompts: &[Vec<u32>],
        adapters: &[Option<String>],
    ) -> Result<RowLogits> {
        let mut adapters = adapters.to_vec();
        adapters.resize(prompts.len(), None);
        let dev = model.device();
        let n = prompts.len() as i64;
        let p = prompts.iter().map(Vec::len).max().unwrap_or(0) as i64;
        let mut ids = vec![self.pad_id; (n * p) as usize];
        let mut pos = vec![0i64; (n * p) as usize];
        let mut real = vec![false; (n * p) as usize];
        for (r, prompt) in prompts.iter().enumerate() {
            let off = p as usize - prompt.len();
            for (j, &t) in prompt.iter().enumerate() {
                let k = r * p as usize + off + j;
                ids[k] = t as i64;
                pos[k] = j as i64;
                real[k] = true;
            }
        }
        let ids = Tensor::from_slice(&ids).view([n, p]).to_device(dev);
        let pos = Tensor::from_slice(&pos).view([n, p]).to_device(dev);
        let real = Tensor::from_slice(&real).view([n, p]).to_device(dev);
        let causal = Tensor::ones([p, p], (Kind::Bool, dev)).tril(0);
        let eye = Tensor::eye(p, (Kind::Bool, dev));
        // A padding query may see only itself: no row of the mask is empty, so no NaN enters the cache.
        let allowed = causal
            .unsqueeze(0)
            .logical_and(&real.unsqueeze(1))
            .logical_or(&eye.unsqueeze(0));
        let mut cache = KvCache::new(self.n_layers);
        let logits = model.forward(&ids, &pos, &allowed.unsqueeze(1), &mut cache, &adapters)?;
        let out = RowLogits::from_tensor(&logits.select(1, -1))?;
        self.merge(cache, real);
        self.positions
            .extend(prompts.iter().map(|q| q.len() as i64));
        self.adapters.extend(adapters);
        Ok(out)
    }

    fn merge(&mut self, mut cache: KvCache, mut real: Tensor) {
        let Some(mask) = self.mask.take() else {
            self.cache = cache;
            self.mask = Some(real);
            return;
        };
        let (l, p) = (mask.size()[1], real.size()[1]);
        let mut mask = mask;
        if p > l {
            self.cache.pad_front(p - l);
            mask = pad_mask(&mask, p - l);
        } else if l > p {
            cache.pad_front(l - p);
            real = pad_mask(&real, l - p);
        }
        // Layer counts always match: both caches come from the same model.
        let _ = self.cache.append_rows(cache);
        self.mask = Some(Tensor::cat(&[mask, real], 0));
    }

    /// Feeds one token per row (in row order) and returns the next logits of every row.
    pub fn step(&mut self, model: &dyn CausalLm, tokens: &[u32]) -> Result<RowLogits> {
        let dev = model.device();
        let b = tokens.len() as i64;
        let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        let ids = Tensor::from_slice(&ids).view([b, 1]).to_device(dev);
        let pos = Tensor::from_slice(&self.positions)
            .view([b, 1])
            .to_device(dev);
        let mask = self.mask.take().expect("step on an empty batch");
        let full = Tensor::cat(&[mask, Tensor::ones([b, 1], (Kind::Bool, dev))], 1);
        let l1 = full.size()[1];
        let logits = model.forward(
            &ids,
            &pos,
            &full.view([b, 1, 1, l1]),
            &mut self.cache,
            &self.adapters,
        );
        self.mask = Some(full);
        let logits = logits?;
        self.positions.iter_mut().for_each(|p| *p += 1);
        RowLogits::from_tensor(&logits.select(1, -1))
    }

    /// Keeps the rows where `keep` is true, then cuts cache columns that are padding in every row left.
    pub fn retain(&mut self, keep: &[bool]) {
        if keep.iter().all(|&k| k) {
            return;
        }
        let idx: Vec<i64> = (0..keep.len() as i64)
            .filter(|&i| keep[i as usize])
            .collect();
        self.positions = idx.iter().map(|&i| self.positions[i as usize]).collect();
        self.adapters = idx
            .iter()
            .map(|&i| self.adapters[i as usize].clone())
            .collect();
        if idx.is_empty() {
            self.cache = KvCache::new(self.n_layers);
            self.mask = None;
            return;
        }
        let Some(mask) = self.mask.take() else { return };
        let it = Tensor::from_slice(&idx).to_device(mask.device());
        self.cache.select_rows(&it);
        let mask = mask.index_select(0, &it);
        let longest = self.positions.iter().copied().max().unwrap_or(0);
        let cut = mask.size()[1] - longest;
        if cut > 0 {
            self.cache.drop_front(cut);
            self.mask = Some(mask.narrow(1, cut, longest));
        } else {
            self.mask = Some(mask);
        }
    }
}

fn pad_mask(mask: &Tensor, n: i64) -> Tensor {
    let b = mask.size()[0];
    Tensor::cat(
        &[
            Tensor::zeros([b, n], (Kind::Bool, mask.device())),
            mask.shallow_clone(),
        ],
        1,
    )
}
