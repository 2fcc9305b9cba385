//! Continuous batching: one engine thread owns the model and runs a decode loop; requests arrive on a
//! channel and join the running batch between steps (prefilled together, merged into the shared KV cache),
//! finished rows leave it, and a row whose client hung up (its event receiver dropped) is cancelled before
//! the next step. Each row names its own LoRA adapter (or none), so requests for different adapters share
//! one batch.

use crate::batch::DecodeBatch;
use crate::codec::TextCodec;
use crate::error::{InferError, Result};
use crate::generate::pad_id;
use crate::model::CausalLm;
use crate::sequence::{FinishReason, GenerationParams, Sequence};
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// Engine limits.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Most rows decoded together.
    pub max_batch: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig { max_batch: 32 }
    }
}

/// One generation request.
#[derive(Debug, Clone)]
pub struct GenRequest {
    /// Prompt ids (BOS included when wanted).
    pub prompt_ids: Vec<u32>,
    /// Sampling and stopping.
    pub params: GenerationParams,
    /// LoRA adapter to activate (`None`: base model).
    pub adapter: Option<String>,
}

/// What the engine reports about a request, in order: deltas, then exactly one `Done` or `Error`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// New text (never empty).
    Delta(String),
    /// The request completed.
    Done {
        /// Why it ended.
        finish_reason: FinishReason,
        /// Prompt ids.
        prompt_tokens: usize,
        /// Generated ids.
        completion_tokens: usize,
    },
    /// It failed (message for the client).
    Error(String),
}

/// Decrements the in-flight count when the request is gone, however it ends.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Job {
    req: GenRequest,
    events: UnboundedSender<Event>,
    _guard: InFlight,
}

/// A cloneable handle to the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Job>,
    in_flight: Arc<AtomicUsize>,
    max_context: usize,
    adapters: Vec<String>,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle")
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl EngineHandle {
    /// Starts the engine thread; it stops when every handle is dropped.
    pub fn spawn(model: Box<dyn CausalLm>, codec: Arc<dyn TextCodec>, cfg: EngineConfig) -> Self {
        let (tx, rx) = mpsc::channel();
        let handle = EngineHandle {
            tx,
            in_flight: Arc::new(AtomicUsize::new(0)),
            max_context: model.max_context(),
            adapters: model.adapters(),
        };
        std::thread::Builder::new()
            .name("ferrotune-engine".into())
            .spawn(move || Engine::new(model, codec, cfg).run(rx))
            .expect("spawning the engine thread");
        handle
    }

    /// Requests queued or being decoded right now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// The model's context length.
    pub fn max_context(&self) -> usize {
        self.max_context
    }

    /// Adapter names the model can switch to.
    pub fn adapters(&self) -> &[String] {
        &self.adapters
    }

    /// Checks and queues a request. Dropping the returned receiver cancels it.
    pub fn submit(&self, req: GenRequest) -> Result<UnboundedReceiver<Event>> {
        req.params.validate()?;
        if req.prompt_ids.len() >= self.max_context {
            return Err(InferError::PromptTooLong {
                prompt_tokens: req.prompt_ids.len(),
                context: self.max_context,
            });
        }
        if let Some(a) = &req.adapter {
            if !self.adapters.contains(a) {
                return Err(InferError::UnknownModel(a.clone()));
            }
        }
        let (events, rx) = unbounded_channel();
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let job = Job {
            req,
            events,
            _guard: InFlight(self.in_flight.clone()),
        };
        self.tx.send(job).map_err(|_| InferError::EngineStopped)?;
        Ok(rx)
    }
}

struct Running {
    job: Job,
    seq: Sequence,
}

struct Engine {
    model: Box<dyn CausalLm>,
    codec: Arc<dyn TextCodec>,
    cfg: EngineConfig,
    batch: DecodeBatch,
    running: Vec<Running>,
    waiting: VecDeque<Job>,
}

impl Engine {
    fn new(model: Box<dyn CausalLm>, codec: Arc<dyn TextCodec>, cfg: EngineConfig) -> Self {
        let batch = DecodeBatch::new(model.n_layers(), pad_id(codec.as_ref()));
        Engine {
            model,
            codec,
            cfg,
            batch,
            running: Vec::new(),
            waiting: VecDeque::new(),
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Job>) {
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                match rx.recv() {
                    Ok(j) => self.waiting.push_back(j),
                    Err(_) => return,
                }
            }
            while let Ok(j) = rx.try_recv() {
                self.waiting.push_back(j);
            }
            let r = catch_unwind(AssertUnwindSafe(|| self.tick()));
            let err = match r {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => e.to_string(),
                Err(_) => "internal error in the generation engine".to_string(),
            };
            tracing::error!("generation step failed: {err}");
            for r in self.running.drain(..) {
                let _ = r.job.events.send(Event::Error(err.clone()));
            }
            self.batch = DecodeBatch::new(self.model.n_layers(), pad_id(self.codec.as_ref()));
        }
    }

    /// Admits waiting requests, then runs one decode step.
    fn tick(&mut self) -> Result<()> {
        self.waiting.retain(|j| !j.events.is_closed());
        self.drop_finished();
        self.admit()?;
        self.drop_finished();
        if self.running.is_empty() {
            return Ok(());
        }
        let tokens: Vec<u32> = self.running.iter().map(|r| r.seq.last_token()).collect();
        let logits = self.batch.step(self.model.as_ref(), &tokens)?;
        for (i, r) in self.running.iter_mut().enumerate() {
            let u = r.seq.accept(logits.row(i), self.codec.as_ref())?;
            report(r, &u.delta, u.finished);
        }
        Ok(())
    }

    /// Removes finished rows and rows whose client hung up.
    fn drop_finished(&mut self) {
        for r in &mut self.running {
            if r.job.events.is_closed() {
                r.seq.cancel();
            }
        }
        let keep: Vec<bool> = self
            .running
            .iter()
            .map(|r| r.seq.finished().is_none())
            .collect();
        self.batch.retain(&keep);
        self.running.retain(|r| r.seq.finished().is_none());
    }

    fn admit(&mut self) -> Result<()> {
        let mut new = Vec::new();
        while self.running.len() + new.len() < self.cfg.max_batch {
            let Some(job) = self.waiting.pop_front() else {
                break;
            };
            let seq = Sequence::new(
                job.req.prompt_ids.clone(),
                &job.req.params,
                self.codec.eos_id(),
                self.model.max_context(),
            );
            match seq {
                Ok(seq) => new.push(Running { job, seq }),
                Err(e) => {
                    let _ = job.events.send(Event::Error(e.to_string()));
                }
            }
        }
        if new.is_empty() {
            return Ok(());
        }
        let prompts: Vec<Vec<u32>> = new.iter().map(|r| r.seq.prompt().to_vec()).collect();
        let adapters: Vec<Option<String>> = new.iter().map(|r| r.job.req.adapter.clone()).collect();
        let logits = match self.batch.prefill(self.model.as_ref(), &prompts, &adapters) {
            Ok(l) => l,
            Err(e) => {
                for r in new {
                    let _ = r.job.events.send(Event::Error(e.to_string()));
                }
                return Ok(());
            }
        };
        for (i, mut r) in new.into_iter().enumerate() {
            let u = r.seq.accept(logits.row(i), self.codec.as_ref())?;
            report(&mut r, &u.delta, u.finished);
            self.running.push(r);
        }
        tracing::debug!(
            rows = self.running.len(),
            cache = self.batch.cache_len(),
            "batch"
        );
        Ok(())
    }
}

/// Sends a row's delta and, when it ended, its `Done`; a closed receiver cancels the row.
fn report(r: &mut Running, delta: &str, finished: Option<FinishReason>) {
    let mut ok = true;
    if !delta.is_empty() {
        ok = r.job.events.send(Event::Delta(delta.to_string())).is_ok();
    }
    if let Some(why) = finished {
        ok &= r
            .job
            .events
            .send(Event::Done {
                finish_reason: why,
                prompt_tokens: r.seq.prompt().len(),
                completion_tokens: r.seq.generated().len(),
            })
            .is_ok();
    }
    if !ok {
        r.seq.cancel();
    }
}
