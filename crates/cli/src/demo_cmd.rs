//! `ferrotune demo-report`: the before/after table that ends `just finetune`. It reads the SFT run's
//! summary (`ferrotune train --json`: eval loss and token accuracy on the held-out split before and after
//! training) and the answers `ferrotune answer --out` wrote for the held-out prompts with the base model
//! and with the adapter, scores them again (exact match, overall, per task and per language, joined to the
//! questions file by position), and prints the table plus a few example answers; `--json` for machines.

use anyhow::{bail, Context};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct DemoReportArgs {
    /// The SFT run's summary: the stdout of `ferrotune train CONFIG --json`.
    #[arg(long)]
    summary: PathBuf,
    /// The held-out prompts (alpaca JSON list with `output` and optional `task` / `lang`).
    #[arg(long)]
    questions: PathBuf,
    /// `ferrotune answer --out` of the base model.
    #[arg(long)]
    before: PathBuf,
    /// `ferrotune answer --out` of base + adapter.
    #[arg(long)]
    after: PathBuf,
    /// How many example answers to show (spread over the tasks).
    #[arg(long, default_value_t = 8)]
    examples: usize,
    /// Wall time of the whole demo, printed with the table.
    #[arg(long)]
    seconds: Option<u64>,
    /// Print the report as one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

/// One held-out prompt with its base-model and adapter answers.
struct Row {
    instruction: String,
    expected: String,
    task: String,
    lang: String,
    before: String,
    after: String,
}

impl Row {
    fn hit(answer: &str, expected: &str) -> bool {
        answer.trim() == expected.trim()
    }
}

/// Correct / total per group key, in key order.
#[derive(Default)]
struct Tally(BTreeMap<String, [usize; 3]>);

impl Tally {
    fn add(&mut self, key: &str, row: &Row) {
        let e = self.0.entry(key.to_string()).or_default();
        e[0] += usize::from(Row::hit(&row.before, &row.expected));
        e[1] += usize::from(Row::hit(&row.after, &row.expected));
        e[2] += 1;
    }
}

fn read_json(path: &Path) -> anyhow::Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn read_answers(path: &Path) -> anyhow::Result<Vec<serde_json::Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: bad JSON", path.display(), i + 1))
        })
        .collect()
}

fn text(v: &serde_json::Value, key: &str) -> String {
    v[key].as_str().unwrap_or("").to_string()
}

/// Joins questions and both answer files by position; the instructions must agree.
fn rows(args: &DemoReportArgs) -> anyhow::Result<Vec<Row>> {
    let questions = read_json(&args.questions)?;
    let questions = questions
        .as_array()
        .with_context(|| format!("{}: expected a JSON list", args.questions.display()))?;
    let before = read_answers(&args.before)?;
    let after = read_answers(&args.after)?;
    for (path, list) in [(&args.before, &before), (&args.after, &after)] {
        if list.len() != questions.len() {
            bail!(
                "{}: {} answers for {} questions in {}",
                path.display(),
                list.len(),
                questions.len(),
                args.questions.display()
            );
        }
    }
    let mut out = Vec::with_capacity(questions.len());
    for (i, ((q, b), a)) in questions.iter().zip(&before).zip(&after).enumerate() {
        let instruction = text(q, "instruction");
        for (path, ans) in [(&args.before, b), (&args.after, a)] {
            if text(ans, "instruction") != instruction {
                bail!(
                    "{}: line {} answers {:?}, but question {} of {} is {:?}",
                    path.display(),
                    i + 1,
                    text(ans, "instruction"),
                    i + 1,
                    args.questions.display(),
                    instruction
                );
            }
        }
        let or_all = |k: &str| Some(text(q, k)).filter(|s| !s.is_empty());
        out.push(Row {
            instruction,
            expected: text(q, "output"),
            task: or_all("task").unwrap_or_else(|| "all".into()),
            lang: or_all("lang").unwrap_or_else(|| "-".into()),
            before: text(b, "answer"),
            after: text(a, "answer"),
        });
    }
    Ok(out)
}

/// The eval metric `key` (loss / accuracy / perplexity) of `which` (initial_eval / final_eval).
fn eval_metric(summary: &serde_json::Value, which: &str, key: &str) -> anyhow::Result<f64> {
    summary[which][key]
        .as_f64()
        .with_context(|| format!("the SFT summary has no {which}.{key} (was eval_on_start set?)"))
}

/// Examples spread over the tasks: the first rows of each task in turn, the adapter's hits first.
fn pick_examples(rows: &[Row], n: usize) -> Vec<&Row> {
    let mut by_task: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
    for r in rows {
        by_task.entry(&r.task).or_default().push(r);
    }
    for list in by_task.values_mut() {
        list.sort_by_key(|r| !Row::hit(&r.after, &r.expected));
    }
    let mut picked = Vec::new();
    for round in 0.. {
        let before = picked.len();
        for list in by_task.values() {
            if picked.len() < n {
                if let Some(r) = list.get(round) {
                    picked.push(*r);
                }
            }
        }
        if picked.len() == before || picked.len() >= n {
            break;
        }
    }
    picked
}

pub fn run(args: DemoReportArgs) -> anyhow::Result<()> {
    let summary = read_json(&args.summary)?;
    let rows = rows(&args)?;
    let (mut tasks, mut langs, mut all) = (Tally::default(), Tally::default(), Tally::default());
    for r in &rows {
        tasks.add(&r.task, r);
        langs.add(&r.lang, r);
        all.add("all", r);
    }
    let [hit_b, hit_a, total] = all.0.get("all").copied().unwrap_or_default();
    let loss = [
        eval_metric(&summary, "initial_eval", "loss")?,
        eval_metric(&summary, "final_eval", "loss")?,
    ];
    let acc = [
        eval_metric(&summary, "initial_eval", "accuracy")?,
        eval_metric(&summary, "final_eval", "accuracy")?,
    ];
    if args.json {
        let group = |t: &Tally| {
            t.0.iter()
                .map(|(k, [b, a, n])| {
                    (
                        k.clone(),
                        serde_json::json!({"before": b, "after": a, "total": n}),
                    )
                })
                .collect::<serde_json::Map<_, _>>()
        };
        let report = serde_json::json!({
            "eval_loss": {"before": loss[0], "after": loss[1]},
            "eval_token_accuracy": {"before": acc[0], "after": acc[1]},
            "exact_match": {"before": hit_b, "after": hit_a, "total": total},
            "per_task": group(&tasks),
            "per_lang": group(&langs),
            "seconds": args.seconds,
        });
        println!("{report}");
        return Ok(());
    }
    let pct = |c: usize, n: usize| format!("{c}/{n} ({:.0}%)", 100.0 * c as f64 / n.max(1) as f64);
    println!();
    println!("ferrotune demo: LoRA SFT of a tiny Llama pre-trained from scratch on the project's own EN+ZH data");
    println!("{:30}{:>16}{:>16}", "held-out set", "before", "after");
    println!("{:30}{:>16.4}{:>16.4}", "eval loss", loss[0], loss[1]);
    println!(
        "{:30}{:>16.3}{:>16.3}",
        "eval token accuracy", acc[0], acc[1]
    );
    println!(
        "{:30}{:>16}{:>16}",
        "exact match (all prompts)",
        pct(hit_b, total),
        pct(hit_a, total)
    );
    for (title, tally) in [("task", &tasks), ("language", &langs)] {
        for (k, [b, a, n]) in &tally.0 {
            let label = format!("  {title} {k}");
            println!("{label:30}{:>16}{:>16}", pct(*b, *n), pct(*a, *n));
        }
    }
    println!();
    for r in pick_examples(&rows, args.examples) {
        let mark = if Row::hit(&r.after, &r.expected) {
            "ok"
        } else {
            "wrong"
        };
        println!("Q [{}]: {}", r.task, r.instruction.replace('\n', " / "));
        println!("   before: {:?}", r.before);
        println!(
            "   after:  {:?}   {mark} (expected {:?})",
            r.after, r.expected
        );
    }
    if let Some(s) = args.seconds {
        println!("\ntotal time {}m{:02}s", s / 60, s % 60);
    }
    Ok(())
}
