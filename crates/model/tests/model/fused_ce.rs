//! The fused chunked loss head (`forward_backward_ce`) against the plain one (full logits, `shifted_ce_sum`,
//! autograd): same loss and gradients for LoRA and full fine-tuning (lm_head trained), tied and untied
//! embeddings, ignored labels, a window denominator and a loss scale, with and without activation
//! checkpointing. The plain path itself is checked against transformers / PEFT elsewhere.

use crate::common::{max_abs_diff, oracle_dir, read_st};
use ferrotune_core::DType;
use ferrotune_model::{
    load_pretrained, shifted_ce_sum, AttentionMask, LlamaForCausalLM, LoraConfig,
};
use tch::{Device, Kind, Tensor};

fn zero_grads(model: &LlamaForCausalLM) {
    for (_, t) in model.trainable_parameters() {
        let mut g = t.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
}

fn grads(model: &LlamaForCausalLM) -> Vec<(String, Tensor)> {
    model
        .trainable_parameters()
        .into_iter()
        .map(|(k, t)| (k, t.grad().copy()))
        .collect()
}

#[test]
fn fused_loss_head_equals_the_plain_one() {
    for variant in ["mha", "tied"] {
        let dir = oracle_dir().join(variant);
        let r = read_st(&dir.join("ref.safetensors"));
        let (ids, pos) = (&r["input_ids"], &r["position_ids"]);
        let mask = AttentionMask::Padding(r["attention_mask"].shallow_clone());
        // Ignore the padding and a few more positions, as SFT prompts are.
        let labels = ids.masked_fill(&r["attention_mask"].eq(0), -100);
        let _ = labels.narrow(1, 0, 3).fill_(-100);
        let (denom, scale) = (37.0, 256.0);
        for full in [false, true] {
            let (mut model, _vs, _) = load_pretrained(&dir, DType::F32, Device::Cpu).unwrap();
            if full {
                model.set_base_trainable(|_| true);
            } else {
                model
                    .add_lora("t", &LoraConfig::new(4, 8.0, &["all"]), 3, Kind::Float)
                    .unwrap();
                let _g = tch::no_grad_guard();
                for (_, mut t) in model.lora_parameters("t") {
                    let v = &t + t.randn_like() * 0.1;
                    t.copy_(&v);
                }
            }
            model.set_training(true);
            for ckpt in [false, true] {
                model.gradient_checkpointing = ckpt;
                zero_grads(&model);
                let plain = model
                    .forward_backward(ids, pos, &mask, &mut |logits| {
                        (shifted_ce_sum(logits, &labels).0 / denom) * scale
                    })
                    .double_value(&[]);
                let g0 = grads(&model);
                zero_grads(&model);
                let fused = model
                    .forward_backward_ce(ids, pos, &mask, &labels, denom, scale)
                    .double_value(&[]);
                let g1 = grads(&model);
                let what = format!("{variant} full={full} ckpt={ckpt}");
                assert!(
                    (plain - fused).abs() <= 1e-5 * plain.abs(),
                    "{what}: loss {plain} vs {fused}"
                );
                assert!(!g0.is_empty());
                for ((k, a), (_, b)) in g0.iter().zip(&g1) {
                    let m = a.abs().max().double_value(&[]);
                    assert!(m > 0.0, "{what} {k}: no gradient");
                    let d = max_abs_diff(a, b, None);
                    assert!(d <= 1e-5 * m, "{what} {k}: grad diff {d:e} (max {m:e})");
                }
            }
        }
    }
}
