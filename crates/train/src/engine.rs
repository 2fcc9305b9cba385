//! The sharding strategies behind one interface: where parameters, gradients and AdamW state live, and
//! which collectives move them.
//!
//! Trainable tensors are grouped per unit (decoder layer / root) into [`FlatLayout`]s; each layout has a
//! [`FlatState`] holding its optimizer view:
//!
//! | strategy | parameters | gradients | AdamW moments + master |
//! |---|---|---|---|
//! | `NO_SHARD` (DDP) | full, views of one flat per unit | all-reduced in buckets of `bucket_cap_mb` | full |
//! | `SHARD_GRAD_OP` (ZeRO-2) | full, views of one flat per unit | reduce-scattered | this rank's chunk; updated chunk all-gathered |
//! | `FULL_SHARD` (ZeRO-3/FSDP) | this rank's chunk; a unit is gathered around its forward/recompute | reduce-scattered per micro-batch | this rank's chunk |
//! | `HYBRID_SHARD` | FULL_SHARD within the node | reduce-scattered in the node, then all-reduced across nodes | this rank's chunk (one copy per node) |
//!
//! "This rank's chunk" is its chunk within the shard group ([`Dist::shard_pg`]: all ranks, or this node's
//! under HYBRID_SHARD).
//!
//! With FULL_SHARD the frozen base weights are sharded the same way (per-unit frozen layouts, gathered with
//! their unit), so a LoRA run holds 1/world of the base as well. Without mixed precision the master copy
//! is the parameter's own dtype: fp32, or bf16 with `pure_bf16` (as the single-process recipe keeps it).
//! AdamW's arithmetic is element-wise, so running it on flats is the per-tensor `optim::AdamW` update, op
//! for op.
//!
//! **Mixed precision** (`bf16` with full/freeze fine-tuning, [`Engine::keep_fp32_masters`]): the flats
//! the model computes with are bf16 (so FULL_SHARD gathers half the bytes), and each rank keeps an fp32
//! master of what it owns (NO_SHARD: the whole flat; SHARD_GRAD_OP / FULL_SHARD: its chunk) plus fp32
//! moments. Gradients are reduced in fp32 — the bf16 flat gradient is cast before the all-reduce /
//! reduce-scatter, so the cross-rank sum (and FULL_SHARD's per-micro-batch accumulation) rounds once, at
//! fp32, the way the single process's update sees its gradient (cast to fp32 before AdamW); this costs
//! twice the gradient bytes of a bf16 reduce. AdamW updates the fp32 master and the bf16 parameter takes
//! its rounding (SHARD_GRAD_OP then all-gathers the bf16 chunks; FULL_SHARD's bf16 shard, the source of
//! its gathers, is the rounded master) — `optim::AdamW::with_fp32_master`, sharded.

use crate::error::TrainError;
use crate::flat::{build_layouts, FlatLayout};
use crate::model_setup::TrainModel;
use crate::optim::AdamWConfig;
use crate::parallel::{dist_err, Dist};
use ferrotune_core::train_config::ShardingStrategy;
use ferrotune_dist::ReduceOp;
use tch::{Kind, Tensor};

/// One trainable layout's optimizer view.
#[derive(Debug)]
pub struct FlatState {
    /// The full flat the parameters are views of (NO_SHARD, SHARD_GRAD_OP).
    pub full: Option<Tensor>,
    /// What AdamW updates: the full flat (NO_SHARD), a view of this rank's chunk of it (SHARD_GRAD_OP), or
    /// the owned chunk (FULL_SHARD).
    pub master: Tensor,
    pub exp_avg: Tensor,
    pub exp_avg_sq: Tensor,
    /// Mixed precision: the fp32 master of `master` (same extent), which AdamW updates; `master` then
    /// takes its bf16 rounding.
    pub fp32_master: Option<Tensor>,
    /// The reduced gradient of `master`, once the window is done (FULL_SHARD: accumulated per micro-batch).
    pub grad: Option<Tensor>,
}

/// The parameters, gradients and optimizer of one rank.
#[derive(Debug)]
pub struct Engine {
    pub strategy: ShardingStrategy,
    pub layouts: Vec<FlatLayout>,
    pub states: Vec<FlatState>,
    /// FULL_SHARD: the frozen tensors' layouts and this rank's chunks of them.
    pub frozen: Vec<FlatLayout>,
    pub frozen_shards: Vec<Tensor>,
    pub adam: AdamWConfig,
    pub step: u64,
    bucket_elems_bytes: u64,
    rank: usize,
    world: usize,
}

impl Engine {
    /// Flattens the model's trainable tensors (identical on every rank: rank 0's are broadcast) and
    /// shards them as `strategy` says.
    pub fn new(
        tm: &TrainModel,
        strategy: ShardingStrategy,
        dist: &Dist,
        adam: AdamWConfig,
        bucket_cap_mb: f64,
    ) -> Result<Self, TrainError> {
        let (rank, world) = (dist.shard_rank(), dist.shard_world());
        let layouts =
            build_layouts(tm.trainable(), world, "", tm.device).map_err(TrainError::Config)?;
        let sharded = strategy != ShardingStrategy::NoShard;
        // A fully sharded run on an unread base reads each rank's chunks from the checkpoint files (the
        // same files on every rank: nothing to broadcast); the other layouts are flattened from the model.
        let unread = |l: &FlatLayout| {
            tm.unloaded
                .as_ref()
                .filter(|ix| l.params.iter().any(|p| ix.contains(&p.name)))
        };
        let mut states = Vec::with_capacity(layouts.len());
        for l in &layouts {
            let (full, master) = match (strategy, unread(l)) {
                (ShardingStrategy::FullShard | ShardingStrategy::HybridShard, Some(ix)) => {
                    let m = l.chunk_from(ix, rank)?;
                    l.free();
                    (None, m)
                }
                (_, Some(_)) => {
                    return Err(TrainError::Config(
                        "an unread base needs FULL_SHARD or HYBRID_SHARD".into(),
                    ))
                }
                (_, None) => {
                    let mut full = l.flatten_values();
                    dist.pg.broadcast(&mut full, 0).map_err(dist_err)?;
                    match strategy {
                        ShardingStrategy::NoShard => {
                            l.install(&full);
                            (Some(full.shallow_clone()), full)
                        }
                        ShardingStrategy::ShardGradOp => {
                            l.install(&full);
                            let m = l.chunk_of(&full, rank);
                            (Some(full), m)
                        }
                        _ => {
                            let m = l.chunk_of(&full, rank).copy();
                            l.free();
                            (None, m)
                        }
                    }
                }
            };
            states.push(FlatState {
                full,
                exp_avg: master.zeros_like(),
                exp_avg_sq: master.zeros_like(),
                master,
                fp32_master: None,
                grad: None,
            });
        }
        let (mut frozen, mut frozen_shards) = (Vec::new(), Vec::new());
        if sharded && strategy != ShardingStrategy::ShardGradOp {
            let params: Vec<(String, Tensor)> = tm
                .model
                .named_parameters()
                .into_iter()
                .filter(|(_, t)| !t.requires_grad())
                .collect();
            frozen =
                build_layouts(params, world, ".frozen", tm.device).map_err(TrainError::Config)?;
            for l in &frozen {
                frozen_shards.push(match unread(l) {
                    Some(ix) => l.chunk_from(ix, rank)?,
                    None => l.chunk_of(&l.flatten_values(), rank).copy(),
                });
                l.free();
            }
        }
        Ok(Engine {
            strategy,
            layouts,
            states,
            frozen,
            frozen_shards,
            adam,
            step: 0,
            bucket_elems_bytes: (bucket_cap_mb * 1e6) as u64,
            rank,
            world,
        })
    }

    /// FULL_SHARD or HYBRID_SHARD: parameters live as shards, units are gathered around their use.
    pub fn fully_sharded(&self) -> bool {
        matches!(
            self.strategy,
            ShardingStrategy::FullShard | ShardingStrategy::HybridShard
        )
    }

    /// Mixed precision: call right after [`Engine::new`] on an fp32 model. What the engine holds of the
    /// trainable flats (NO_SHARD: the full flat; SHARD_GRAD_OP / FULL_SHARD: this rank's chunk) becomes the
    /// fp32 master — no copy of the model is taken — and the parameters (installed flats, FULL_SHARD's
    /// shards, frozen shards) are cast to `kind`. The moments are fp32 already. Afterwards cast the rest of
    /// the model (e.g. a NO_SHARD run's frozen tensors) to `kind` too.
    pub fn keep_fp32_masters(&mut self, kind: Kind) {
        let rank = self.rank;
        tch::no_grad(|| {
            for (l, s) in self.layouts.iter_mut().zip(&mut self.states) {
                l.kind = kind;
                match s.full.take() {
                    Some(full32) => {
                        let full = full32.to_kind(kind);
                        l.install(&full);
                        let (master, master32) = match self.strategy {
                            ShardingStrategy::NoShard => (full.shallow_clone(), full32),
                            // A copy, so the rest of the fp32 flat is released.
                            _ => (l.chunk_of(&full, rank), l.chunk_of(&full32, rank).copy()),
                        };
                        s.full = Some(full);
                        s.master = master;
                        s.fp32_master = Some(master32);
                    }
                    None => {
                        let master32 = std::mem::replace(&mut s.master, Tensor::new());
                        s.master = master32.to_kind(kind);
                        s.fp32_master = Some(master32);
                    }
                }
            }
            for (l, shard) in self.frozen.iter_mut().zip(&mut self.frozen_shards) {
                l.kind = kind;
                *shard = shard.to_kind(kind);
            }
        });
    }

    /// Whether AdamW runs on fp32 masters of lower-precision parameters.
    pub fn mixed_precision(&self) -> bool {
        self.states.iter().any(|s| s.fp32_master.is_some())
    }

    /// A flat gradient as it is reduced across ranks: fp32 under mixed precision, else as it is.
    pub fn grad_for_reduce(&self, flat: Tensor) -> Tensor {
        if self.mixed_precision() {
            flat.to_kind(Kind::Float)
        } else {
            flat
        }
    }

    /// After the window's backward passes: bring every layout's gradient to its reduced form in
    /// `FlatState::grad` (NO_SHARD: bucketed all-reduce; SHARD_GRAD_OP: reduce-scatter; FULL_SHARD: done
    /// during backward).
    pub fn reduce_gradients(&mut self, dist: &Dist) -> Result<(), TrainError> {
        if self.fully_sharded() {
            return Ok(());
        }
        let mixed = self.mixed_precision();
        for (l, s) in self.layouts.iter().zip(&mut self.states) {
            let flat = l.flatten_grads();
            let flat = if mixed {
                flat.to_kind(Kind::Float)
            } else {
                flat
            };
            l.zero_grads();
            match self.strategy {
                ShardingStrategy::NoShard => {
                    let per =
                        (self.bucket_elems_bytes / flat.kind().elt_size_in_bytes() as u64).max(1);
                    let mut off = 0;
                    while off < l.padded {
                        let n = (per as i64).min(l.padded - off);
                        let mut bucket = flat.narrow(0, off, n);
                        dist.pg
                            .all_reduce(&mut bucket, ReduceOp::Sum)
                            .map_err(dist_err)?;
                        off += n;
                    }
                    s.grad = Some(flat);
                }
                _ => {
                    s.grad = Some(
                        dist.shard_pg()
                            .reduce_scatter(&flat, ReduceOp::Sum)
                            .map_err(dist_err)?,
                    );
                }
            }
        }
        Ok(())
    }

    /// FULL_SHARD: adds a unit's reduce-scattered gradient chunk to its accumulator.
    pub fn accumulate_shard_grad(&mut self, layout: usize, chunk: Tensor) {
        let s = &mut self.states[layout];
        s.grad = Some(match s.grad.take() {
            Some(g) => g + chunk,
            None => chunk,
        });
    }

    /// The global L2 norm of the reduced gradients; scales them by `min(max_norm / (norm + 1e-6), 1)` when
    /// `max_norm > 0`. Sharded strategies sum the squares of every rank's chunks.
    pub fn clip(&mut self, dist: &Dist, max_norm: f64) -> Result<f64, TrainError> {
        let local: f64 = self
            .states
            .iter()
            .filter_map(|s| s.grad.as_ref())
            .map(|g| {
                g.to_kind(Kind::Double)
                    .square()
                    .sum(Kind::Double)
                    .double_value(&[])
            })
            .sum();
        let sumsq = if self.strategy == ShardingStrategy::NoShard {
            local
        } else {
            dist.shard_sum_f64(&[local])?[0]
        };
        let norm = sumsq.sqrt();
        if max_norm > 0.0 {
            let coef = (max_norm / (norm + 1e-6)).min(1.0);
            if coef < 1.0 {
                for g in self.states.iter_mut().filter_map(|s| s.grad.as_mut()) {
                    let _ = g.g_mul_scalar_(coef);
                }
            }
        }
        Ok(norm)
    }

    /// One AdamW update of every master with its reduced gradient (mixed precision: of the fp32 master,
    /// whose rounding the parameter then takes; then SHARD_GRAD_OP all-gathers the updated chunks into the
    /// full parameters); clears the gradients.
    pub fn step(&mut self, dist: &Dist, lr: f64) -> Result<(), TrainError> {
        self.step += 1;
        for s in &mut self.states {
            let Some(g) = s.grad.take() else { continue };
            match &mut s.fp32_master {
                Some(m32) => {
                    adamw_update(
                        m32,
                        &g.to_kind(Kind::Float),
                        &mut s.exp_avg,
                        &mut s.exp_avg_sq,
                        self.step,
                        lr,
                        &self.adam,
                    );
                    tch::no_grad(|| s.master.copy_(m32));
                }
                None => adamw_update(
                    &mut s.master,
                    &g,
                    &mut s.exp_avg,
                    &mut s.exp_avg_sq,
                    self.step,
                    lr,
                    &self.adam,
                ),
            }
            if self.strategy == ShardingStrategy::ShardGradOp {
                let gathered = dist.shard_pg().all_gather(&s.master).map_err(dist_err)?;
                let full = s.full.as_mut().expect("SHARD_GRAD_OP keeps the full flat");
                tch::no_grad(|| full.copy_(&gathered));
            }
        }
        Ok(())
    }

    /// fp16 loss scaling, after [`Engine::reduce_gradients`]: whether the reduced gradients are finite on
    /// every rank (agreed, so that all ranks skip an overflowing step together — with reduce-scatter an
    /// overflow may land in one rank's chunk only); if they are, divides them by `scale`.
    pub fn unscale(&mut self, dist: &Dist, scale: f64) -> Result<bool, TrainError> {
        let local = self
            .states
            .iter()
            .filter_map(|s| s.grad.as_ref())
            .any(|g| g.isfinite().all().int64_value(&[]) == 0);
        if dist.sum_f64(&[f64::from(u8::from(local))])?[0] > 0.0 {
            return Ok(false);
        }
        let inv = 1.0 / scale;
        for g in self.states.iter_mut().filter_map(|s| s.grad.as_mut()) {
            let _ = g.g_mul_scalar_(inv);
        }
        Ok(true)
    }

    /// Drops the window's gradients without updating (a skipped step).
    pub fn discard_gradients(&mut self) {
        for (l, s) in self.layouts.iter().zip(&mut self.states) {
            l.zero_grads();
            s.grad = None;
        }
    }

    /// FULL_SHARD: gathers every unit's full parameters into the model (for evaluation and full-weight
    /// saving); keep the returned buffers alive until [`Engine::release_all`]. Other strategies: nothing.
    pub fn gather_all(&self, dist: &Dist) -> Result<(), TrainError> {
        if !self.fully_sharded() {
            return Ok(());
        }
        for (l, shard) in self.all_sharded() {
            let full = dist.shard_pg().all_gather(shard).map_err(dist_err)?;
            l.install(&full);
        }
        Ok(())
    }

    /// FULL_SHARD: frees what [`Engine::gather_all`] installed.
    pub fn release_all(&self) {
        if self.fully_sharded() {
            for (l, _) in self.all_sharded() {
                l.free();
            }
        }
    }

    /// (layout, this rank's chunk) of every sharded layout, trainable then frozen.
    fn all_sharded(&self) -> impl Iterator<Item = (&FlatLayout, &Tensor)> {
        self.layouts
            .iter()
            .zip(self.states.iter().map(|s| &s.master))
            .chain(self.frozen.iter().zip(&self.frozen_shards))
    }

    /// FULL_SHARD: gathers the layouts of `unit` (trainable and frozen) into the model.
    pub fn gather_unit(&self, dist: &Dist, unit: &str) -> Result<(), TrainError> {
        for (l, shard) in self.all_sharded() {
            if unit_key(&l.key) == unit {
                let full = dist.shard_pg().all_gather(shard).map_err(dist_err)?;
                l.install(&full);
            }
        }
        Ok(())
    }

    /// FULL_SHARD: frees the layouts of `unit`.
    pub fn free_unit(&self, unit: &str) {
        for (l, _) in self.all_sharded() {
            if unit_key(&l.key) == unit {
                l.free();
            }
        }
    }

    /// The index of `unit`'s trainable layout.
    pub fn trainable_layout(&self, unit: &str) -> Option<usize> {
        self.layouts.iter().position(|l| l.key == unit)
    }

    /// Per trainable layout: the full flats of (parameters — the fp32 masters under mixed precision,
    /// exp_avg, exp_avg_sq), gathered when sharded.
    pub fn full_state(&self, dist: &Dist) -> Result<Vec<[Tensor; 3]>, TrainError> {
        let mut out = Vec::with_capacity(self.states.len());
        for s in &self.states {
            let master = s.fp32_master.as_ref().unwrap_or(&s.master);
            out.push(match self.strategy {
                ShardingStrategy::NoShard => [
                    master.shallow_clone(),
                    s.exp_avg.shallow_clone(),
                    s.exp_avg_sq.shallow_clone(),
                ],
                _ => {
                    let g = |t: &Tensor| dist.shard_pg().all_gather(t).map_err(dist_err);
                    [g(master)?, g(&s.exp_avg)?, g(&s.exp_avg_sq)?]
                }
            });
        }
        Ok(out)
    }

    /// Per trainable layout: this rank's chunk of (parameters — the fp32 master under mixed precision,
    /// exp_avg, exp_avg_sq).
    pub fn shard_state(&self) -> Vec<[Tensor; 3]> {
        self.layouts
            .iter()
            .zip(&self.states)
            .map(|(l, s)| {
                let c = |t: &Tensor| match self.strategy {
                    ShardingStrategy::NoShard => l.chunk_of(t, self.rank),
                    _ => t.shallow_clone(),
                };
                let master = s.fp32_master.as_ref().unwrap_or(&s.master);
                [c(master), c(&s.exp_avg), c(&s.exp_avg_sq)]
            })
            .collect()
    }

    /// Restores layout `i` from full flats (parameters optional: a FULL_STATE_DICT resume already loaded
    /// them into the model before flattening). Any dtype: values are cast as they are copied, so under mixed
    /// precision the fp32 master takes `params` and the parameter its bf16 rounding.
    pub fn load_full_state(
        &mut self,
        i: usize,
        params: Option<&Tensor>,
        exp_avg: &Tensor,
        exp_avg_sq: &Tensor,
    ) {
        let l = &self.layouts[i];
        let s = &mut self.states[i];
        let pick = |t: &Tensor| match self.strategy {
            ShardingStrategy::NoShard => t.shallow_clone(),
            _ => l.chunk_of(t, self.rank),
        };
        tch::no_grad(|| {
            if let (Some(p), Some(m32)) = (params, s.fp32_master.as_mut()) {
                m32.copy_(&pick(p));
            }
            if let Some(p) = params {
                match &mut s.full {
                    Some(full) => {
                        full.copy_(p);
                    }
                    None => {
                        s.master.copy_(&l.chunk_of(p, self.rank));
                    }
                }
            }
            s.exp_avg.copy_(&pick(exp_avg));
            s.exp_avg_sq.copy_(&pick(exp_avg_sq));
        });
    }

    /// Bytes of parameters + gradient-free optimizer state this rank holds between steps (the flats and
    /// moments it owns, the frozen tensors it keeps).
    pub fn resident_bytes(&self, tm: &TrainModel) -> u64 {
        let b = |t: &Tensor| t.numel() as u64 * t.kind().elt_size_in_bytes() as u64;
        let mut n = 0;
        for s in &self.states {
            n += match (&s.full, self.strategy) {
                (Some(f), _) => b(f),
                (None, _) => b(&s.master),
            };
            n += b(&s.exp_avg) + b(&s.exp_avg_sq);
            n += s.fp32_master.as_ref().map_or(0, b);
        }
        if self.fully_sharded() {
            n += self.frozen_shards.iter().map(b).sum::<u64>();
        } else {
            n += tm
                .model
                .named_parameters()
                .iter()
                .filter(|(_, t)| !t.requires_grad())
                .map(|(_, t)| b(t))
                .sum::<u64>();
        }
        n
    }

    pub fn world(&self) -> usize {
        self.world
    }
}

/// The unit a layout key belongs to (`layers.3.frozen` → `layers.3`).
pub fn unit_key(key: &str) -> &str {
    key.strip_suffix(".frozen").unwrap_or(key)
}

/// `optim::AdamW`'s update on one tensor (same ops in the same order).
fn adamw_update(
    p: &mut Tensor,
    g: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    step: u64,
    lr: f64,
    cfg: &AdamWConfig,
) {
    let t = step as f64;
    let bias_correction1 = 1.0 - cfg.beta1.powf(t);
    let bias_correction2_sqrt = (1.0 - cfg.beta2.powf(t)).powf(0.5);
    let step_size = lr / bias_correction1;
    tch::no_grad(|| {
        if cfg.weight_decay != 0.0 {
            let _ = p.f_mul_scalar_(1.0 - lr * cfg.weight_decay);
        }
        let _ = m.lerp_(g, 1.0 - cfg.beta1);
        let _ = v.g_mul_scalar_(cfg.beta2);
        let _ = v.addcmul_(g, &(g * (1.0 - cfg.beta2)));
        let denom = (v.sqrt() / bias_correction2_sqrt) + cfg.eps;
        let _ = p.addcdiv_(&(&*m * (-step_size)), &denom);
    });
}
