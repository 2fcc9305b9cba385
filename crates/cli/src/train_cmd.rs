//! `ferrotune train CONFIG.toml [--set key=value ...] [--plot-loss]`: loads the train config (unknown keys
//! are errors with a did-you-mean), prepares the data, runs the single-device recipe and prints a summary.

use anyhow::Context;
use ferrotune_core::train_config::TrainConfig;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// The recipe (TOML; keys follow transformers / LLaMA-Factory, see configs/).
    config: PathBuf,
    /// Override a config key (`--set learning_rate=1e-4`), repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Write training_loss.png and eval_loss.png into output_dir (same as `plot_loss = true`).
    #[arg(long)]
    plot_loss: bool,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let mut overrides = args.set.clone();
    if args.plot_loss {
        overrides.push("plot_loss=true".into());
    }
    let cfg: TrainConfig = ferrotune_core::config::load_with_overrides(&args.config, &overrides)?;
    cfg.validate()
        .map_err(|m| anyhow::anyhow!("config {}: {m}", args.config.display()))?;
    let tok = ferrotune_train::data::load_tokenizer(&cfg)?;
    let data = ferrotune_train::data::load(&cfg, &tok).context("preparing the training data")?;
    let s = ferrotune_train::run(&cfg, data)
        .with_context(|| format!("training with {}", args.config.display()))?;
    let ev = |m: &Option<ferrotune_train::eval::EvalMetrics>| {
        m.map(|m| {
            serde_json::json!({"loss": m.loss, "perplexity": m.perplexity, "accuracy": m.accuracy})
        })
    };
    let summary = serde_json::json!({
        "output_dir": s.output_dir,
        "global_step": s.global_step,
        "total_steps": s.total_steps,
        "final_loss": s.losses.last(),
        "initial_eval": ev(&s.initial_eval),
        "final_eval": ev(&s.final_eval),
        "skipped_steps": s.skipped_steps,
        "train_seconds": s.train_seconds,
        "tokens_per_second": s.tokens_per_second,
        "peak_memory_mib": s.peak_memory_mib,
        "peak_gpu_memory_mib": peak_gpu(&s.output_dir, |r| r.peak_gpu_memory_mib),
        "peak_gpu_allocated_mib": peak_gpu(&s.output_dir, |r| r.peak_gpu_allocated_mib),
        "peak_gpu_reserved_mib": peak_gpu(&s.output_dir, |r| r.peak_gpu_reserved_mib),
        "interrupted": s.interrupted,
        "resumed_from": s.resumed_from,
    });
    if args.json {
        println!("{summary}");
        return Ok(());
    }
    println!(
        "{} {} / {} steps in {:.1}s ({:.0} tokens/s, peak RSS {:.0} MiB)",
        if s.interrupted {
            "interrupted after"
        } else {
            "trained"
        },
        s.global_step,
        s.total_steps,
        s.train_seconds,
        s.tokens_per_second,
        s.peak_memory_mib.unwrap_or(0.0)
    );
    if let Some(l) = s.losses.last() {
        println!("final train loss  {l:.4}");
    }
    if let Some(a) = peak_gpu(&s.output_dir, |r| r.peak_gpu_allocated_mib) {
        let r = peak_gpu(&s.output_dir, |r| r.peak_gpu_reserved_mib).unwrap_or(a);
        println!(
            "peak GPU memory   {a:.0} MiB allocated, {r:.0} MiB reserved (libtorch allocator)"
        );
    }
    if let Some(g) = peak_gpu(&s.output_dir, |r| r.peak_gpu_memory_mib) {
        println!("peak GPU memory   {g:.0} MiB device used above the start (sampled)");
    }
    if let Some(m) = s.initial_eval {
        println!(
            "eval before       loss {:.4}  ppl {:.3}  acc {:.4}",
            m.loss, m.perplexity, m.accuracy
        );
    }
    if let Some(m) = s.final_eval {
        println!(
            "eval after        loss {:.4}  ppl {:.3}  acc {:.4}",
            m.loss, m.perplexity, m.accuracy
        );
    }
    if s.skipped_steps > 0 {
        println!(
            "skipped steps     {} (non-finite loss or fp16 overflow)",
            s.skipped_steps
        );
    }
    println!("output            {}", s.output_dir.display());
    Ok(())
}

/// The last peak GPU memory figure `field` the run logged in metrics.jsonl (CUDA runs only).
fn peak_gpu(
    output_dir: &std::path::Path,
    field: fn(&ferrotune_train::metrics::MetricsRecord) -> Option<f64>,
) -> Option<f64> {
    let records =
        ferrotune_train::metrics::read_records(&ferrotune_core::RunDir::new(output_dir).metrics())
            .ok()?;
    records.iter().rev().find_map(field)
}

#[derive(Debug, clap::Args)]
pub struct AnswerArgs {
    /// The base model directory.
    model: PathBuf,
    /// A PEFT adapter directory (e.g. a training run's output_dir).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Alpaca-style JSON list of {instruction, input, output[, task]}: prompts and expected answers.
    #[arg(long)]
    questions: PathBuf,
    /// Chat template (default: the one recorded in the run's resolved_config.toml).
    #[arg(long)]
    template: Option<String>,
    #[arg(long, default_value_t = 48)]
    max_new_tokens: usize,
    /// Write one JSON line per question (instruction, expected, answer, correct).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the score as JSON.
    #[arg(long)]
    json: bool,
}

/// `ferrotune answer`: greedy answers (ferrotune-infer, KV-cached) to held-out questions and their
/// exact-match score (answer == expected output after trimming), overall and per `task`.
pub fn answer(args: AnswerArgs) -> anyhow::Result<()> {
    use ferrotune_infer::chat::ChatMessage;
    use std::collections::BTreeMap;
    let text = std::fs::read_to_string(&args.questions)
        .with_context(|| format!("reading {}", args.questions.display()))?;
    let items: Vec<serde_json::Value> = serde_json::from_str(&text)
        .with_context(|| format!("parsing {}", args.questions.display()))?;
    let opts = ferrotune_infer::load::LoadOptions {
        adapters: args
            .adapter
            .iter()
            .map(|p| ("answer".to_string(), p.clone()))
            .collect(),
        template: args.template.clone(),
        device: Some(ferrotune_core::DeviceSpec::Cpu),
        ..Default::default()
    };
    let loaded = ferrotune_infer::load::load(&args.model, &opts)?;
    let field = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or("").to_string();
    let mut prompts = Vec::new();
    for it in &items {
        let (ins, inp) = (field(it, "instruction"), field(it, "input"));
        let content = if inp.is_empty() {
            ins
        } else {
            format!("{ins}\n{inp}")
        };
        let msgs = [ChatMessage::new("user", content)];
        prompts.push(loaded.chat.prompt_ids(loaded.tokenizer.as_ref(), &msgs)?);
    }
    let params = ferrotune_infer::GenerationParams {
        max_new_tokens: args.max_new_tokens,
        stop: loaded.chat.stop_strings(),
        stop_token_ids: loaded.stop_ids.clone(),
        ..Default::default()
    };
    let adapters: Vec<Option<String>> = items
        .iter()
        .map(|_| args.adapter.as_ref().map(|_| "answer".to_string()))
        .collect();
    let done = ferrotune_infer::generate::generate_batch_adapters(
        &loaded.model,
        loaded.tokenizer.as_ref(),
        &prompts,
        &params,
        &adapters,
    )?;
    let mut per_task: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut lines = String::new();
    let mut correct = 0;
    for (it, c) in items.iter().zip(&done) {
        let expected = field(it, "output");
        let ok = c.text.trim() == expected.trim();
        correct += usize::from(ok);
        let task = it["task"].as_str().unwrap_or("all").to_string();
        let e = per_task.entry(task).or_default();
        e.0 += usize::from(ok);
        e.1 += 1;
        lines.push_str(&serde_json::to_string(&serde_json::json!({
            "instruction": field(it, "instruction"), "expected": expected, "answer": c.text.trim(), "correct": ok,
        }))?);
        lines.push('\n');
    }
    if let Some(out) = &args.out {
        ferrotune_core::write_atomic(out, lines.as_bytes())?;
    }
    let total = items.len().max(1);
    let score = serde_json::json!({
        "exact_match": correct as f64 / total as f64,
        "correct": correct,
        "total": items.len(),
        "per_task": per_task.iter().map(|(k, (c, n))| (k.clone(), *c as f64 / *n as f64)).collect::<BTreeMap<_, _>>(),
    });
    if args.json {
        println!("{score}");
    } else {
        println!(
            "exact match {correct}/{} = {:.3}",
            items.len(),
            correct as f64 / total as f64
        );
        for (k, (c, n)) in &per_task {
            println!("  {k:12} {c}/{n}");
        }
    }
    Ok(())
}
