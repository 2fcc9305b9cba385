//! AdamW over the trainable parameters only, with the arithmetic of `torch.optim.AdamW`'s single-tensor
//! path (the one PyTorch uses on CPU), and a state that is saved to and restored from safetensors exactly.
//!
//! Per parameter and step `t` (decoupled weight decay, Loshchilov & Hutter):
//! `p *= 1 - lr*wd; m.lerp_(g, 1-b1); v = v*b2 + (1-b2)*g*g;
//!  p.addcdiv_(m, sqrt(v)/sqrt(1-b2^t) + eps, value = -lr/(1-b1^t))`.
//!
//! Mixed precision ([`AdamW::with_fp32_master`]): the model computes with bf16 weights while the optimizer
//! keeps an fp32 master copy of each; the update above runs on the master with the gradient cast to fp32,
//! and the bf16 weight is then set to the rounded master. The masters are part of the saved state
//! (`master.<param>`), so a resumed run continues exactly.

use std::collections::BTreeMap;
use std::path::Path;
use tch::Tensor;

/// Errors of saving or restoring optimizer state.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    #[error("optimizer state {path}: {message}")]
    State { path: String, message: String },
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// Hyper-parameters of AdamW (transformers' names in the config).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// Moments of one parameter.
#[derive(Debug)]
struct Slot {
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

/// AdamW over named parameters. The step count is shared (every trainable parameter gets a gradient every
/// step in these recipes, as in torch where each `state['step']` then holds the same value).
#[derive(Debug)]
pub struct AdamW {
    pub cfg: AdamWConfig,
    params: Vec<(String, Tensor)>,
    slots: Vec<Slot>,
    /// fp32 master weights (mixed precision), one per parameter.
    master: Option<Vec<Tensor>>,
    step: u64,
}

impl AdamW {
    /// An optimizer over `params` (name, tensor with requires_grad), moments zero-initialised lazily like torch.
    pub fn new(params: Vec<(String, Tensor)>, cfg: AdamWConfig) -> Self {
        let slots = params
            .iter()
            .map(|(_, p)| Slot {
                exp_avg: p.zeros_like().detach(),
                exp_avg_sq: p.zeros_like().detach(),
            })
            .collect();
        AdamW {
            cfg,
            params,
            slots,
            master: None,
            step: 0,
        }
    }

    /// An optimizer that keeps fp32 master weights (and fp32 moments), copied from `params` now — so call
    /// it while the weights are still fp32, before the model is cast to its compute dtype.
    pub fn with_fp32_master(params: Vec<(String, Tensor)>, cfg: AdamWConfig) -> Self {
        let master: Vec<Tensor> = params
            .iter()
            .map(|(_, p)| p.detach().to_kind(tch::Kind::Float).copy())
            .collect();
        let slots = master
            .iter()
            .map(|m| Slot {
                exp_avg: m.zeros_like(),
                exp_avg_sq: m.zeros_like(),
            })
            .collect();
        AdamW {
            cfg,
            params,
            slots,
            master: Some(master),
            step: 0,
        }
    }

    /// The parameters this optimizer updates.
    pub fn params(&self) -> &[(String, Tensor)] {
        &self.params
    }

    /// Number of updates applied so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Sets every gradient to `None` (torch's `zero_grad(set_to_none=True)`).
    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.detach_();
                let _ = g.zero_();
            }
        }
    }

    /// Applies one update with learning rate `lr`. Parameters without a gradient are left alone.
    pub fn step(&mut self, lr: f64) {
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.cfg;
        self.step += 1;
        let t = self.step as f64;
        let bias_correction1 = 1.0 - beta1.powf(t);
        let bias_correction2 = 1.0 - beta2.powf(t);
        let step_size = lr / bias_correction1;
        let bias_correction2_sqrt = bias_correction2.powf(0.5);
        tch::no_grad(|| {
            for (i, ((_, p), slot)) in self.params.iter_mut().zip(&mut self.slots).enumerate() {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                // With fp32 masters the update runs on the master; the weight then takes its rounding.
                let (mut p, g, weight) = match &self.master {
                    Some(m) => (m[i].shallow_clone(), g.to_kind(tch::Kind::Float), Some(p)),
                    None => (p.shallow_clone(), g, None),
                };
                if weight_decay != 0.0 {
                    let _ = p.f_mul_scalar_(1.0 - lr * weight_decay);
                }
                let _ = slot.exp_avg.lerp_(&g, 1.0 - beta1);
                let _ = slot.exp_avg_sq.g_mul_scalar_(beta2);
                // torch: addcmul_(g, g, value=1-b2) computes (value*g)*g; (g*value) as the second factor
                // with value 1 gives the same product (IEEE multiplication commutes).
                let _ = slot.exp_avg_sq.addcmul_(&g, &(&g * (1.0 - beta2)));
                let denom = (slot.exp_avg_sq.sqrt() / bias_correction2_sqrt) + eps;
                let _ = p.addcdiv_(&(&slot.exp_avg * (-step_size)), &denom);
                if let Some(w) = weight {
                    w.copy_(&p);
                }
            }
        });
    }

    /// The state as named tensors (`exp_avg.<param>`, `exp_avg_sq.<param>`) plus the step count.
    pub fn state_tensors(&self) -> (Vec<(String, Tensor)>, u64) {
        let mut out = Vec::with_capacity(self.params.len() * 2);
        for (i, ((name, _), slot)) in self.params.iter().zip(&self.slots).enumerate() {
            out.push((format!("exp_avg.{name}"), slot.exp_avg.shallow_clone()));
            out.push((
                format!("exp_avg_sq.{name}"),
                slot.exp_avg_sq.shallow_clone(),
            ));
            if let Some(m) = &self.master {
                out.push((format!("master.{name}"), m[i].shallow_clone()));
            }
        }
        (out, self.step)
    }

    /// Writes the state to `path` (safetensors).
    pub fn save(&self, path: &Path) -> Result<(), OptimError> {
        let (tensors, _) = self.state_tensors();
        Tensor::write_safetensors(&tensors, path)?;
        Ok(())
    }

    /// Restores moments from `path` (written by [`AdamW::save`]) and the step count.
    pub fn load(&mut self, path: &Path, step: u64) -> Result<(), OptimError> {
        let err = |message: String| OptimError::State {
            path: path.display().to_string(),
            message,
        };
        let loaded: BTreeMap<String, Tensor> =
            Tensor::read_safetensors(path)?.into_iter().collect();
        for ((name, _), slot) in self.params.iter().zip(&mut self.slots) {
            for (key, dst) in [
                (format!("exp_avg.{name}"), &mut slot.exp_avg),
                (format!("exp_avg_sq.{name}"), &mut slot.exp_avg_sq),
            ] {
                let src = loaded
                    .get(&key)
                    .ok_or_else(|| err(format!("missing tensor `{key}`")))?;
                if src.size() != dst.size() {
                    return Err(err(format!(
                        "`{key}` has shape {:?}, the parameter has {:?}",
                        src.size(),
                        dst.size()
                    )));
                }
                tch::no_grad(|| dst.copy_(&src.to_kind(dst.kind())));
            }
        }
        if let Some(master) = &mut self.master {
            // A checkpoint without masters (written without mixed precision) keeps the ones from the weights.
            for ((name, _), m) in self.params.iter().zip(master.iter_mut()) {
                if let Some(src) = loaded.get(&format!("master.{name}")) {
                    if src.size() != m.size() {
                        return Err(err(format!(
                            "`master.{name}` has shape {:?}, the parameter has {:?}",
                            src.size(),
                            m.size()
                        )));
                    }
                    tch::no_grad(|| m.copy_(src));
                }
            }
        }
        self.step = step;
        Ok(())
    }
}

/// The global L2 norm of the gradients of `params` (as `torch.nn.utils.clip_grad_norm_` computes it: the
/// norm of the per-tensor norms) and, when `max_norm > 0`, the gradients scaled by
/// `min(max_norm / (norm + 1e-6), 1)`. Returns the norm before clipping.
pub fn clip_grad_norm(params: &[(String, Tensor)], max_norm: f64) -> f64 {
    let grads: Vec<Tensor> = params
        .iter()
        .map(|(_, p)| p.grad())
        .filter(|g| g.defined())
        .collect();
    if grads.is_empty() {
        return 0.0;
    }
    tch::no_grad(|| {
        let norms: Vec<Tensor> = grads.iter().map(|g| g.norm()).collect();
        // `Tensor::norm` is at::norm(p=2), which ATen computes with linalg_vector_norm.
        let total = Tensor::stack(&norms, 0).norm();
        if max_norm > 0.0 {
            // Python's `max_norm / (total + 1e-6)` is `Tensor.__rtruediv__`: reciprocal, then multiply.
            let coef = ((&total + 1e-6).reciprocal() * max_norm).clamp_max(1.0);
            for mut g in grads {
                let _ = g.g_mul_(&coef);
            }
        }
        total.double_value(&[])
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn state_round_trips_exactly() {
        tch::manual_seed(0);
        let p = Tensor::randn([3, 4], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let cfg = AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let mut opt = AdamW::new(vec![("w".into(), p.shallow_clone())], cfg);
        for _ in 0..2 {
            opt.zero_grad();
            (&p * &p).sum(Kind::Float).backward();
            opt.step(1e-2);
        }
        let dir = tempfile::tempdir().unwrap();
        opt.save(&dir.path().join("o.safetensors")).unwrap();
        let q = p.detach().copy().set_requires_grad(true);
        let mut opt2 = AdamW::new(vec![("w".into(), q.shallow_clone())], cfg);
        opt2.load(&dir.path().join("o.safetensors"), opt.step_count())
            .unwrap();
        for (o, pp) in [(&mut opt, &p), (&mut opt2, &q)] {
            o.zero_grad();
            (pp * pp).sum(Kind::Float).backward();
            o.step(1e-2);
        }
        assert!(p.equal(&q), "resumed optimizer must give identical weights");
        let bad = AdamW::new(
            vec![(
                "w".into(),
                Tensor::zeros([2], (Kind::Float, tch::Device::Cpu)),
            )],
            cfg,
        )
        .load(&dir.path().join("o.safetensors"), 2)
        .unwrap_err()
        .to_string();
        assert!(bad.contains("shape"), "{bad}");
    }
}
