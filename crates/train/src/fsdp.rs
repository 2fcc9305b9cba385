//! FULL_SHARD (and HYBRID_SHARD) forward + backward of one micro-batch, unit by unit (the FSDP schedule with activation
//! checkpointing per decoder layer, written out like `ferrotune_model`'s checkpointed pass):
//!
//! 1. gather the root unit (embeddings, final norm, lm_head) for the whole micro-batch;
//! 2. for each decoder layer: all-gather its flat shards into the model, run it under `no_grad` keeping only
//!    its input, free it again;
//! 3. the loss head (the fused chunked one of `ferrotune_model::fused_ce` when it applies) with autograd on
//!    a detached copy of the last hidden state;
//! 4. from the last layer to the first: gather the layer again, recompute it from its saved input with
//!    autograd, take the vector-Jacobian product for its input and its trainable tensors
//!    (`Tensor::run_backward`, which does not touch `.grad`), free the layer, flatten its gradient and
//!    reduce-scatter it into this rank's accumulator;
//! 5. the embeddings' gradient, then the root's reduce-scatter, and the root is freed.
//!
//! So at any time a rank holds one gathered decoder layer (plus the root), its shards, and the saved layer
//! inputs.

use crate::engine::Engine;
use crate::error::TrainError;
use crate::model_setup::TrainModel;
use crate::parallel::{dist_err, Dist};
use ferrotune_dist::ReduceOp;
use ferrotune_model::AttentionMask;
use tch::{Kind, Tensor};

const ROOT: &str = "root";

/// One micro-batch through the sharded model: returns its loss `scale · Σ CE(labels) / denom` and adds
/// this rank's chunk of the reduced gradient to the engine's accumulators.
pub fn forward_backward(
    engine: &mut Engine,
    dist: &Dist,
    tm: &TrainModel,
    (ids, pos_ids, mask): (&Tensor, &Tensor, &AttentionMask),
    labels: &Tensor,
    (denom, scale): (f64, f64),
) -> Result<f64, TrainError> {
    let model = &tm.model;
    let n_layers = model.model.layers.len();
    engine.gather_unit(dist, ROOT)?;
    let t = ids.size()[1];
    let h0 = model.model.embed_tokens.forward(ids);
    let (cos, sin) = model.model.rotary.cos_sin(pos_ids, h0.kind());
    let m = mask.to_sdpa(t, 0, h0.device());
    let seeds = ferrotune_model::checkpointing::LayerSeeds::draw(model.adapter_state().training());
    let seed_layer = |i: usize| seeds.seed_layer(i);

    // Forward, one gathered layer at a time, keeping layer inputs only.
    let mut inputs = vec![h0.detach()];
    for (i, layer) in model.model.layers.iter().enumerate() {
        let unit = format!("layers.{i}");
        engine.gather_unit(dist, &unit)?;
        seed_layer(i);
        let next = tch::no_grad(|| layer.forward(&inputs[i], &cos, &sin, m.as_ref(), None));
        inputs.push(next);
        engine.free_unit(&unit);
    }

    // Loss head.
    let root = engine.trainable_layout(ROOT);
    let root_params: Vec<Tensor> = root.map_or_else(Vec::new, |r| {
        engine.layouts[r]
            .params
            .iter()
            .map(|p| p.tensor.shallow_clone())
            .collect()
    });
    let last = inputs
        .pop()
        .expect("at least the embeddings")
        .detach()
        .set_requires_grad(true);
    let h = model.model.norm.forward(&last);
    // The fused chunked head when the model allows it (as the single-process recipe), else full logits.
    let (loss_value, target) = match model.fused_ce_head(&h, labels, denom, scale) {
        Some((loss, surrogate)) => (loss.double_value(&[]), surrogate),
        None => {
            let (sum, _) = ferrotune_model::shifted_ce_sum(&model.logits(&h), labels);
            let loss = (sum / denom) * scale;
            (loss.double_value(&[]), loss)
        }
    };
    let mut wrt = vec![last.shallow_clone()];
    wrt.extend(root_params.iter().map(Tensor::shallow_clone));
    let mut g = Tensor::run_backward(&[&target], &wrt, false, false);
    drop((h, target));
    let mut grad = g.remove(0);
    let mut root_grads = g;

    // Backward: recompute each layer from its input with its full parameters gathered again.
    for i in (0..n_layers).rev() {
        let unit = format!("layers.{i}");
        engine.gather_unit(dist, &unit)?;
        let layout = engine.trainable_layout(&unit);
        let x = inputs
            .pop()
            .expect("one input per layer")
            .set_requires_grad(true);
        seed_layer(i);
        let out = model.model.layers[i].forward(&x, &cos, &sin, m.as_ref(), None);
        let mut wrt = vec![x.shallow_clone()];
        if let Some(li) = layout {
            wrt.extend(
                engine.layouts[li]
                    .params
                    .iter()
                    .map(|p| p.tensor.shallow_clone()),
            );
        }
        let mut gs = Tensor::run_backward(&[(out * &grad).sum(Kind::Float)], &wrt, false, false);
        grad = gs.remove(0);
        engine.free_unit(&unit);
        if let Some(li) = layout {
            reduce_into(engine, dist, li, &gs)?;
        }
    }
    seeds.finish();

    // Embeddings (when trainable), then the root's gradient.
    if let Some(r) = root {
        if h0.requires_grad() {
            let ge = Tensor::run_backward(
                &[(&h0 * &grad).sum(Kind::Float)],
                &root_params,
                false,
                false,
            );
            for (acc, e) in root_grads.iter_mut().zip(ge) {
                if e.defined() {
                    *acc = if acc.defined() { &*acc + e } else { e };
                }
            }
        }
        reduce_into(engine, dist, r, &root_grads)?;
    }
    engine.free_unit(ROOT);
    Ok(loss_value)
}

/// Flattens a unit's per-tensor gradients, reduce-scatters the flat over the shard group (HYBRID_SHARD:
/// then all-reduces the chunk across nodes), and accumulates this rank's chunk.
fn reduce_into(
    engine: &mut Engine,
    dist: &Dist,
    layout: usize,
    grads: &[Tensor],
) -> Result<(), TrainError> {
    let l = &engine.layouts[layout];
    let parts: Vec<Tensor> = l
        .params
        .iter()
        .zip(grads)
        .map(|(p, g)| {
            if g.defined() {
                g.shallow_clone()
            } else {
                Tensor::zeros([p.numel], (l.kind, l.device))
            }
        })
        .collect();
    let flat = engine.grad_for_reduce(l.flatten(&parts));
    let mut chunk = dist
        .shard_pg()
        .reduce_scatter(&flat, ReduceOp::Sum)
        .map_err(dist_err)?;
    if let Some(replicas) = dist.replicas() {
        // HYBRID_SHARD: the same chunk on the other nodes saw their ranks' micro-batches.
        replicas
            .all_reduce(&mut chunk, ReduceOp::Sum)
            .map_err(dist_err)?;
    }
    engine.accumulate_shard_grad(layout, chunk);
    Ok(())
}
