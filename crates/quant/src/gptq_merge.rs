//! Back to dense weights, for merging LoRA into a quantized base (any format: GPTQ/RTN int4, NF4/FP4,
//! int8): every quantized projection is replaced by its dequantized weight, after which
//! `LlamaForCausalLM::merge_lora` folds the adapter in and the model saves as a plain HF checkpoint. The
//! result is `dequant(W) + s·BA`, which differs slightly from a merge into the original 16-bit weights: the
//! quantization rounding stays in the merged weights (the warning [`MERGE_ROUNDING_WARNING`] says so).

use ferrotune_model::{BaseWeight, LlamaForCausalLM};
use tch::Kind;

/// What merging into a quantized base must tell the user.
pub const MERGE_ROUNDING_WARNING: &str = "the base is quantized: the merged weights are dequant(W) + LoRA delta, so \
they keep the quantization rounding and differ slightly from both the original 16-bit weights + delta and the \
quantized model + adapter as trained";

/// Replaces every non-dense (quantized) projection weight of `model` by its dense dequantized weight in
/// `kind`. Returns the number of projections replaced.
pub fn dequantize_model(model: &mut LlamaForCausalLM, kind: Kind) -> usize {
    let _g = tch::no_grad_guard();
    let mut n = 0;
    let mut swap = |w: &mut BaseWeight| {
        if let BaseWeight::Kernel(k) = w {
            *w = BaseWeight::Dense(k.dense_weight(kind));
            n += 1;
        }
    };
    for layer in model.model.layers.iter_mut() {
        for (_, lin) in layer.projections_mut() {
            swap(&mut lin.weight);
        }
    }
    if let Some(l) = &mut model.lm_head {
        swap(&mut l.weight);
    }
    n
}
