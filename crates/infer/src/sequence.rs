//! The text side of one generated sequence: sampling its next token, EOS / stop ids / stop strings /
//! length limits, and the text deltas it may send so far.

use crate::codec::{IncrementalDecoder, TextCodec};
use crate::error::{InferError, Result};
use crate::sampling::{Sampler, SamplingParams};
use crate::stop::{Scan, StopStrings};
use serde::{Deserialize, Serialize};

/// Everything that shapes one completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationParams {
    /// Most tokens to generate.
    pub max_new_tokens: usize,
    /// Token choice.
    pub sampling: SamplingParams,
    /// Strings that end the completion (not included in it).
    pub stop: Vec<String>,
    /// Extra ids that end the completion, besides the tokenizer's EOS (e.g. a template's end-of-turn).
    pub stop_token_ids: Vec<u32>,
    /// Keep going past EOS (benchmarks).
    pub ignore_eos: bool,
}

impl Default for GenerationParams {
    fn default() -> Self {
        GenerationParams {
            max_new_tokens: 256,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
        }
    }
}

impl GenerationParams {
    /// Checks every range.
    pub fn validate(&self) -> Result<()> {
        if self.max_new_tokens == 0 {
            return Err(InferError::param("max_new_tokens", "must be at least 1"));
        }
        self.sampling.validate()
    }
}

/// Why a completion ended (OpenAI's `finish_reason` spelling).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// EOS, a stop id or a stop string.
    Stop,
    /// `max_new_tokens` or the model's context was reached.
    Length,
    /// The client went away or asked to stop.
    Cancelled,
}

impl FinishReason {
    /// `"stop"`, `"length"` or `"cancelled"`.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

/// What one accepted token changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// The sampled id.
    pub token: u32,
    /// Text that may be sent now (possibly empty).
    pub delta: String,
    /// Set when the sequence is complete.
    pub finished: Option<FinishReason>,
}

/// One prompt being completed.
#[derive(Debug)]
pub struct Sequence {
    ids: Vec<u32>,
    prompt_len: usize,
    max_new: usize,
    sampler: Sampler,
    stops: StopStrings,
    end_ids: Vec<u32>,
    decoder: IncrementalDecoder,
    text: String,
    sent: usize,
    finished: Option<FinishReason>,
}

impl Sequence {
    /// A sequence for `prompt` ids; at most `max_context` ids in total (prompt + completion).
    pub fn new(
        prompt: Vec<u32>,
        params: &GenerationParams,
        eos: Option<u32>,
        max_context: usize,
    ) -> Result<Self> {
        if prompt.is_empty() {
            return Err(InferError::param("prompt", "is empty (no tokens)"));
        }
        if prompt.len() >= max_context {
            return Err(InferError::PromptTooLong {
                prompt_tokens: prompt.len(),
                context: max_context,
            });
        }
        let mut end_ids = params.stop_token_ids.clone();
        if !params.ignore_eos {
            end_ids.extend(eos);
        }
        Ok(Sequence {
            prompt_len: prompt.len(),
            max_new: params.max_new_tokens.min(max_context - prompt.len()),
            ids: prompt,
            sampler: Sampler::new(params.sampling.clone()),
            stops: StopStrings::new(params.stop.iter().cloned()),
            end_ids,
            decoder: IncrementalDecoder::new(),
            text: String::new(),
            sent: 0,
            finished: None,
        })
    }

    /// Prompt ids.
    pub fn prompt(&self) -> &[u32] {
        &self.ids[..self.prompt_len]
    }

    /// Generated ids so far (an ending EOS / stop id excluded).
    pub fn generated(&self) -> &[u32] {
        &self.ids[self.prompt_len..]
    }

    /// The last id (the next decode step's input).
    pub fn last_token(&self) -> u32 {
        *self.ids.last().expect("a sequence is never empty")
    }

    /// The completion text so far (stop string cut off once found).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Why it ended, once it has.
    pub fn finished(&self) -> Option<FinishReason> {
        self.finished
    }

    /// Samples the next token from `logits` and applies every stopping rule.
    pub fn accept(&mut self, logits: &[f32], codec: &dyn TextCodec) -> Result<Update> {
        let token = self.sampler.sample(logits, &self.ids);
        if self.end_ids.contains(&token) {
            self.flush(codec)?;
            return Ok(self.finish(token, FinishReason::Stop));
        }
        self.ids.push(token);
        if let Some(piece) = self.decoder.push(codec, token)? {
            let scanned = self.text.len();
            self.text.push_str(&piece);
            match self.stops.scan(&self.text, scanned) {
                Scan::Stop(at) => {
                    self.text.truncate(at);
                    return Ok(self.finish(token, FinishReason::Stop));
                }
                Scan::SafeUpTo(end) if self.generated().len() < self.max_new => {
                    let delta = self.text[self.sent..end].to_string();
                    self.sent = end;
                    return Ok(Update {
                        token,
                        delta,
                        finished: None,
                    });
                }
                Scan::SafeUpTo(_) => {}
            }
        }
        if self.generated().len() >= self.max_new {
            self.flush(codec)?;
            return Ok(self.finish(token, FinishReason::Length));
        }
        Ok(Update {
            token,
            delta: String::new(),
            finished: None,
        })
    }

    /// Appends what the decoder still holds (bytes of an unfinished character).
    fn flush(&mut self, codec: &dyn TextCodec) -> Result<()> {
        let rest = self.decoder.finish(codec)?;
        self.text.push_str(&rest);
        Ok(())
    }

    /// Ends the sequence; the held-back tail of the text goes out with it.
    fn finish(&mut self, token: u32, why: FinishReason) -> Update {
        self.finished = Some(why);
        let delta = self.text[self.sent.min(self.text.len())..].to_string();
        self.sent = self.text.len();
        Update {
            token,
            delta,
            finished: Some(why),
        }
    }

    /// Marks the sequence cancelled (client gone).
    pub fn cancel(&mut self) {
        self.finished.get_or_insert(FinishReason::Cancelled);
    }
}
