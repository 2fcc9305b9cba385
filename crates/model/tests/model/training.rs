//! Training-side behaviour of the model on oracle checkpoints: packed samples with segment masks equal the
//! samples run alone; activation checkpointing gives the gradients of the plain backward (LoRA and full);
//! vocabulary resize appends mean rows and leaves old logits unchanged; freezing selects layers.

use crate::common::{max_abs_diff, oracle_dir, read_st};
use ferrotune_core::DType;
use ferrotune_model::{
    layer_index, load_pretrained, segment_position_ids, shifted_ce_sum, AttentionMask, LoraConfig,
};
use tch::{Device, Kind, Tensor};

#[test]
fn packed_samples_equal_samples_run_alone() {
    let (model, _vs, _) =
        load_pretrained(&oracle_dir().join("gqa"), DType::F32, Device::Cpu).unwrap();
    let _g = tch::no_grad_guard();
    let r = read_st(&oracle_dir().join("gqa/ref.safetensors"));
    let ids = r["ids_full"].get(0).narrow(0, 0, 12);
    let lens = [5i64, 4, 3];
    let seg: Vec<i64> = lens
        .iter()
        .enumerate()
        .flat_map(|(i, l)| std::iter::repeat_n(i as i64, *l as usize))
        .collect();
    let seg = Tensor::from_slice(&seg).unsqueeze(0);
    let pos = segment_position_ids(&seg);
    // labels: the first token of each sample is never predicted from the previous sample
    let labels = ids.unsqueeze(0).copy();
    let mut start = 0;
    for l in lens {
        let _ = labels.narrow(1, start, 1).fill_(-100);
        start += l;
    }
    let packed = model.forward(&ids.unsqueeze(0), &pos, &AttentionMask::Segments(seg), None);
    let mut start = 0;
    for l in lens {
        let alone_ids = ids.narrow(0, start, l).unsqueeze(0);
        let alone_pos = Tensor::arange(l, (Kind::Int64, Device::Cpu)).unsqueeze(0);
        let alone = model.forward(&alone_ids, &alone_pos, &AttentionMask::Causal, None);
        let part = packed.narrow(1, start, l);
        let d = max_abs_diff(&part, &alone, None);
        assert!(d < 1e-5, "sample at {start}: packed vs alone max-abs {d:e}");
        // per-sample loss: the packed sum over this sample's labels equals the sample's own loss
        let (alone_loss, n) = model.loss(&alone, &alone_ids);
        let lab = Tensor::full([1, 12], -100, (Kind::Int64, Device::Cpu));
        lab.narrow(1, start + 1, l - 1)
            .copy_(&labels.narrow(1, start + 1, l - 1));
        let (sum, n2) = shifted_ce_sum(&packed, &lab);
        assert_eq!(n, n2);
        let packed_loss = sum.double_value(&[]) / n2 as f64;
        assert!((packed_loss - alone_loss.double_value(&[])).abs() < 1e-5);
        start += l;
    }
}

fn grads(
    model: &ferrotune_model::LlamaForCausalLM,
    ids: &Tensor,
    pos: &Tensor,
    mask: &AttentionMask,
) -> (f64, Vec<(String, Tensor)>) {
    let params = model.trainable_parameters();
    for (_, t) in &params {
        let mut g = t.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
    let labels = ids.shallow_clone();
    let loss = model.forward_backward(ids, pos, mask, &mut |logits| model.loss(logits, &labels).0);
    (
        loss.double_value(&[]),
        params
            .into_iter()
            .map(|(k, t)| (k, t.grad().copy()))
            .collect(),
    )
}

#[test]
fn activation_checkpointing_gives_the_same_gradients() {
    let dir = oracle_dir().join("bias");
    let r = read_st(&dir.join("ref.safetensors"));
    let (ids, pos) = (&r["input_ids"], &r["position_ids"]);
    let mask = AttentionMask::Padding(r["attention_mask"].shallow_clone());
    for full in [false, true] {
        let (mut model, _vs, _) = load_pretrained(&dir, DType::F32, Device::Cpu).unwrap();
        if full {
            model.set_base_trainable(|_| true);
        } else {
            let mut cfg = LoraConfig::new(4, 8.0, &["all"]);
            cfg.modules_to_save = Some(vec!["embed_tokens".into()]);
            model.add_lora("t", &cfg, 3, Kind::Float).unwrap();
            let _g = tch::no_grad_guard();
            for (_, mut t) in model.lora_parameters("t") {
                let v = &t + t.randn_like() * 0.1;
                t.copy_(&v);
            }
        }
        model.set_training(true);
        let (l0, g0) = grads(&model, ids, pos, &mask);
        model.gradient_checkpointing = true;
        let (l1, g1) = grads(&model, ids, pos, &mask);
        assert!((l0 - l1).abs() < 1e-6, "loss {l0} vs {l1}");
        assert!(!g0.is_empty());
        for ((k, a), (_, b)) in g0.iter().zip(&g1) {
            let scale = a.abs().max().double_value(&[]).max(1e-6);
            let d = max_abs_diff(a, b, None);
            assert!(
                d <= 1e-5 * scale.max(1.0),
                "full={full} {k}: grad diff {d:e} (max {scale:e})"
            );
            assert!(scale > 1e-9, "{k} got no gradient");
        }
    }
}

#[test]
fn resize_appends_mean_rows_and_freeze_selects_layers() {
    let dir = oracle_dir().join("mha");
    let r = read_st(&dir.join("ref.safetensors"));
    let (mut model, _vs, cfg) = load_pretrained(&dir, DType::F32, Device::Cpu).unwrap();
    let _g = tch::no_grad_guard();
    let full = &r["ids_full"];
    let pos = Tensor::arange(full.size()[1], (Kind::Int64, Device::Cpu))
        .unsqueeze(0)
        .expand_as(full);
    let before = model.forward(full, &pos, &AttentionMask::Causal, None);
    let old_mean = model
        .model
        .embed_tokens
        .weight
        .mean_dim(0, false, Kind::Float);
    model.resize_token_embeddings(cfg.vocab_size + 5).unwrap();
    assert_eq!(model.config.vocab_size, cfg.vocab_size + 5);
    let w = &model.model.embed_tokens.weight;
    assert_eq!(w.size(), [cfg.vocab_size + 5, cfg.hidden_size]);
    assert!(max_abs_diff(&w.get(cfg.vocab_size + 4), &old_mean, None) < 1e-7);
    let after = model.forward(full, &pos, &AttentionMask::Causal, None);
    assert_eq!(after.size()[2], cfg.vocab_size + 5);
    assert!(max_abs_diff(&after.narrow(2, 0, cfg.vocab_size), &before, None) < 1e-6);
    drop(_g);
    let n = cfg.num_hidden_layers as usize;
    model.set_base_trainable(|k| layer_index(k).is_some_and(|i| i + 1 >= n));
    let t = model.trainable_parameters();
    assert!(
        !t.is_empty()
            && t.iter()
                .all(|(k, _)| k.starts_with(&format!("model.layers.{}.", n - 1)))
    );
}
