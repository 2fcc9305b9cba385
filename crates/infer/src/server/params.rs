//! Request knobs shared by every endpoint (OpenAI names plus `top_k` / `repetition_penalty` extensions),
//! checked and turned into [`GenerationParams`] for a prompt of known length.

use super::errors::ApiError;
use crate::sampling::SamplingParams;
use crate::sequence::GenerationParams;
use serde::Deserialize;

/// Token limits of the server.
#[derive(Debug, Clone)]
pub struct RequestLimits {
    /// `max_tokens` when a request gives none.
    pub default_max_tokens: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            default_max_tokens: 256,
        }
    }
}

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    /// `"stop": "###"`
    One(String),
    /// `"stop": ["###", "User:"]`
    Many(Vec<String>),
}

/// Sampling and length fields of a request.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Knobs {
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    /// The seed's name for `max_tokens` (accepted by `/stream`).
    pub max_new_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub repetition_penalty: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Option<StopField>,
    pub n: Option<i64>,
}

impl Knobs {
    /// Generation parameters for a prompt of `prompt_tokens` ids under a context of `context`.
    pub fn to_params(
        &self,
        limits: &RequestLimits,
        default_temperature: f32,
        prompt_tokens: usize,
        context: usize,
    ) -> Result<GenerationParams, ApiError> {
        if let Some(n) = self.n {
            if n != 1 {
                return Err(ApiError::bad_request(
                    "Only `n = 1` is supported.",
                    Some("n"),
                ));
            }
        }
        if prompt_tokens >= context {
            return Err(ApiError::bad_request(
                format!("This model's maximum context length is {context} tokens, but the prompt has {prompt_tokens} tokens."),
                Some("messages"),
            )
            .with_code("context_length_exceeded"));
        }
        let room = context - prompt_tokens;
        let max = match self
            .max_tokens
            .or(self.max_completion_tokens)
            .or(self.max_new_tokens)
        {
            None => limits.default_max_tokens.min(room),
            Some(m) if m < 1 || m as usize > context => {
                return Err(ApiError::bad_request(
                    format!("`max_tokens` must be between 1 and {context}, got {m}."),
                    Some("max_tokens"),
                ));
            }
            Some(m) => (m as usize).min(room),
        };
        let temperature = self.temperature.unwrap_or(default_temperature);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::bad_request(
                format!("`temperature` must be between 0 and 2, got {temperature}."),
                Some("temperature"),
            ));
        }
        let top_k = match self.top_k {
            Some(k) if k < 0 => {
                return Err(ApiError::bad_request(
                    "`top_k` must be >= 0.",
                    Some("top_k"),
                ))
            }
            Some(k) => k as usize,
            None => 0,
        };
        let stop = match &self.stop {
            None => Vec::new(),
            Some(StopField::One(s)) => vec![s.clone()],
            Some(StopField::Many(v)) => v.clone(),
        };
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        });
        let params = GenerationParams {
            max_new_tokens: max,
            sampling: SamplingParams {
                temperature,
                top_k,
                top_p: self.top_p.unwrap_or(1.0),
                repetition_penalty: self.repetition_penalty.unwrap_or(1.0),
                seed,
            },
            stop,
            stop_token_ids: Vec::new(),
            ignore_eos: false,
        };
        params.validate()?;
        Ok(params)
    }
}
