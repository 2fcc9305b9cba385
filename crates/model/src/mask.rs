//! Attention masks: causal, padding, packed-sample segments, or fully explicit, turned into the boolean
//! mask `scaled_dot_product_attention` takes (`true` = may attend).

use tch::{Device, Kind, Tensor};

/// Which keys each query may attend to, on top of causality.
#[derive(Debug)]
pub enum AttentionMask {
    /// Plain causal attention (all tokens real).
    Causal,
    /// Right or left padding: [B, T_past+T], 1 = real token, 0 = pad. Causal on top.
    Padding(Tensor),
    /// Packed samples: [B,T] segment ids; attention only within a segment, causal. No KV cache.
    Segments(Tensor),
    /// Fully explicit boolean [B,1,T,T_past+T] (or broadcastable), true = may attend.
    Explicit(Tensor),
}

fn causal(t: i64, past: i64, device: Device) -> Tensor {
    let q = Tensor::arange_start(past, past + t, (Kind::Int64, device)).unsqueeze(1);
    let k = Tensor::arange(past + t, (Kind::Int64, device)).unsqueeze(0);
    k.le_tensor(&q) // [T, S]
}

impl AttentionMask {
    /// The SDPA mask for `t` new queries after `past` cached positions: `None` means "use is_causal"
    /// (or no mask at all when a single query is decoded).
    pub fn to_sdpa(&self, t: i64, past: i64, device: Device) -> Option<Tensor> {
        match self {
            AttentionMask::Causal if past == 0 || t == 1 => None,
            AttentionMask::Causal => Some(causal(t, past, device).view([1, 1, t, past + t])),
            AttentionMask::Padding(pad) => {
                let s = past + t;
                let sz = pad.size();
                assert!(
                    sz.len() == 2 && sz[1] == s,
                    "padding mask is {sz:?}, expected [B, {s}] (past {past} + new {t})"
                );
                let keys = pad.to_device(device).ne(0).view([sz[0], 1, 1, s]);
                let c = causal(t, past, device).view([1, 1, t, s]);
                // A query with no real key (a pad query before the first real token) attends to itself, so that
                // softmax never sees an all-masked row; rows of real tokens are unchanged.
                let diag = Tensor::arange(s, (Kind::Int64, device))
                    .unsqueeze(0)
                    .eq_tensor(&Tensor::arange_start(past, s, (Kind::Int64, device)).unsqueeze(1))
                    .view([1, 1, t, s]);
                Some(keys.logical_and(&c).logical_or(&diag))
            }
            AttentionMask::Segments(seg) => {
                assert_eq!(
                    past, 0,
                    "segment masks are for packed training batches, without a KV cache"
                );
                let seg = seg.to_device(device);
                let same = seg.unsqueeze(2).eq_tensor(&seg.unsqueeze(1)); // [B,T,T]
                Some(
                    same.logical_and(&causal(t, 0, device).unsqueeze(0))
                        .unsqueeze(1),
                )
            }
            AttentionMask::Explicit(m) => Some(m.to_device(device).to_kind(Kind::Bool)),
        }
    }

    /// A shallow copy (the tensors are shared).
    pub fn shallow_clone(&self) -> Self {
        match self {
            AttentionMask::Causal => AttentionMask::Causal,
            AttentionMask::Padding(t) => AttentionMask::Padding(t.shallow_clone()),
            AttentionMask::Segments(t) => AttentionMask::Segments(t.shallow_clone()),
            AttentionMask::Explicit(t) => AttentionMask::Explicit(t.shallow_clone()),
        }
    }
}

/// Position ids that restart at 0 in each packed segment ([B,T] segment ids → [B,T] positions).
pub fn segment_position_ids(seg: &Tensor) -> Tensor {
    let (b, t) = seg.size2().expect("segment ids are [B,T]");
    let flat: Vec<i64> = Vec::try_from(
        seg.to_device(Device::Cpu)
            .to_kind(Kind::Int64)
            .reshape([-1]),
    )
    .unwrap_or_default();
    let mut out = Vec::with_capacity(flat.len());
    for row in flat.chunks(t as usize) {
        let mut p = 0;
        for (i, s) in row.iter().enumerate() {
            p = if i > 0 && *s == row[i - 1] { p + 1 } else { 0 };
            out.push(p);
        }
    }
    Tensor::from_slice(&out)
        .view([b, t])
        .to_device(seg.device())
}

/// Position ids for a padding mask [B,S] (1 = real): cumulative count of real tokens minus one, pads at 1
/// (transformers' generation convention); the last `t` columns are returned.
pub fn padding_position_ids(pad: &Tensor, t: i64) -> Tensor {
    let pad = pad.to_kind(Kind::Int64);
    let pos = pad.cumsum(1, Kind::Int64) - 1;
    let pos = pos.masked_fill(&pad.eq(0), 1);
    let s = pos.size()[1];
    pos.narrow(1, s - t, t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(t: &Tensor) -> Vec<Vec<i64>> {
        let (r, c) = t.size2().unwrap();
        let v: Vec<i64> = Vec::try_from(t.to_kind(Kind::Int64).reshape([-1])).unwrap();
        (0..r as usize)
            .map(|i| v[i * c as usize..(i + 1) * c as usize].to_vec())
            .collect()
    }

    #[test]
    fn padding_mask_is_causal_over_real_keys_and_never_empty() {
        let pad = Tensor::from_slice(&[0i64, 0, 1, 1]).view([1, 4]);
        let m = AttentionMask::Padding(pad.shallow_clone())
            .to_sdpa(4, 0, Device::Cpu)
            .unwrap();
        assert_eq!(
            rows(&m.view([4, 4])),
            vec![
                vec![1, 0, 0, 0],
                vec![0, 1, 0, 0],
                vec![0, 0, 1, 0],
                vec![0, 0, 1, 1]
            ]
        );
        // one decoded token after 4 cached positions sees every real key and itself
        let pad5 = Tensor::from_slice(&[0i64, 0, 1, 1, 1]).view([1, 5]);
        let m = AttentionMask::Padding(pad5.shallow_clone())
            .to_sdpa(1, 4, Device::Cpu)
            .unwrap();
        assert_eq!(rows(&m.view([1, 5])), vec![vec![0, 0, 1, 1, 1]]);
        assert_eq!(
            rows(&padding_position_ids(&pad5, 5)),
            vec![vec![1, 1, 0, 1, 2]]
        );
        assert!(AttentionMask::Causal.to_sdpa(4, 0, Device::Cpu).is_none());
    }

    #[test]
    fn segments_block_attention_across_samples_and_restart_positions() {
        let seg = Tensor::from_slice(&[0i64, 0, 1, 1, 1]).view([1, 5]);
        assert_eq!(rows(&segment_position_ids(&seg)), vec![vec![0, 1, 0, 1, 2]]);
        let m = AttentionMask::Segments(seg)
            .to_sdpa(5, 0, Device::Cpu)
            .unwrap();
        assert_eq!(
            rows(&m.view([5, 5])),
            vec![
                vec![1, 0, 0, 0, 0],
                vec![1, 1, 0, 0, 0],
                vec![0, 0, 1, 0, 0],
                vec![0, 0, 1, 1, 0],
                vec![0, 0, 1, 1, 1]
            ]
        );
    }
}
