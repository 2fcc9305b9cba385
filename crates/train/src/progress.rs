//! The progress bar of a training run (indicatif, on stderr): step/total, loss, learning rate, tokens/s
//! and ETA. Hidden automatically when stderr is not a terminal, so logs and CI output stay clean.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::time::Instant;

/// A training progress bar that also keeps the throughput counters.
#[derive(Debug)]
pub struct TrainProgress {
    bar: ProgressBar,
    started: Instant,
    tokens: u64,
    window_start: Instant,
    window_tokens: u64,
}

impl TrainProgress {
    /// A bar over `total` optimizer steps, starting at `done`.
    pub fn new(total: u64, done: u64) -> Self {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg} (ETA {eta})",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        bar.set_position(done);
        let now = Instant::now();
        TrainProgress {
            bar,
            started: now,
            tokens: 0,
            window_start: now,
            window_tokens: 0,
        }
    }

    /// Counts tokens processed (all non-padding input tokens, as throughput benchmarks count them).
    pub fn add_tokens(&mut self, n: u64) {
        self.tokens += n;
        self.window_tokens += n;
    }

    /// Tokens per second since the last call (the logging window); resets the window.
    pub fn take_window_rate(&mut self) -> f64 {
        let secs = self.window_start.elapsed().as_secs_f64().max(1e-9);
        let rate = self.window_tokens as f64 / secs;
        self.window_start = Instant::now();
        self.window_tokens = 0;
        rate
    }

    /// Tokens per second over the whole run so far.
    pub fn overall_rate(&self) -> f64 {
        self.tokens as f64 / self.started.elapsed().as_secs_f64().max(1e-9)
    }

    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    pub fn elapsed_secs(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Moves to `step` and shows the latest numbers.
    pub fn update(&self, step: u64, loss: f64, lr: f64, tokens_per_second: f64) {
        self.bar.set_position(step);
        self.bar.set_message(format!(
            "loss {loss:.4} lr {lr:.2e} {tokens_per_second:.0} tok/s"
        ));
    }

    /// Prints a line above the bar (evaluation results, checkpoints).
    pub fn println(&self, line: impl AsRef<str>) {
        self.bar.println(line);
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
