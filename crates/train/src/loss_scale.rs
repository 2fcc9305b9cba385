//! Dynamic loss scaling for fp16 training, with the policy of `torch.amp.GradScaler`: start at 2^16,
//! halve the scale and skip the step when a gradient overflows, double it after 2000 clean steps.

use serde::{Deserialize, Serialize};
use tch::Tensor;

/// The scaler's state (saved in checkpoints so that a resumed run scales exactly as the original).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    pub scale: f64,
    pub growth_factor: f64,
    pub backoff_factor: f64,
    pub growth_interval: u64,
    /// Clean steps since the last change of scale.
    pub growth_tracker: u64,
}

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler {
            scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
            growth_tracker: 0,
        }
    }
}

impl LossScaler {
    /// Divides every gradient by the scale; returns false (and leaves them) when any is NaN/inf.
    pub fn unscale(&self, params: &[(String, Tensor)]) -> bool {
        let inv = 1.0 / self.scale;
        tch::no_grad(|| {
            for (_, p) in params {
                let mut g = p.grad();
                if !g.defined() {
                    continue;
                }
                let finite = g.isfinite().all().int64_value(&[]) != 0;
                if !finite {
                    return false;
                }
                let _ = g.g_mul_scalar_(inv);
            }
            true
        })
    }

    /// Updates the scale after a step: `found_inf` halves it, `growth_interval` clean steps double it.
    pub fn update(&mut self, found_inf: bool) {
        if found_inf {
            self.scale *= self.backoff_factor;
            self.growth_tracker = 0;
        } else {
            self.growth_tracker += 1;
            if self.growth_tracker == self.growth_interval {
                self.scale *= self.growth_factor;
                self.growth_tracker = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn backs_off_on_overflow_and_grows_after_interval() {
        let mut s = LossScaler {
            growth_interval: 3,
            ..Default::default()
        };
        s.update(true);
        assert_eq!(s.scale, 32768.0);
        for _ in 0..3 {
            s.update(false);
        }
        assert_eq!(s.scale, 65536.0);
        let p = Tensor::ones([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        (&p * 8.0).sum(Kind::Float).backward();
        let params = vec![("p".to_string(), p.shallow_clone())];
        let s = LossScaler {
            scale: 4.0,
            ..Default::default()
        };
        assert!(s.unscale(&params));
        assert_eq!(Vec::<f32>::try_from(p.grad()).unwrap(), vec![2.0, 2.0]);
        let q = Tensor::ones([1], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        (&q * f64::INFINITY).sum(Kind::Float).backward();
        assert!(!s.unscale(&[("q".to_string(), q)]));
    }
}
