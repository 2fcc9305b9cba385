//! Forward parity with transformers on tiny random checkpoints it generates (MHA, GQA, llama3 / linear /
//! dynamic rope scaling, tied embeddings, biases, head_dim ≠ hidden/heads, Qwen2; classic and v5 config
//! forms; .bin weights): fp32 within 1e-5, bf16 within twice transformers' own bf16 error, KV-cache decoding
//! equal to the full forward.

use crate::common::{max_abs_diff, oracle_dir, read_st};
use ferrotune_core::DType;
use ferrotune_model::{load_pretrained, AttentionMask, KvCache};
use tch::{Device, Kind, Tensor};

const VARIANTS: [&str; 9] = [
    "mha", "gqa", "llama3", "linear", "dynamic", "tied", "bias", "headdim", "qwen2",
];

#[test]
fn fp32_logits_match_transformers_on_every_variant() {
    for v in VARIANTS {
        let dir = oracle_dir().join(v);
        let r = read_st(&dir.join("ref.safetensors"));
        let (model, _vs, _cfg) = load_pretrained(&dir, DType::F32, Device::Cpu).unwrap();
        let _g = tch::no_grad_guard();
        let mask = &r["attention_mask"];
        let logits = model.forward(
            &r["input_ids"],
            &r["position_ids"],
            &AttentionMask::Padding(mask.shallow_clone()),
            None,
        );
        let d = max_abs_diff(&logits, &r["logits_f32"], Some(mask));
        assert!(d < 1e-5, "{v}: padded batch max-abs {d:e}");
        let full = &r["ids_full"];
        let (b, t) = full.size2().unwrap();
        let pos = Tensor::arange(t, (Kind::Int64, Device::Cpu))
            .unsqueeze(0)
            .expand([b, t], true);
        let logits = model.forward(full, &pos, &AttentionMask::Causal, None);
        let d = max_abs_diff(&logits, &r["logits_full"], None);
        assert!(d < 1e-5, "{v}: causal batch max-abs {d:e}");
    }
}

#[test]
fn bf16_logits_within_transformers_own_bf16_error() {
    for v in ["mha", "gqa", "llama3", "bias"] {
        let dir = oracle_dir().join(v);
        let r = read_st(&dir.join("ref.safetensors"));
        let (model, _vs, _cfg) = load_pretrained(&dir, DType::BF16, Device::Cpu).unwrap();
        let _g = tch::no_grad_guard();
        let mask = &r["attention_mask"];
        let logits = model.forward(
            &r["input_ids"],
            &r["position_ids"],
            &AttentionMask::Padding(mask.shallow_clone()),
            None,
        );
        assert_eq!(logits.kind(), Kind::BFloat16);
        // transformers' bf16 run deviates from its fp32 run by `own`: the rounding noise of bf16 on this model.
        let own = max_abs_diff(&r["logits_bf16"], &r["logits_f32"], Some(mask));
        let vs_bf16 = max_abs_diff(&logits, &r["logits_bf16"], Some(mask));
        let vs_f32 = max_abs_diff(&logits, &r["logits_f32"], Some(mask));
        println!("{v}: bf16 max-abs vs transformers bf16 {vs_bf16:e}, vs fp32 {vs_f32:e}; transformers bf16 vs fp32 {own:e}");
        assert!(own > 0.0);
        assert!(
            vs_bf16 <= 2.0 * own && vs_f32 <= 2.0 * own,
            "{v}: vs bf16 {vs_bf16:e}, vs fp32 {vs_f32:e}, transformers' own bf16 error {own:e}"
        );
    }
}

#[test]
fn kv_cache_decoding_equals_full_forward() {
    // (not "dynamic": its frequencies depend on the longest position of each call, in transformers too)
    for v in ["gqa", "llama3", "headdim"] {
        let dir = oracle_dir().join(v);
        let r = read_st(&dir.join("ref.safetensors"));
        let (model, _vs, cfg) = load_pretrained(&dir, DType::F32, Device::Cpu).unwrap();
        let _g = tch::no_grad_guard();
        let (ids, mask, pos) = (&r["input_ids"], &r["attention_mask"], &r["position_ids"]);
        let t = ids.size()[1];
        let mut cache = KvCache::new(cfg.num_hidden_layers as usize);
        let p = 7;
        let mut outs = vec![model.forward(
            &ids.narrow(1, 0, p),
            &pos.narrow(1, 0, p),
            &AttentionMask::Padding(mask.narrow(1, 0, p)),
            Some(&mut cache),
        )];
        for i in p..t {
            outs.push(model.forward(
                &ids.narrow(1, i, 1),
                &pos.narrow(1, i, 1),
                &AttentionMask::Padding(mask.narrow(1, 0, i + 1)),
                Some(&mut cache),
            ));
        }
        assert_eq!(cache.seq_len(), t);
        let logits = Tensor::cat(&outs, 1);
        let d = max_abs_diff(&logits, &r["logits_f32"], Some(mask));
        assert!(d < 1e-5, "{v}: cached decoding max-abs {d:e}");
        // dropping a row keeps the others' cache
        let rows = Tensor::from_slice(&[0i64, 2]);
        assert_eq!(
            cache.select_rows(&rows).layers[0]
                .as_ref()
                .unwrap()
                .0
                .size()[0],
            2
        );
    }
}

#[test]
fn pytorch_bin_weights_load_like_safetensors() {
    let (a, _va, _) = load_pretrained(&oracle_dir().join("mha"), DType::F32, Device::Cpu).unwrap();
    let (b, _vb, _) = load_pretrained(&oracle_dir().join("bin"), DType::F32, Device::Cpu).unwrap();
    let pa = a.named_parameters();
    let pb = b.named_parameters();
    assert_eq!(pa.len(), pb.len());
    for ((ka, ta), (kb, tb)) in pa.iter().zip(&pb) {
        assert_eq!(ka, kb);
        assert!(ta.equal(tb), "{ka} differs between .bin and .safetensors");
    }
}
