//! Learning-rate schedules, with the exact formulas of transformers' `get_scheduler` (constant, linear,
//! cosine, all with linear warmup) and llama-recipes' StepLR (`gamma` per epoch).

use crate::checkpoint::SchedulerState;
pub use ferrotune_core::train_config::SchedulerType;
use ferrotune_core::train_config::TrainConfig;

/// A schedule resolved against the run's length.
#[derive(Debug, Clone, PartialEq)]
pub struct LrSchedule {
    pub kind: SchedulerType,
    pub base_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    /// Optimizer steps per epoch (for `step`).
    pub steps_per_epoch: u64,
    pub gamma: f64,
}

impl LrSchedule {
    /// The schedule of a run over `samples` training samples taken `global_micro_batch` at a time (world ×
    /// per-device batch) with `gradient_accumulation_steps`: `max_steps`, else `num_train_epochs` epochs.
    pub fn for_run(cfg: &TrainConfig, samples: usize, global_micro_batch: usize) -> Self {
        let micro_per_epoch = samples.div_ceil(global_micro_batch.max(1)) as u64;
        let steps_per_epoch = micro_per_epoch
            .div_ceil(cfg.gradient_accumulation_steps.max(1) as u64)
            .max(1);
        let total_steps = cfg
            .max_steps
            .unwrap_or_else(|| (cfg.num_train_epochs * steps_per_epoch as f64).ceil() as u64);
        LrSchedule {
            kind: cfg.lr_scheduler_type,
            base_lr: cfg.learning_rate,
            warmup_steps: Self::warmup_from(cfg.warmup_steps, cfg.warmup_ratio, total_steps),
            total_steps,
            steps_per_epoch,
            gamma: cfg.gamma,
        }
    }

    /// What a checkpoint records of this schedule at `step` (rate `lr`).
    pub fn state_at(&self, step: u64, lr: f64) -> SchedulerState {
        SchedulerState {
            kind: format!("{:?}", self.kind).to_lowercase(),
            base_lr: self.base_lr,
            warmup_steps: self.warmup_steps,
            total_steps: self.total_steps,
            last_step: step,
            last_lr: lr,
        }
    }

    /// Warmup steps from `warmup_steps` if set, else `ceil(warmup_ratio * total)` as transformers does.
    pub fn warmup_from(warmup_steps: Option<u64>, warmup_ratio: f64, total_steps: u64) -> u64 {
        warmup_steps.unwrap_or_else(|| (warmup_ratio * total_steps as f64).ceil() as u64)
    }

    /// The learning rate for optimizer step `step` (0-based: the rate used by the first update is `lr(0)`).
    pub fn lr(&self, step: u64) -> f64 {
        self.base_lr * self.factor(step)
    }

    fn factor(&self, step: u64) -> f64 {
        let (s, w, t) = (
            step as f64,
            self.warmup_steps as f64,
            self.total_steps as f64,
        );
        if self.kind != SchedulerType::Step && step < self.warmup_steps {
            return s / w.max(1.0);
        }
        match self.kind {
            SchedulerType::Constant => 1.0,
            SchedulerType::Linear => ((t - s) / (t - w).max(1.0)).max(0.0),
            SchedulerType::Cosine => {
                let progress = (s - w) / (t - w).max(1.0);
                (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
            }
            SchedulerType::Step => self.gamma.powi((step / self.steps_per_epoch.max(1)) as i32),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(kind: SchedulerType, warmup: u64, total: u64) -> LrSchedule {
        LrSchedule {
            kind,
            base_lr: 1e-3,
            warmup_steps: warmup,
            total_steps: total,
            steps_per_epoch: 4,
            gamma: 0.85,
        }
    }

    #[test]
    fn matches_transformers_formulas() {
        // Values of transformers' LambdaLR factors for warmup 2, total 10, computed by hand from its source.
        let lin = sched(SchedulerType::Linear, 2, 10);
        let got: Vec<f64> = (0..11).map(|s| lin.lr(s) / 1e-3).collect();
        let want = [
            0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0,
        ];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{got:?}");
        }
        let cos = sched(SchedulerType::Cosine, 2, 10);
        assert!((cos.lr(6) / 1e-3 - 0.5).abs() < 1e-12);
        assert!(
            (cos.lr(4) / 1e-3 - 0.5 * (1.0 + (std::f64::consts::PI * 0.25).cos())).abs() < 1e-12
        );
        assert!(cos.lr(10).abs() < 1e-15);
        assert_eq!(sched(SchedulerType::Constant, 2, 10).lr(1), 0.5e-3);
        assert_eq!(sched(SchedulerType::Constant, 2, 10).lr(9), 1e-3);
    }

    #[test]
    fn step_decays_per_epoch_and_warmup_ratio_rounds_up() {
        let st = sched(SchedulerType::Step, 0, 12);
        assert_eq!(st.lr(3), 1e-3);
        assert!((st.lr(4) - 0.85e-3).abs() < 1e-15);
        assert!((st.lr(8) - 0.85 * 0.85e-3).abs() < 1e-15);
        assert_eq!(LrSchedule::warmup_from(None, 0.1, 25), 3);
        assert_eq!(LrSchedule::warmup_from(Some(7), 0.1, 25), 7);
    }
}
