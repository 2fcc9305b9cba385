//! Grouped-query self-attention through libtorch's `scaled_dot_product_attention` (GQA natively, scale
//! `head_dim^-0.5`), rotary embeddings on q/k, and the KV cache.

use crate::cache::KvCache;
use crate::config::LlamaConfig;
use crate::linear::{AdapterState, Linear};
use crate::rope::apply_rotary;
use tch::Tensor;

/// `self_attn` of one decoder layer.
#[derive(Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub num_heads: i64,
    pub num_kv_heads: i64,
    pub head_dim: i64,
}

impl Attention {
    pub fn load(vs: &tch::nn::Path, cfg: &LlamaConfig, state: &AdapterState) -> Self {
        let (h, d) = (cfg.hidden_size, cfg.head_dim);
        let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let qkv_b = cfg.attention_bias;
        Attention {
            q_proj: Linear::load(&(vs / "q_proj"), h, nh * d, qkv_b, state.clone()),
            k_proj: Linear::load(&(vs / "k_proj"), h, nkv * d, qkv_b, state.clone()),
            v_proj: Linear::load(&(vs / "v_proj"), h, nkv * d, qkv_b, state.clone()),
            o_proj: Linear::load(
                &(vs / "o_proj"),
                nh * d,
                h,
                cfg.o_proj_bias(),
                state.clone(),
            ),
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: d,
        }
    }

    /// `x` [B,T,H]; `mask` from [`crate::AttentionMask::to_sdpa`] (`None` = causal without cache offset, or a
    /// single decoded token); `cache` = (the cache, this layer's index).
    pub fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Tensor {
        let (b, t, _) = x.size3().expect("attention input is [B,T,H]");
        let shape = |y: Tensor, n: i64| y.view([b, t, n, self.head_dim]).transpose(1, 2);
        let q = shape(self.q_proj.forward(x), self.num_heads);
        let k = shape(self.k_proj.forward(x), self.num_kv_heads);
        let v = shape(self.v_proj.forward(x), self.num_kv_heads);
        let q = apply_rotary(&q, cos, sin);
        let k = apply_rotary(&k, cos, sin);
        let past = cache
            .as_ref()
            .map(|(c, i)| c.layers[*i].as_ref().map(|(k, _)| k.size()[2]).unwrap_or(0));
        let (k, v) = match cache {
            Some((c, i)) => c.append(i, k, v),
            None => (k, v),
        };
        let is_causal = mask.is_none() && t > 1 && past.unwrap_or(0) == 0;
        let gqa = self.num_heads != self.num_kv_heads;
        let o = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            mask,
            0.0,
            is_causal,
            (self.head_dim as f64).powf(-0.5),
            gqa,
        );
        let o = o
            .transpose(1, 2)
            .contiguous()
            .view([b, t, self.num_heads * self.head_dim]);
        self.o_proj.forward(&o)
    }
}
