//! Choosing the next token from one row of logits, with Hugging Face `generate` semantics.
//!
//! The order is transformers': repetition penalty (over prompt and generated ids), then temperature, top-k,
//! top-p, then either argmax (greedy: `temperature == 0`) or a draw from the softmax. The draw uses a small
//! seeded generator (SplitMix64) owned by each sequence, so a fixed seed gives the same text on every run.

use crate::error::{InferError, Result};
use serde::{Deserialize, Serialize};

/// Sampling settings of one request. `temperature == 0` means greedy decoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// Softmax temperature; 0 selects the argmax (greedy).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability mass reaches `top_p` (1.0 = off).
    pub top_p: f32,
    /// CTRL-style penalty on every id already in the sequence (1.0 = off): positive logits are divided by it,
    /// negative ones multiplied.
    pub repetition_penalty: f32,
    /// Seed of the per-sequence random generator.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Checks the ranges (`temperature >= 0`, `0 < top_p <= 1`, `repetition_penalty > 0`).
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(InferError::param(
                "temperature",
                "must be a finite number >= 0",
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(InferError::param("top_p", "must be in (0, 1]"));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(InferError::param("repetition_penalty", "must be > 0"));
        }
        Ok(())
    }

    /// Whether this is plain greedy decoding.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

/// SplitMix64: a tiny, well-distributed, seedable generator; enough for drawing tokens reproducibly.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform draw in `[0, 1)` with 53 bits of precision.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// The token chooser of one sequence: its settings plus its random state.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: SplitMix64,
}

impl Sampler {
    /// A sampler seeded from `params.seed`.
    pub fn new(params: SamplingParams) -> Self {
        let rng = SplitMix64::new(params.seed);
        Sampler { params, rng }
    }

    /// The settings.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token from `logits` (one row, length = vocabulary) given all ids so far.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let mut scores = logits.to_vec();
        apply_repetition_penalty(&mut scores, history, self.params.repetition_penalty);
        if self.params.is_greedy() {
            return argmax(&scores) as u32;
        }
        let t = self.params.temperature;
        if t != 1.0 {
            scores.iter_mut().for_each(|s| *s /= t);
        }
        // Candidates (id, score) after top-k, sorted by score descending (ties: lower id first).
        let mut cand: Vec<(u32, f32)> = scores
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.is_nan() && **s > f32::NEG_INFINITY)
            .map(|(i, s)| (i as u32, *s))
            .collect();
        if cand.is_empty() {
            return argmax(logits) as u32;
        }
        let desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if self.params.top_k > 0 && self.params.top_k < cand.len() {
            let k = self.params.top_k;
            cand.select_nth_unstable_by(k - 1, desc);
            let kth = cand[k - 1].1;
            // transformers removes scores strictly below the k-th value: ties at the boundary stay.
            cand.retain(|c| c.1 >= kth);
        }
        cand.sort_by(desc);
        let probs = softmax(cand.iter().map(|c| c.1));
        let keep = top_p_keep(&probs, self.params.top_p);
        let total: f64 = probs[..keep].iter().sum();
        let mut u = self.rng.next_f64() * total;
        for (i, p) in probs[..keep].iter().enumerate() {
            if u < *p {
                return cand[i].0;
            }
            u -= p;
        }
        cand[keep - 1].0
    }
}

/// transformers' `RepetitionPenaltyLogitsProcessor`: every id present in `history` (once, however often it
/// occurs) gets `score / p` when positive, `score * p` when negative.
pub fn apply_repetition_penalty(scores: &mut [f32], history: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = vec![false; scores.len()];
    for &id in history {
        let i = id as usize;
        if i < scores.len() && !seen[i] {
            seen[i] = true;
            let s = scores[i];
            scores[i] = if s < 0.0 { s * penalty } else { s / penalty };
        }
    }
}

/// Index of the largest score (the first one on ties, like `torch.argmax`).
pub fn argmax(scores: &[f32]) -> usize {
    let mut best = 0;
    for (i, s) in scores.iter().enumerate() {
        if *s > scores[best] || (scores[best].is_nan() && !s.is_nan()) {
            best = i;
        }
    }
    best
}

fn softmax(scores: impl Iterator<Item = f32> + Clone) -> Vec<f64> {
    let max = scores.clone().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exp: Vec<f64> = scores.map(|s| (s as f64 - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// How many of the descending-sorted `probs` top-p keeps, as transformers' `TopPLogitsWarper` does: in
/// ascending order, tokens whose cumulative mass is `<= 1 - top_p` are removed; the most likely always stays.
fn top_p_keep(probs: &[f64], top_p: f32) -> usize {
    if top_p >= 1.0 {
        return probs.len();
    }
    let threshold = 1.0 - top_p as f64;
    let mut cum = 0.0;
    let mut removed = 0;
    for p in probs.iter().rev() {
        cum += p;
        if cum <= threshold {
            removed += 1;
        } else {
            break;
        }
    }
    (probs.len() - removed).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_penalty_divides_positive_multiplies_negative_once() {
        let mut s = vec![2.0, -2.0, 3.0, 1.0];
        apply_repetition_penalty(&mut s, &[0, 1, 1, 0], 2.0);
        assert_eq!(s, vec![1.0, -4.0, 3.0, 1.0]);
    }

    #[test]
    fn greedy_is_argmax_after_penalty() {
        let mut s = Sampler::new(SamplingParams {
            repetition_penalty: 4.0,
            ..Default::default()
        });
        assert_eq!(s.sample(&[1.0, 3.0, 2.0], &[]), 1);
        assert_eq!(s.sample(&[1.0, 3.0, 2.0], &[1]), 2);
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        let logits = [0.1, 0.5, 2.0, -1.0, 1.9];
        for p in [
            SamplingParams {
                temperature: 1.0,
                top_k: 1,
                ..Default::default()
            },
            SamplingParams {
                temperature: 1.0,
                top_p: 0.01,
                ..Default::default()
            },
        ] {
            let mut s = Sampler::new(p);
            for _ in 0..50 {
                assert_eq!(s.sample(&logits, &[]), 2);
            }
        }
    }

    #[test]
    fn top_p_matches_transformers_rule() {
        // probs .5 .3 .2: top_p .75 removes tokens with ascending cum mass <= .25 -> only the .2 one.
        assert_eq!(top_p_keep(&[0.5, 0.3, 0.2], 0.75), 2);
        assert_eq!(top_p_keep(&[0.5, 0.3, 0.2], 0.7), 2);
        assert_eq!(top_p_keep(&[0.5, 0.3, 0.2], 0.81), 3);
        assert_eq!(top_p_keep(&[0.5, 0.3, 0.2], 0.5), 1);
    }

    #[test]
    fn sampling_follows_the_distribution_and_is_seeded() {
        let logits = [0.0f32, (3.0f32).ln(), f32::NEG_INFINITY];
        let params = SamplingParams {
            temperature: 1.0,
            seed: 7,
            ..Default::default()
        };
        let mut a = Sampler::new(params.clone());
        let draws: Vec<u32> = (0..4000).map(|_| a.sample(&logits, &[])).collect();
        let ones = draws.iter().filter(|&&d| d == 1).count() as f64 / 4000.0;
        assert!((ones - 0.75).abs() < 0.03, "P(1) = {ones}");
        assert!(!draws.contains(&2));
        let mut b = Sampler::new(params);
        let again: Vec<u32> = (0..4000).map(|_| b.sample(&logits, &[])).collect();
        assert_eq!(draws, again);
    }

    #[test]
    fn validation_names_the_field() {
        let e = SamplingParams {
            top_p: 0.0,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("top_p"));
    }
}
