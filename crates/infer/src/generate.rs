//! Generation without a server: several prompts decoded together (left-padded batch, KV cache), and a
//! streaming iterator over one prompt's tokens and text deltas (used by `ferrotune chat` and `generate`).

use crate::batch::DecodeBatch;
use crate::codec::TextCodec;
use crate::error::Result;
use crate::model::CausalLm;
use crate::sequence::{FinishReason, GenerationParams, Sequence, Update};
use serde::Serialize;

/// One finished completion.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Completion {
    /// The generated text (stop string excluded).
    pub text: String,
    /// Generated ids (an ending EOS / stop id excluded).
    pub token_ids: Vec<u32>,
    /// Number of prompt ids.
    pub prompt_tokens: usize,
    /// Number of generated ids.
    pub completion_tokens: usize,
    /// Why it ended.
    pub finish_reason: FinishReason,
}

impl Completion {
    fn of(seq: &Sequence) -> Self {
        Completion {
            text: seq.text().to_string(),
            token_ids: seq.generated().to_vec(),
            prompt_tokens: seq.prompt().len(),
            completion_tokens: seq.generated().len(),
            finish_reason: seq.finished().unwrap_or(FinishReason::Length),
        }
    }
}

/// The id used for left padding (masked out, so any valid id works).
pub fn pad_id(codec: &dyn TextCodec) -> u32 {
    codec.eos_id().or(codec.bos_id()).unwrap_or(0)
}

/// Completes every prompt (token ids) in one batch; rows leave the batch as they finish.
pub fn generate_batch(
    model: &dyn CausalLm,
    codec: &dyn TextCodec,
    prompts: &[Vec<u32>],
    params: &GenerationParams,
) -> Result<Vec<Completion>> {
    generate_batch_adapters(model, codec, prompts, params, &[])
}

/// [`generate_batch`] with a LoRA adapter per prompt (`adapters[i]`; missing entries: base model).
pub fn generate_batch_adapters(
    model: &dyn CausalLm,
    codec: &dyn TextCodec,
    prompts: &[Vec<u32>],
    params: &GenerationParams,
    adapters: &[Option<String>],
) -> Result<Vec<Completion>> {
    params.validate()?;
    let mut seqs = prompts
        .iter()
        .map(|p| Sequence::new(p.clone(), params, codec.eos_id(), model.max_context()))
        .collect::<Result<Vec<_>>>()?;
    if seqs.is_empty() {
        return Ok(Vec::new());
    }
    let mut batch = DecodeBatch::new(model.n_layers(), pad_id(codec));
    let logits = batch.prefill(model, prompts, adapters)?;
    // Row r of the batch is sequence active[r].
    let mut active: Vec<usize> = (0..seqs.len()).collect();
    for (r, &s) in active.iter().enumerate() {
        seqs[s].accept(logits.row(r), codec)?;
    }
    loop {
        let keep: Vec<bool> = active
            .iter()
            .map(|&s| seqs[s].finished().is_none())
            .collect();
        batch.retain(&keep);
        active.retain(|&s| seqs[s].finished().is_none());
        if active.is_empty() {
            break;
        }
        let tokens: Vec<u32> = active.iter().map(|&s| seqs[s].last_token()).collect();
        let logits = batch.step(model, &tokens)?;
        for (r, &s) in active.iter().enumerate() {
            seqs[s].accept(logits.row(r), codec)?;
        }
    }
    Ok(seqs.iter().map(Completion::of).collect())
}

/// Streams one prompt's completion: each item is one sampled token with the text it made sendable.
/// Dropping the iterator stops generation (that is how the chat REPL's Ctrl-C works).
pub struct TokenStream<'a> {
    model: &'a dyn CausalLm,
    codec: &'a dyn TextCodec,
    batch: DecodeBatch,
    seq: Sequence,
    started: bool,
    adapter: Option<String>,
}

impl<'a> TokenStream<'a> {
    /// Prepares the stream (nothing runs until the first `next`).
    pub fn new(
        model: &'a dyn CausalLm,
        codec: &'a dyn TextCodec,
        prompt: Vec<u32>,
        params: &GenerationParams,
    ) -> Result<Self> {
        params.validate()?;
        let seq = Sequence::new(prompt, params, codec.eos_id(), model.max_context())?;
        Ok(TokenStream {
            model,
            codec,
            batch: DecodeBatch::new(model.n_layers(), pad_id(codec)),
            seq,
            started: false,
            adapter: None,
        })
    }

    /// Uses LoRA adapter `name` (`None`: the base model).
    pub fn with_adapter(mut self, name: Option<String>) -> Self {
        self.adapter = name;
        self
    }

    /// The completion so far (or final, once the iterator is exhausted).
    pub fn completion(&self) -> Completion {
        Completion::of(&self.seq)
    }

    fn advance(&mut self) -> Result<Update> {
        let logits = if self.started {
            self.batch.step(self.model, &[self.seq.last_token()])?
        } else {
            self.started = true;
            let prompt = self.seq.prompt().to_vec();
            self.batch
                .prefill(self.model, &[prompt], std::slice::from_ref(&self.adapter))?
        };
        self.seq.accept(logits.row(0), self.codec)
    }
}

impl Iterator for TokenStream<'_> {
    type Item = Result<Update>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.seq.finished().is_some() {
            return None;
        }
        let r = self.advance();
        if r.is_err() {
            self.seq.cancel();
        }
        Some(r)
    }
}
