//! Forward + backward in one call, optionally with activation (gradient) checkpointing per decoder layer.
//!
//! tch has no checkpoint utility, so it is done by hand: the first pass runs the decoder layers under
//! `no_grad`, keeping only each layer's input; the loss head runs with autograd on a detached copy of the last
//! hidden state; then, from the last layer to the first, each layer is recomputed from its saved input with
//! autograd and back-propagated with the incoming gradient (`backward` of `Σ out·g`, i.e. a vector-Jacobian
//! product), which yields the gradient for the layer below. LoRA dropout draws the same masks in both passes
//! (torch's generator is reseeded per layer from one draw of the step).

use crate::llama::LlamaForCausalLM;
use crate::mask::AttentionMask;
use tch::{Device, Kind, Tensor};

impl LlamaForCausalLM {
    /// Runs the forward, `loss_fn(logits)` (a scalar) and its backward, accumulating into `.grad` of every
    /// tensor that requires grad; returns the detached loss. With `self.gradient_checkpointing`, only layer
    /// inputs are kept between passes.
    pub fn forward_backward(
        &self,
        input_ids: &Tensor,
        position_ids: &Tensor,
        mask: &AttentionMask,
        loss_fn: &mut dyn FnMut(&Tensor) -> Tensor,
    ) -> Tensor {
        self.forward_backward_hidden(input_ids, position_ids, mask, &mut |h| {
            let loss = loss_fn(&self.logits(h));
            loss.backward();
            loss.detach()
        })
    }

    /// [`LlamaForCausalLM::forward_backward`] with the loss head left to `head`: it gets the final hidden
    /// states (after the last norm, inside the autograd graph), must run the backward from them itself
    /// and returns the detached loss.
    pub fn forward_backward_hidden(
        &self,
        input_ids: &Tensor,
        position_ids: &Tensor,
        mask: &AttentionMask,
        head: &mut dyn FnMut(&Tensor) -> Tensor,
    ) -> Tensor {
        if !self.gradient_checkpointing {
            let h = self.forward_hidden(input_ids, position_ids, mask, None);
            return head(&h);
        }
        let t = input_ids.size()[1];
        let h0 = self.model.embed_tokens.forward(input_ids);
        let (cos, sin) = self.model.rotary.cos_sin(position_ids, h0.kind());
        let m = mask.to_sdpa(t, 0, h0.device());
        let seeds = LayerSeeds::draw(self.state.training());
        let seed_layer = |i: usize| seeds.seed_layer(i);
        let mut inputs = vec![h0.detach()];
        {
            let _g = tch::no_grad_guard();
            for (i, layer) in self.model.layers.iter().enumerate() {
                seed_layer(i);
                let next = layer.forward(&inputs[i], &cos, &sin, m.as_ref(), None);
                inputs.push(next);
            }
        }
        let last = inputs
            .pop()
            .expect("at least the embeddings")
            .detach()
            .set_requires_grad(true);
        let loss = head(&self.model.norm.forward(&last));
        let mut grad = last.grad();
        for (i, layer) in self.model.layers.iter().enumerate().rev() {
            let x = inputs
                .pop()
                .expect("one input per layer")
                .set_requires_grad(true);
            seed_layer(i);
            let out = layer.forward(&x, &cos, &sin, m.as_ref(), None);
            (out * &grad).sum(Kind::Float).backward();
            grad = x.grad();
        }
        seeds.finish();
        if h0.requires_grad() {
            (h0 * &grad).sum(Kind::Float).backward();
        }
        loss
    }
}

/// Per-layer reseeding for a recomputed pass: LoRA dropout draws the same masks in a layer's forward and
/// its recomputation because torch's generator is reseeded per layer from one draw of the step (training
/// only; evaluation draws nothing).
#[derive(Debug, Clone, Copy)]
pub struct LayerSeeds {
    step_seed: Option<i64>,
}

impl LayerSeeds {
    /// Draws the step's seed from torch's generator when `training`.
    pub fn draw(training: bool) -> Self {
        let step_seed = training.then(|| {
            i64::try_from(Tensor::randint(i64::MAX / 2, [1], (Kind::Int64, Device::Cpu)).get(0))
                .unwrap_or(0)
        });
        LayerSeeds { step_seed }
    }

    /// Seeds torch's generator for layer `i` (before its forward and before its recomputation).
    pub fn seed_layer(&self, i: usize) {
        if let Some(s) = self.step_seed {
            tch::manual_seed(s.wrapping_add(i as i64));
        }
    }

    /// Moves the generator on to a state derived from the step's seed, so later draws do not repeat the
    /// last layer's.
    pub fn finish(&self) {
        if let Some(s) = self.step_seed {
            tch::manual_seed(
                s.wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407)
                    & i64::MAX,
            );
        }
    }
}
