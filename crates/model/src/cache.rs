//! The key/value cache of incremental decoding: per layer, the keys and values seen so far.

use tch::Tensor;

/// The KV cache of generation: per layer, keys and values [B, n_kv_heads, T_cached, head_dim].
#[derive(Debug, Default)]
pub struct KvCache {
    pub layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        KvCache {
            layers: (0..num_layers).map(|_| None).collect(),
        }
    }

    /// The number of cached positions (0 when empty).
    pub fn seq_len(&self) -> i64 {
        self.layers
            .iter()
            .flatten()
            .next()
            .map(|(k, _)| k.size()[2])
            .unwrap_or(0)
    }

    /// The cache restricted to batch rows `rows` (an i64 index tensor), e.g. to drop finished requests.
    pub fn select_rows(&self, rows: &Tensor) -> Self {
        KvCache {
            layers: self
                .layers
                .iter()
                .map(|l| {
                    l.as_ref().map(|(k, v)| {
                        let r = rows.to_device(k.device());
                        (k.index_select(0, &r), v.index_select(0, &r))
                    })
                })
                .collect(),
        }
    }

    /// Keeps only the first `len` cached positions (e.g. to roll back a rejected draft).
    pub fn truncate(&mut self, len: i64) {
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.narrow(2, 0, len.min(k.size()[2]));
            *v = v.narrow(2, 0, len.min(v.size()[2]));
        }
    }

    /// Appends `k`, `v` [B,H,T,D] to layer `i` and returns the full keys and values.
    pub fn append(&mut self, i: usize, k: Tensor, v: Tensor) -> (Tensor, Tensor) {
        let (k, v) = match self.layers[i].take() {
            None => (k, v),
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2), Tensor::cat(&[&pv, &v], 2)),
        };
        self.layers[i] = Some((k.shallow_clone(), v.shallow_clone()));
        (k, v)
    }
}
