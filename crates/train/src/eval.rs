//! Evaluation on the validation split: token-weighted mean cross-entropy, perplexity and next-token
//! accuracy over the labelled positions (the same positions the training loss counts).

use crate::batches::{epoch_batches, Sample};
use ferrotune_model::{shifted_ce_sum, LlamaForCausalLM};
use tch::{Device, Kind};

/// Validation metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalMetrics {
    pub loss: f64,
    pub perplexity: f64,
    pub accuracy: f64,
    pub tokens: u64,
}

/// Evaluates `model` on `samples` in batches of `batch_size` (dropout off; restored to training after).
pub fn evaluate(
    model: &LlamaForCausalLM,
    samples: &[Sample],
    batch_size: usize,
    pad_id: i64,
    device: Device,
) -> Option<EvalMetrics> {
    if samples.is_empty() {
        return None;
    }
    model.set_training(false);
    let (mut loss_sum, mut correct, mut n) = (0.0f64, 0i64, 0i64);
    tch::no_grad(|| {
        for b in epoch_batches(samples, batch_size, 0, 0, false, pad_id) {
            let (ids, pos, mask, labels) = b.to_tensors(device);
            let logits = model.forward(&ids, &pos, &mask, None);
            let (sum, count) = shifted_ce_sum(&logits, &labels);
            loss_sum += sum.double_value(&[]);
            n += count;
            let t = logits.size()[1];
            let pred = logits.narrow(1, 0, t - 1).argmax(-1, false);
            let gold = labels.narrow(1, 1, t - 1);
            let hit = pred.eq_tensor(&gold).logical_and(&gold.ne(-100));
            correct += hit.sum(Kind::Int64).int64_value(&[]);
        }
    });
    model.set_training(true);
    let loss = loss_sum / n.max(1) as f64;
    Some(EvalMetrics {
        loss,
        perplexity: loss.exp(),
        accuracy: correct as f64 / n.max(1) as f64,
        tokens: n as u64,
    })
}
