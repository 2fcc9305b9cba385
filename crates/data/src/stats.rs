//! What a preparation did: records read, samples written, tokens, truncated and skipped records (with the
//! first reasons), share of trained tokens, and length percentiles. Stored in the cache's `meta.json`
//! and printed by `ferrotune prepare-data`.

use serde::{Deserialize, Serialize};

/// How many skip reasons are kept verbatim.
pub const MAX_REASONS: usize = 5;

/// Counters of one preparation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PrepareStats {
    /// Records read from the data files (including skipped ones).
    pub records: u64,
    /// Tokenized samples (before packing).
    pub samples: u64,
    pub tokens: u64,
    /// Tokens with a label other than -100.
    pub trained_tokens: u64,
    /// Samples cut to `cutoff_len`.
    pub truncated: u64,
    /// Bad records skipped with `--on-bad-record skip`.
    pub skipped: u64,
    /// The first few skip reasons.
    pub skip_reasons: Vec<String>,
    /// Sample length percentiles (tokens, before packing): p50, p90, p99, max.
    pub length_p50: u32,
    pub length_p90: u32,
    pub length_p99: u32,
    pub length_max: u32,
}

impl PrepareStats {
    pub fn trained_percent(&self) -> f64 {
        if self.tokens == 0 {
            0.0
        } else {
            100.0 * self.trained_tokens as f64 / self.tokens as f64
        }
    }

    pub(crate) fn skip(&mut self, reason: String) {
        self.skipped += 1;
        if self.skip_reasons.len() < MAX_REASONS {
            self.skip_reasons.push(reason);
        }
    }

    /// Fills the percentiles from all sample lengths (nearest-rank).
    pub(crate) fn set_lengths(&mut self, lengths: &mut [u32]) {
        lengths.sort_unstable();
        let pct = |p: f64| -> u32 {
            if lengths.is_empty() {
                return 0;
            }
            let rank = ((p / 100.0) * lengths.len() as f64).ceil() as usize;
            lengths[rank.clamp(1, lengths.len()) - 1]
        };
        self.length_p50 = pct(50.0);
        self.length_p90 = pct(90.0);
        self.length_p99 = pct(99.0);
        self.length_max = lengths.last().copied().unwrap_or(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut s = PrepareStats::default();
        let mut l: Vec<u32> = (1..=100).rev().collect();
        s.set_lengths(&mut l);
        assert_eq!(
            (s.length_p50, s.length_p90, s.length_p99, s.length_max),
            (50, 90, 99, 100)
        );
        for i in 0..8 {
            s.skip(format!("r{i}"));
        }
        assert_eq!(s.skipped, 8);
        assert_eq!(s.skip_reasons.len(), MAX_REASONS);
    }
}
