//! The distributed fine-tuning recipe (`WORLD_SIZE > 1`, or resuming a sharded checkpoint), top to bottom.
//! It is the single-device loop of [`crate::finetune`] with the ranks sharing the work:
//!
//! 1. connect the process group; rank 0 prepares the output directory and writes `resolved_config.toml`;
//! 2. load the model, then hand its trainable (and, for FULL_SHARD, frozen) tensors to the sharding
//!    [`Engine`] of `parallel.strategy`; restore a checkpoint (sharded: re-sharded for this world size);
//! 3. every optimizer step: each rank takes its share of the next `gradient_accumulation_steps` global
//!    micro-batches ([`crate::parallel::rank_epoch_batches`]); the trained-token count of the whole
//!    global window is summed over ranks first, so `Σ CE / N_global` summed over ranks is exactly the
//!    single-process loss; gradients are reduced (all-reduce / reduce-scatter), clipped by the global
//!    norm, and AdamW steps on what this rank owns;
//! 4. every rank evaluates its share of the validation batches, rank 0 logs; checkpoints are collective ([`crate::sharded_ckpt`]); rank 0 writes the
//!    final weights.
//!
//! With the same global batch the sample stream, losses and weights are the single process's (fp32; up
//! to summation order). `bf16` full/freeze fine-tuning is mixed precision as in the single process: the
//! model computes in bf16 and every rank keeps fp32 masters (and moments) of what it owns
//! ([`Engine::keep_fp32_masters`]); LoRA's `bf16` is a bf16 frozen base with fp32 adapters. `fp16` is
//! the single process's too (an f16 frozen base for LoRA, fp32 trained weights) with dynamic loss scaling:
//! the overflow check runs on the reduced gradients and is agreed across ranks ([`Engine::unscale`]), so
//! all ranks skip an overflowing step and back off the scale together. LoRA dropout masks are drawn per
//! rank, so with `lora_dropout > 0` a distributed run is a different (equally valid) draw.

use crate::batches::{HostBatch, Sample};
use crate::checkpoint::{self, SamplerPosition, TrainerState};
use crate::engine::Engine;
use crate::error::TrainError;
use crate::eval::{eval_sums, EvalMetrics};
use crate::finetune::{RunSummary, TrainData};
use crate::metrics::{peak_rss_mib, MetricsLog, MetricsRecord};
use crate::model_setup::{self, TrainModel};
use crate::optim::AdamWConfig;
use crate::parallel::{rank_epoch_batches, Dist};
use crate::progress::TrainProgress;
use crate::scheduler::LrSchedule;
use crate::sharded_ckpt::{self, SaveArgs};
use crate::{fsdp, interrupt};
use ferrotune_core::train_config::{
    CheckpointType, FinetuningType, ShardingStrategy, Stage, TrainConfig,
};
use ferrotune_core::RunDir;
use ferrotune_dist::RankEnv;

/// Runs the recipe of `cfg` as one rank of the job described by `env`.
pub fn run(cfg: &TrainConfig, data: TrainData, env: RankEnv) -> Result<RunSummary, TrainError> {
    cfg.validate().map_err(TrainError::Config)?;
    if let Some(n) = cfg.num_threads {
        tch::set_num_threads(n as i32);
    }
    if data.train.is_empty() {
        return Err(TrainError::Data("the training split is empty".into()));
    }
    let strategy = crate::parallel::effective_strategy(cfg, &env);
    // One GPU per process, as torchrun: a CUDA device means `cuda:LOCAL_RANK` in a distributed run.
    let device = match ferrotune_model::resolve_device(cfg.device) {
        tch::Device::Cuda(_) => tch::Device::Cuda(env.local_rank),
        d => d,
    };
    let dist = Dist::connect(cfg, env, device, strategy)?;
    let (rank, world) = (dist.rank(), dist.world());
    let run_dir = RunDir::new(&cfg.output_dir);
    if dist.is_main() {
        crate::finetune::prepare_output_dir(cfg, &run_dir)?;
        let text = ferrotune_core::config::to_toml(cfg)
            .map_err(|e| TrainError::Config(format!("serializing the resolved config: {e}")))?;
        ferrotune_core::write_atomic(run_dir.resolved_config(), text.as_bytes())?;
    }
    dist.barrier()?;
    let resume = checkpoint::resolve_resume(&run_dir, cfg.resume_from_checkpoint.as_deref())?;
    let saved_dist = resume.as_deref().and_then(sharded_ckpt::read_dist_state);
    let sharded_resume = saved_dist
        .as_ref()
        .is_some_and(|s| s.checkpoint_type == CheckpointType::ShardedStateDict);

    // --- model, engine, schedule ---
    // Fully sharded: the base stays unread and each rank reads only its shards of it (unless the weights
    // come from a full checkpoint being resumed, or the base cannot be left unread).
    let fully_sharded = matches!(
        strategy,
        ShardingStrategy::FullShard | ShardingStrategy::HybridShard
    );
    let base_weights_resumed = resume.is_some() && !sharded_resume;
    let unloaded = if fully_sharded && !base_weights_resumed {
        model_setup::setup_unloaded(cfg, device, data.tokenizer_vocab)?
    } else {
        None
    };
    let mut tm = match unloaded {
        Some(tm) => tm,
        None => model_setup::setup(
            cfg,
            device,
            data.tokenizer_vocab,
            if sharded_resume {
                None
            } else {
                resume.as_deref()
            },
        )?,
    };
    let (n_trainable, n_total) = tm.parameter_counts();
    let adam = AdamWConfig {
        beta1: cfg.adam_beta1,
        beta2: cfg.adam_beta2,
        eps: cfg.adam_epsilon,
        weight_decay: cfg.weight_decay,
    };
    let mut engine = Engine::new(&tm, strategy, &dist, adam, cfg.parallel.bucket_cap_mb)?;
    // bf16 mixed precision for full / freeze (as the single-process recipe): the engine's fp32 flats of the
    // fp32 model become the fp32 master shards, and the model computes in bf16 (the engine's flats are
    // bf16). No full-model copy is made.
    if cfg.bf16 && cfg.finetuning_type != FinetuningType::Lora {
        engine.keep_fp32_masters(tch::Kind::BFloat16);
        tm._vs.set_kind(tch::Kind::BFloat16);
        tracing::info!(
            "bf16 mixed precision: bf16 weights for compute, fp32 master shards and moments, fp32 gradient reduction"
        );
    }
    let resident = engine.resident_bytes(&tm);
    tracing::info!(
        rank,
        world,
        strategy = ?strategy,
        trainable = n_trainable,
        total = n_total,
        resident_param_optimizer_bytes = resident,
        setup_peak_rss_mib = peak_rss_mib().map_or(-1, |m| m.round() as i64),
        "sharded"
    );
    let bs = cfg.per_device_train_batch_size;
    let ga = cfg.gradient_accumulation_steps;
    let global_mb = bs * world;
    let schedule = LrSchedule::for_run(cfg, data.train.len(), global_mb);
    let total_steps = schedule.total_steps;

    // --- state (fresh or resumed) ---
    let mut state = TrainerState::fresh(cfg, total_steps);
    if let Some(dir) = &resume {
        let saved = checkpoint::load_state(dir)?;
        sharded_ckpt::load(dir, &mut engine)?;
        engine.step = saved.optimizer_step;
        // The sampler position counts global micro-batches of the saving run.
        let old_mb = saved_dist
            .as_ref()
            .map_or(global_mb, |d| d.global_micro_batch);
        let samples = saved.sampler.batches_consumed as usize * old_mb;
        if !samples.is_multiple_of(global_mb) {
            return Err(TrainError::Config(format!(
                "checkpoint {} stopped after {samples} samples of epoch {}, which is not a whole number of this run's global micro-batches ({global_mb} = world {world} × per_device_train_batch_size {bs})",
                dir.display(),
                saved.sampler.epoch
            )));
        }
        state = TrainerState {
            max_steps: total_steps,
            sampler: SamplerPosition {
                epoch: saved.sampler.epoch,
                batches_consumed: (samples / global_mb) as u64,
            },
            ..saved
        };
        tracing::info!(checkpoint = %dir.display(), step = state.global_step, "resuming");
    }
    let mut metrics = if dist.is_main() {
        Some(MetricsLog::open(
            &run_dir.metrics(),
            resume.as_ref().map(|_| state.global_step),
        )?)
    } else {
        None
    };

    // --- the loop ---
    interrupt::install();
    let shuffle = cfg.stage == Stage::Sft || !cfg.packing;
    let mut progress = TrainProgress::new(
        if dist.is_main() { total_steps } else { 0 },
        state.global_step,
    );
    let mut losses = Vec::new();
    let mut window_losses = Vec::new();
    let mut last_grad_norm = 0.0;
    let mut interrupted = false;
    let mut epoch_cache: Option<(u64, Vec<HostBatch>)> = None;
    tm.model.set_training(true);
    while state.global_step < total_steps {
        let pos = state.sampler;
        if epoch_cache.as_ref().map(|c| c.0) != Some(pos.epoch) {
            let b = rank_epoch_batches(
                &data.train,
                bs,
                cfg.seed,
                pos.epoch,
                shuffle,
                data.pad_id,
                rank,
                world,
            );
            epoch_cache = Some((pos.epoch, b));
        }
        let batches = &epoch_cache.as_ref().expect("set above").1;
        let start = pos.batches_consumed as usize;
        if start >= batches.len() {
            state.sampler = SamplerPosition {
                epoch: pos.epoch + 1,
                batches_consumed: 0,
            };
            continue;
        }
        let window = &batches[start..(start + ga).min(batches.len())];
        let step = state.global_step;
        let lr = schedule.lr(step);
        tch::manual_seed((cfg.seed.wrapping_add(step)) as i64);

        // Σ CE / N_global on every rank: the ranks' losses add up to the single-process loss.
        let n_local: u64 = window.iter().map(HostBatch::trained_tokens).sum();
        let n_global = dist.sum_f64(&[n_local as f64])?[0] as u64;
        let denom = n_global.max(1) as f64;
        let scale = state.loss_scaler.as_ref().map_or(1.0, |s| s.scale);
        let mut local_loss = 0.0;
        for mb in window {
            let (ids, pos_ids, mask, labels) = mb.to_tensors(tm.device);
            // The fused chunked loss head, as in the single-process recipe (scaled under fp16).
            local_loss += (if engine.fully_sharded() {
                fsdp::forward_backward(
                    &mut engine,
                    &dist,
                    &tm,
                    (&ids, &pos_ids, &mask),
                    &labels,
                    (denom, scale),
                )?
            } else {
                tm.model
                    .forward_backward_ce(&ids, &pos_ids, &mask, &labels, denom, scale)
                    .double_value(&[])
            }) / scale;
            progress.add_tokens(mb.input_tokens());
        }
        let step_loss = dist.sum_f64(&[local_loss])?[0];

        if !step_loss.is_finite() {
            engine.discard_gradients();
            if let Some(s) = state.loss_scaler.as_mut() {
                s.update(true);
            }
            state.skipped_steps += 1;
            state.nonfinite_in_a_row += 1;
            tracing::warn!(step, loss = step_loss, "non-finite loss: step skipped");
            if state.nonfinite_in_a_row >= cfg.max_nonfinite_steps {
                return Err(TrainError::NonFinite {
                    count: state.nonfinite_in_a_row,
                    step,
                });
            }
        } else {
            engine.reduce_gradients(&dist)?;
            // fp16: unscale, or skip the step on every rank when any rank's gradient overflowed.
            let finite = match &state.loss_scaler {
                Some(s) => engine.unscale(&dist, s.scale)?,
                None => true,
            };
            if let Some(s) = state.loss_scaler.as_mut() {
                s.update(!finite);
            }
            if finite {
                state.nonfinite_in_a_row = 0;
                last_grad_norm = engine.clip(&dist, cfg.max_grad_norm)?;
                engine.step(&dist, lr)?;
                losses.push(step_loss);
                window_losses.push(step_loss);
            } else {
                engine.discard_gradients();
                state.skipped_steps += 1;
                tracing::debug!(
                    step,
                    "fp16 gradient overflow: step skipped on every rank, loss scale lowered"
                );
            }
        }
        state.optimizer_step = engine.step;
        state.global_step += 1;
        state.trained_tokens += n_global;
        state.sampler.batches_consumed += window.len() as u64;
        state.epoch =
            pos.epoch as f64 + state.sampler.batches_consumed as f64 / batches.len() as f64;
        let gs = state.global_step;
        let last = gs == total_steps;

        if gs.is_multiple_of(cfg.logging_steps.max(1)) || last {
            let rate = progress.take_window_rate() * world as f64;
            let mean = window_losses.iter().sum::<f64>() / window_losses.len().max(1) as f64;
            window_losses.clear();
            if let Some(m) = metrics.as_mut() {
                // Rank 0's GPU (every rank holds the same share).
                let alloc = match device {
                    tch::Device::Cuda(i) => crate::gpu_memory::allocator_stats(i),
                    _ => None,
                };
                m.append(&MetricsRecord {
                    step: gs,
                    epoch: state.epoch,
                    loss: Some(mean),
                    lr: Some(lr),
                    grad_norm: Some(last_grad_norm),
                    tokens_per_second: Some(rate),
                    peak_memory_mib: peak_rss_mib(),
                    peak_gpu_allocated_mib: alloc.map(|a| a.peak_allocated_mib),
                    peak_gpu_reserved_mib: alloc.map(|a| a.peak_reserved_mib),
                    skipped_steps: Some(state.skipped_steps),
                    ..Default::default()
                })?;
            }
            progress.update(gs, mean, lr, rate);
        } else {
            progress.update(gs, step_loss, lr, progress.overall_rate() * world as f64);
        }
        if cfg.eval_steps > 0 && gs.is_multiple_of(cfg.eval_steps) && !last {
            eval_all(cfg, &data, &engine, &tm, &dist, &state, metrics.as_mut())?;
        }
        interrupted = dist.sum_f64(&[f64::from(u8::from(interrupt::requested()))])?[0] > 0.0;
        if (cfg.save_steps > 0 && gs.is_multiple_of(cfg.save_steps)) || last || interrupted {
            let sched = schedule.state_at(gs, lr);
            let args = SaveArgs {
                cfg,
                run: &run_dir,
                state: &state,
                scheduler: &sched,
                global_micro_batch: global_mb,
            };
            let dir = sharded_ckpt::save(&args, &engine, &tm, &dist)?;
            tracing::info!(dir = %dir.display(), "checkpoint saved");
        }
        if interrupted {
            tracing::warn!(step = gs, "interrupted: checkpoint saved, stopping");
            break;
        }
    }
    progress.finish();

    // --- the end: evaluation and final weights (gathered; rank 0 writes) ---
    let final_eval = if interrupted {
        None
    } else {
        let m = eval_all(cfg, &data, &engine, &tm, &dist, &state, metrics.as_mut())?;
        engine.gather_all(&dist)?;
        let written = if dist.is_main() {
            tm.save_weights(cfg, run_dir.root()).and_then(|()| {
                checkpoint::save_trainer_state(&run_dir, &state).map_err(TrainError::from)
            })
        } else {
            Ok(())
        };
        engine.release_all();
        written?;
        dist.barrier()?;
        m
    };
    if cfg.plot_loss && dist.is_main() {
        let records = crate::metrics::read_records(&run_dir.metrics())?;
        if let Err(e) = crate::plot::plot_losses(&records, run_dir.root()) {
            tracing::warn!("{e}");
        }
    }
    let tokens = dist.sum_f64(&[progress.tokens() as f64])?[0];
    Ok(RunSummary {
        output_dir: cfg.output_dir.clone(),
        global_step: state.global_step,
        total_steps,
        losses,
        initial_eval: None,
        final_eval,
        skipped_steps: state.skipped_steps,
        train_seconds: progress.elapsed_secs(),
        tokens_per_second: tokens / progress.elapsed_secs().max(1e-9),
        peak_memory_mib: peak_rss_mib(),
        interrupted,
        resumed_from: resume,
    })
}

/// Evaluates with the full model gathered (FULL_SHARD), every rank on its share of the validation batches
/// (batch j on rank j mod world, the single-process batches); the sums are added over ranks.
fn eval_all(
    cfg: &TrainConfig,
    data: &TrainData,
    engine: &Engine,
    tm: &TrainModel,
    dist: &Dist,
    state: &TrainerState,
    metrics: Option<&mut MetricsLog>,
) -> Result<Option<EvalMetrics>, TrainError> {
    if data.val.is_empty() {
        return Ok(None);
    }
    engine.gather_all(dist)?;
    let bs = cfg.per_device_eval_batch_size.max(1);
    let mine: Vec<&Sample> = data
        .val
        .chunks(bs)
        .skip(dist.rank())
        .step_by(dist.world())
        .flatten()
        .collect();
    let sums = eval_sums(&tm.model, &mine, bs, data.pad_id, tm.device);
    engine.release_all();
    let total = dist.sum_f64(&sums)?;
    let m = Some(EvalMetrics::from_sums([total[0], total[1], total[2]]));
    if let (Some(m), Some(log)) = (&m, metrics) {
        tracing::info!(step = state.global_step, eval_loss = m.loss, "eval");
        log.append(&MetricsRecord {
            step: state.global_step,
            epoch: state.epoch,
            eval_loss: Some(m.loss),
            eval_perplexity: Some(m.perplexity),
            eval_accuracy: Some(m.accuracy),
            ..Default::default()
        })?;
    }
    tm.model.set_training(true);
    Ok(m)
}
