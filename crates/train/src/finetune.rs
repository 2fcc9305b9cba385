//! The single-device fine-tuning recipe (stages `pt` and `sft`; `lora`, `full`, `freeze`), top to bottom:
//!
//! 1. resolve the run directory and the checkpoint to resume from, write `resolved_config.toml`;
//! 2. load the model and choose its trainable tensors ([`crate::model_setup`]); build AdamW over them;
//! 3. for every optimizer step: take the next `gradient_accumulation_steps` micro-batches of the epoch's
//!    deterministic order, reseed torch with `seed + step`, run forward + backward of
//!    `Σ CE / N_window` (N_window = trained tokens of the whole window, so every token weighs the same
//!    however the tokens fall into micro-batches), skip the step when the loss is NaN/inf (stop after
//!    `max_nonfinite_steps` in a row), unscale (fp16), clip, step AdamW with the scheduled rate;
//! 4. log / evaluate / checkpoint on their step intervals, and on Ctrl-C; save the final weights.
//!
//! Every piece of state the loop carries across steps is in the checkpoint, so a resumed run continues
//! bit for bit (on CPU, fixed threads).

use crate::batches::{epoch_batches, HostBatch, Sample};
use crate::checkpoint::{self, SamplerPosition, TrainerState};
use crate::error::TrainError;
use crate::eval::{evaluate, EvalMetrics};
use crate::metrics::{peak_rss_mib, MetricsLog, MetricsRecord};
use crate::model_setup::{self, TrainModel};
use crate::optim::{clip_grad_norm, AdamW, AdamWConfig};
use crate::progress::TrainProgress;
use crate::scheduler::LrSchedule;
use crate::{interrupt, plot};
use ferrotune_core::train_config::{FinetuningType, Stage, TrainConfig};
use ferrotune_core::RunDir;
use std::path::PathBuf;

/// The tokenized data of a run.
#[derive(Debug, Clone, Default)]
pub struct TrainData {
    pub train: Vec<Sample>,
    pub val: Vec<Sample>,
    pub pad_id: i64,
    /// The tokenizer's vocabulary size (for `resize_vocab`).
    pub tokenizer_vocab: Option<usize>,
}

/// What a finished (or interrupted) run reports.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub output_dir: PathBuf,
    pub global_step: u64,
    pub total_steps: u64,
    /// Loss of every optimizer step run in this process (skipped steps excluded), in order.
    pub losses: Vec<f64>,
    /// Validation metrics before the first step (`eval_on_start`) and after the last.
    pub initial_eval: Option<EvalMetrics>,
    pub final_eval: Option<EvalMetrics>,
    pub skipped_steps: u64,
    pub train_seconds: f64,
    pub tokens_per_second: f64,
    pub peak_memory_mib: Option<f64>,
    pub interrupted: bool,
    pub resumed_from: Option<PathBuf>,
}

/// Runs the recipe described by `cfg` on `data`.
///
/// When the environment describes a multi-process job (`WORLD_SIZE > 1`, from `ferrotune launch`,
/// torchrun or Slurm), or the run resumes a SHARDED_STATE_DICT checkpoint, the distributed recipe
/// [`crate::dist_finetune`] runs instead.
pub fn run(cfg: &TrainConfig, data: TrainData) -> Result<RunSummary, TrainError> {
    let env = ferrotune_dist::RankEnv::from_env().map_err(|e| TrainError::Config(e.to_string()))?;
    if env.world_size > 1 || crate::sharded_ckpt::resume_is_sharded(cfg) {
        return crate::dist_finetune::run(cfg, data, env);
    }
    cfg.validate().map_err(TrainError::Config)?;
    if let Some(n) = cfg.num_threads {
        tch::set_num_threads(n as i32);
    }
    if data.train.is_empty() {
        return Err(TrainError::Data("the training split is empty".into()));
    }
    let device = ferrotune_model::resolve_device(cfg.device);
    // Peak GPU memory (CUDA only): sampled after every micro-batch, see gpu_memory.rs.
    let mut gpu_mem = crate::gpu_memory::GpuMemory::new(device);
    let run_dir = RunDir::new(&cfg.output_dir);
    let resume = prepare_output_dir(cfg, &run_dir)?;
    let text = ferrotune_core::config::to_toml(cfg)
        .map_err(|e| TrainError::Config(format!("serializing the resolved config: {e}")))?;
    ferrotune_core::write_atomic(run_dir.resolved_config(), text.as_bytes())?;

    // --- model, optimizer, schedule ---
    let mut tm = model_setup::setup(cfg, device, data.tokenizer_vocab, resume.as_deref())?;
    let (n_trainable, n_total) = tm.parameter_counts();
    tracing::info!(
        trainable = n_trainable,
        total = n_total,
        percent = format!("{:.4}", 100.0 * n_trainable as f64 / n_total.max(1) as f64),
        "parameters"
    );
    let adamw = AdamWConfig {
        beta1: cfg.adam_beta1,
        beta2: cfg.adam_beta2,
        eps: cfg.adam_epsilon,
        weight_decay: cfg.weight_decay,
    };
    // bf16 mixed precision for full / freeze: fp32 master weights in AdamW (taken now, from the fp32
    // weights), the model computing in bf16. (LoRA's bf16 is a bf16 frozen base with fp32 adapters.)
    let bf16_master = cfg.bf16 && cfg.finetuning_type != FinetuningType::Lora;
    let mut opt = if bf16_master {
        let opt = AdamW::with_fp32_master(tm.trainable(), adamw);
        tm._vs.set_kind(tch::Kind::BFloat16);
        tracing::info!(
            "bf16 mixed precision: bf16 weights for compute, fp32 master weights in AdamW"
        );
        opt
    } else {
        AdamW::new(tm.trainable(), adamw)
    };
    let bs = cfg.per_device_train_batch_size;
    let ga = cfg.gradient_accumulation_steps;
    let schedule = LrSchedule::for_run(cfg, data.train.len(), bs);
    let (total_steps, steps_per_epoch) = (schedule.total_steps, schedule.steps_per_epoch);

    // --- state (fresh or resumed) ---
    let mut state = TrainerState::fresh(cfg, total_steps);
    if let Some(dir) = &resume {
        let saved = checkpoint::load_state(dir)?;
        let opt_file = dir.join(checkpoint::OPTIMIZER);
        if opt_file.is_file() {
            opt.load(&opt_file, saved.optimizer_step)?;
        } else {
            tracing::warn!(checkpoint = %dir.display(), "no optimizer state (save_optimizer = false): AdamW restarts, the resumed run is not exact");
        }
        state = TrainerState {
            max_steps: total_steps,
            ..saved
        };
        tracing::info!(checkpoint = %dir.display(), step = state.global_step, "resuming");
    }
    let mut metrics = MetricsLog::open(
        &run_dir.metrics(),
        resume.as_ref().map(|_| state.global_step),
    )?;

    // --- the loop ---
    interrupt::install();
    let shuffle = cfg.stage == Stage::Sft || !cfg.packing;
    let mut progress = TrainProgress::new(total_steps, state.global_step);
    let mut losses = Vec::new();
    let mut window_losses = Vec::new();
    let mut last_grad_norm = 0.0;
    let mut interrupted = false;
    let mut epoch_cache: Option<(u64, Vec<HostBatch>)> = None;
    let mut initial_eval = None;
    if cfg.eval_on_start && resume.is_none() {
        initial_eval = evaluate(
            &tm.model,
            &data.val,
            cfg.per_device_eval_batch_size,
            data.pad_id,
            tm.device,
        );
        if let Some(m) = &initial_eval {
            log_eval(&mut metrics, &state, m)?;
        }
    }
    tm.model.set_training(true);
    tracing::info!(
        steps = total_steps,
        samples = data.train.len(),
        steps_per_epoch,
        "training"
    );
    while state.global_step < total_steps {
        let pos = state.sampler;
        if epoch_cache.as_ref().map(|c| c.0) != Some(pos.epoch) {
            let batches = epoch_batches(&data.train, bs, cfg.seed, pos.epoch, shuffle, data.pad_id);
            epoch_cache = Some((pos.epoch, batches));
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

        // Forward + backward over the window, every micro-batch's summed CE divided by the window's tokens.
        let n_window: u64 = window.iter().map(HostBatch::trained_tokens).sum();
        let scale = state.loss_scaler.as_ref().map_or(1.0, |s| s.scale);
        let mut step_loss = 0.0;
        for mb in window {
            let (ids, pos_ids, mask, labels) = mb.to_tensors(tm.device);
            let denom = n_window.max(1) as f64;
            // The fused chunked loss head (same loss and gradients as CE on full logits).
            let loss = tm
                .model
                .forward_backward_ce(&ids, &pos_ids, &mask, &labels, denom, scale);
            step_loss += loss.double_value(&[]) / scale;
            progress.add_tokens(mb.input_tokens());
            if let Some(g) = gpu_mem.as_mut() {
                g.sample();
            }
        }

        // NaN/inf: skip the update, count, give up after too many in a row.
        let finite_grads = match &state.loss_scaler {
            Some(s) => s.unscale(opt.params()),
            None => true,
        };
        if let Some(s) = state.loss_scaler.as_mut() {
            s.update(!finite_grads || !step_loss.is_finite());
        }
        if !step_loss.is_finite() || !finite_grads {
            opt.zero_grad();
            state.skipped_steps += 1;
            if step_loss.is_finite() {
                tracing::debug!(
                    step,
                    "fp16 gradient overflow: step skipped, loss scale lowered"
                );
            } else {
                state.nonfinite_in_a_row += 1;
                tracing::warn!(step, loss = step_loss, "non-finite loss: step skipped");
                if state.nonfinite_in_a_row >= cfg.max_nonfinite_steps {
                    return Err(TrainError::NonFinite {
                        count: state.nonfinite_in_a_row,
                        step,
                    });
                }
            }
        } else {
            state.nonfinite_in_a_row = 0;
            last_grad_norm = clip_grad_norm(opt.params(), cfg.max_grad_norm);
            opt.step(lr);
            opt.zero_grad();
            losses.push(step_loss);
            window_losses.push(step_loss);
        }
        state.optimizer_step = opt.step_count();
        state.global_step += 1;
        state.trained_tokens += n_window;
        state.sampler.batches_consumed += window.len() as u64;
        state.epoch =
            pos.epoch as f64 + state.sampler.batches_consumed as f64 / batches.len() as f64;
        let gs = state.global_step;
        let last = gs == total_steps;

        if gs.is_multiple_of(cfg.logging_steps.max(1)) || last {
            let rate = progress.take_window_rate();
            let mean = window_losses.iter().sum::<f64>() / window_losses.len().max(1) as f64;
            window_losses.clear();
            let alloc = gpu_mem.as_ref().and_then(|g| g.allocator());
            metrics.append(&MetricsRecord {
                step: gs,
                epoch: state.epoch,
                loss: Some(mean),
                lr: Some(lr),
                grad_norm: Some(last_grad_norm),
                tokens_per_second: Some(rate),
                peak_memory_mib: peak_rss_mib(),
                peak_gpu_memory_mib: gpu_mem.as_mut().map(|g| {
                    g.sample();
                    g.peak_mib()
                }),
                peak_gpu_allocated_mib: alloc.map(|a| a.peak_allocated_mib),
                peak_gpu_reserved_mib: alloc.map(|a| a.peak_reserved_mib),
                skipped_steps: Some(state.skipped_steps),
                ..Default::default()
            })?;
            tracing::debug!(
                step = gs,
                loss = mean,
                lr,
                grad_norm = last_grad_norm,
                "log"
            );
            progress.update(gs, mean, lr, rate);
        } else {
            progress.update(gs, step_loss, lr, progress.overall_rate());
        }
        if cfg.eval_steps > 0 && gs.is_multiple_of(cfg.eval_steps) && !last {
            if let Some(m) = evaluate(
                &tm.model,
                &data.val,
                cfg.per_device_eval_batch_size,
                data.pad_id,
                tm.device,
            ) {
                log_eval(&mut metrics, &state, &m)?;
            }
        }
        interrupted = interrupt::requested();
        if (cfg.save_steps > 0 && gs.is_multiple_of(cfg.save_steps)) || last || interrupted {
            save_checkpoint(cfg, &run_dir, &tm, &opt, &state, &schedule, lr)?;
        }
        if interrupted {
            tracing::warn!(step = gs, "interrupted: checkpoint saved, stopping");
            break;
        }
    }
    progress.finish();

    // --- the end: evaluation, final weights, plots ---
    let final_eval = if interrupted {
        None
    } else {
        let m = evaluate(
            &tm.model,
            &data.val,
            cfg.per_device_eval_batch_size,
            data.pad_id,
            tm.device,
        );
        if let Some(m) = &m {
            log_eval(&mut metrics, &state, m)?;
        }
        tm.save_weights(cfg, run_dir.root())?;
        checkpoint::save_trainer_state(&run_dir, &state)?;
        m
    };
    if cfg.plot_loss {
        let records = crate::metrics::read_records(metrics.path())?;
        match plot::plot_losses(&records, run_dir.root()) {
            Ok(files) => tracing::info!(files = files.len(), "loss plots written"),
            Err(e) => tracing::warn!("{e}"),
        }
    }
    Ok(RunSummary {
        output_dir: cfg.output_dir.clone(),
        global_step: state.global_step,
        total_steps,
        losses,
        initial_eval,
        final_eval,
        skipped_steps: state.skipped_steps,
        train_seconds: progress.elapsed_secs(),
        tokens_per_second: progress.overall_rate(),
        peak_memory_mib: peak_rss_mib(),
        interrupted,
        resumed_from: resume,
    })
}

/// Checks the output directory against `overwrite_output_dir` / `resume_from_checkpoint`; returns the
/// checkpoint to resume from.
pub(crate) fn prepare_output_dir(
    cfg: &TrainConfig,
    run: &RunDir,
) -> Result<Option<PathBuf>, TrainError> {
    std::fs::create_dir_all(run.root()).map_err(|e| TrainError::io(run.root(), e))?;
    checkpoint::remove_stale_temporaries(run);
    let resume = checkpoint::resolve_resume(run, cfg.resume_from_checkpoint.as_deref())?;
    if resume.is_none() {
        let has_output = !run.checkpoints().is_empty() || run.metrics().exists();
        if has_output && !cfg.overwrite_output_dir {
            return Err(TrainError::Config(format!(
                "output_dir {} already holds a run; set `overwrite_output_dir = true` or `resume_from_checkpoint = \"auto\"`",
                run.root().display()
            )));
        }
        for (_, ck) in run.checkpoints() {
            std::fs::remove_dir_all(&ck).map_err(|e| TrainError::io(&ck, e))?;
        }
    }
    Ok(resume)
}

fn save_checkpoint(
    cfg: &TrainConfig,
    run: &RunDir,
    tm: &TrainModel,
    opt: &AdamW,
    state: &TrainerState,
    schedule: &LrSchedule,
    lr: f64,
) -> Result<(), TrainError> {
    let sched = schedule.state_at(state.global_step, lr);
    let dir = checkpoint::save(
        run,
        state,
        &sched,
        cfg.save_optimizer.then_some(opt),
        |d| tm.save_weights(cfg, d).map_err(|e| e.to_string()),
        cfg.save_total_limit,
    )?;
    tracing::info!(dir = %dir.display(), "checkpoint saved");
    Ok(())
}

fn log_eval(
    metrics: &mut MetricsLog,
    state: &TrainerState,
    m: &EvalMetrics,
) -> Result<(), TrainError> {
    tracing::info!(
        step = state.global_step,
        eval_loss = format!("{:.4}", m.loss),
        perplexity = format!("{:.3}", m.perplexity),
        accuracy = format!("{:.4}", m.accuracy),
        "eval"
    );
    metrics.append(&MetricsRecord {
        step: state.global_step,
        epoch: state.epoch,
        eval_loss: Some(m.loss),
        eval_perplexity: Some(m.perplexity),
        eval_accuracy: Some(m.accuracy),
        ..Default::default()
    })?;
    Ok(())
}
