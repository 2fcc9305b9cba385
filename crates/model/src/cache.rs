//! The key/value cache of incremental decoding: per layer, the keys and values seen so far.
//!
//! The cached tensors are views of buffers with room to grow along the sequence axis: appending writes the
//! new positions in place after the cached ones (no copy of the whole cache per decoded token); only when
//! the room is used up is a larger buffer allocated and the cache copied once. The spare room is read from
//! the view's strides, so a cache whose tensors were replaced (rows selected, padded, concatenated: fresh
//! contiguous tensors without room) simply gets a new buffer on its next append.

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
            None => (grow(None, &k), grow(None, &v)),
            Some((pk, pv)) => (grow(Some(pk), &k), grow(Some(pv), &v)),
        };
        self.layers[i] = Some((k.shallow_clone(), v.shallow_clone()));
        (k, v)
    }
}

/// Extra positions a new buffer gets beyond what it must hold: as many as it holds (amortised O(1) copies
/// per token), at least 64, at most 512.
fn spare(len: i64) -> i64 {
    len.clamp(64, 512)
}

/// `past` [B,H,L,D] (a view of a buffer, or any tensor) followed by `new` [B,H,T,D] along dim 2, written in
/// place into `past`'s buffer when it has room after position L, else into a new buffer with spare room.
fn grow(past: Option<Tensor>, new: &Tensor) -> Tensor {
    let t = new.size()[2];
    if let Some(p) = &past {
        if let Some(full) = extend_in_place(p, t) {
            full.narrow(2, full.size()[2] - t, t).copy_(new);
            return full;
        }
    }
    let l = past.as_ref().map_or(0, |p| p.size()[2]);
    let mut shape = new.size();
    shape[2] = l + t + spare(l + t);
    let buf = Tensor::empty(shape.as_slice(), (new.kind(), new.device()));
    if let Some(p) = &past {
        buf.narrow(2, 0, l).copy_(p);
    }
    buf.narrow(2, l, t).copy_(new);
    buf.narrow(2, 0, l + t)
}

/// `past` [B,H,L,D] lengthened to L+t positions over the same memory, when `past` is a view along dim 2 of a
/// [B,H,C,D] buffer (strides [H·C·D, C·D, D, 1], starting at position p0 of each row) with p0+L+t ≤ C.
fn extend_in_place(past: &Tensor, t: i64) -> Option<Tensor> {
    let size = past.size();
    let stride = past.stride();
    let (h, l, d) = (size[1], size[2], size[3]);
    if d == 0
        || stride[3] != 1
        || stride[2] != d
        || stride[1] % d != 0
        || stride[0] != h * stride[1]
    {
        return None;
    }
    let cap = stride[1] / d;
    // The view's element offset in its storage: its data pointer minus that of the storage's start.
    let base = past.as_strided(size.as_slice(), stride.as_slice(), 0);
    let bytes = past.data_ptr() as usize - base.data_ptr() as usize;
    let offset = (bytes / past.kind().elt_size_in_bytes()) as i64;
    let p0 = offset / d;
    if offset % d != 0 || p0 + l + t > cap {
        return None;
    }
    let mut full = size.clone();
    full[2] = l + t;
    Some(past.as_strided(full.as_slice(), stride.as_slice(), offset))
}
