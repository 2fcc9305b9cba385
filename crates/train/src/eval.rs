//! Evaluation on the validation split: token-weighted mean cross-entropy, perplexity and next-token
//! accuracy over the labelled positions (the same positions the training loss counts).

use crate::batches::{HostBatch, Sample};
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
    let rows: Vec<&Sample> = samples.iter().collect();
    Some(EvalMetrics::from_sums(eval_sums(
        model, &rows, batch_size, pad_id, device,
    )))
}

/// The sums behind [`EvalMetrics`] over `samples` — (Σ CE, correct predictions, labelled tokens) — so that
/// ranks holding disjoint parts of the split can add theirs up.
pub fn eval_sums(
    model: &LlamaForCausalLM,
    samples: &[&Sample],
    batch_size: usize,
    pad_id: i64,
    device: Device,
) -> [f64; 3] {
    model.set_training(false);
    let (mut loss_sum, mut correct, mut n) = (0.0f64, 0i64, 0i64);
    tch::no_grad(|| {
        for rows in samples.chunks(batch_size.max(1)) {
            let b = HostBatch::collate(rows, pad_id);
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
    [loss_sum, correct as f64, n as f64]
}

impl EvalMetrics {
    /// Token-weighted metrics from [`eval_sums`] (added over ranks).
    pub fn from_sums([loss_sum, correct, n]: [f64; 3]) -> Self {
        let loss = loss_sum / n.max(1.0);
        EvalMetrics {
            loss,
            perplexity: loss.exp(),
            accuracy: correct / n.max(1.0),
            tokens: n as u64,
        }
    }
}
