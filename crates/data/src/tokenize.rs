//! Examples → token ids with labels. Supervised examples follow LLaMA-Factory's
//! `_encode_supervised_example`: the turns are paired (prompt, response), each pair is cut to what is left
//! of `cutoff_len` by [`infer_seqlen`] (shrink source and target proportionally, keep some target), prompt
//! tokens get label -100 (unless `train_on_prompt`), every response is trained (unless `mask_history`, which
//! trains the last one only). Pre-training text is BOS + text + EOS with every token trained.

use crate::encoder::TextEncoder;
use crate::error::{DataError, Result};
use crate::format::{Example, Message};
use crate::template::ResolvedTemplate;
use serde::{Deserialize, Serialize};

/// The label of tokens that are not trained.
pub const IGNORE_INDEX: i32 = -100;

/// How examples are turned into ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncodeOptions {
    pub cutoff_len: usize,
    #[serde(default)]
    pub train_on_prompt: bool,
    #[serde(default)]
    pub mask_history: bool,
}

/// One tokenized sample.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Encoded {
    pub input_ids: Vec<u32>,
    pub labels: Vec<i32>,
    /// Some tokens (or whole later turns) were cut to fit `cutoff_len`.
    pub truncated: bool,
}

/// LLaMA-Factory's rule for fitting a (source, target) pair into `cutoff_len` tokens: a short target is kept
/// whole; else a short source is kept whole; else both shrink in proportion to their lengths.
pub fn infer_seqlen(source_len: usize, target_len: usize, cutoff_len: usize) -> (usize, usize) {
    let max_target_len = if target_len * 2 < cutoff_len {
        cutoff_len
    } else if source_len * 2 < cutoff_len {
        cutoff_len - source_len
    } else {
        (cutoff_len as f64 * (target_len as f64 / (source_len + target_len) as f64)) as usize
    };
    let new_target_len = max_target_len.min(target_len);
    let max_source_len = cutoff_len.saturating_sub(new_target_len);
    let new_source_len = max_source_len.min(source_len);
    (new_source_len, new_target_len)
}

impl ResolvedTemplate {
    /// Encodes a supervised conversation (`messages` alternate prompt/response and end with a response).
    pub fn encode_supervised(
        &self,
        enc: &dyn TextEncoder,
        ex: &Example,
        opts: &EncodeOptions,
    ) -> Result<Encoded> {
        self.encode_conversation(enc, ex, &ex.messages, opts)
    }

    /// Encodes `messages` (which must have an even length) against `ex`'s system prompt and tools.
    pub fn encode_conversation(
        &self,
        enc: &dyn TextEncoder,
        ex: &Example,
        messages: &[Message],
        opts: &EncodeOptions,
    ) -> Result<Encoded> {
        if messages.is_empty() || !messages.len().is_multiple_of(2) {
            return Err(DataError::Config(format!(
                "a supervised example needs prompt/response pairs, got {} turns",
                messages.len()
            )));
        }
        let turns = self.encode_turns(enc, ex, messages)?;
        let mut pairs: Vec<(&[u32], &[u32])> = turns
            .chunks(2)
            .map(|p| (p[0].as_slice(), p[1].as_slice()))
            .collect();
        let efficient = self.template.efficient_eos;
        let cutoff = opts.cutoff_len;
        let mut total = usize::from(efficient);
        if opts.mask_history {
            pairs.reverse();
        }
        let n_pairs = pairs.len();
        let mut out = Encoded::default();
        // Built in pieces so that mask_history (reversed order) can prepend.
        let mut blocks: Vec<(Vec<u32>, Vec<i32>)> = Vec::with_capacity(n_pairs);
        for (turn, (src, tgt)) in pairs.into_iter().enumerate() {
            if total >= cutoff {
                out.truncated = true;
                break;
            }
            let (sl, tl) = infer_seqlen(src.len(), tgt.len(), cutoff - total);
            if sl < src.len() || tl < tgt.len() {
                out.truncated = true;
            }
            let (src, tgt) = (&src[..sl], &tgt[..tl]);
            total += sl + tl;
            let src_label: Vec<i32> = if opts.train_on_prompt {
                src.iter().map(|&t| t as i32).collect()
            } else if efficient && turn != 0 && sl > 0 {
                let eos = self.eos.map_or(IGNORE_INDEX, |e| e as i32);
                std::iter::once(eos)
                    .chain(std::iter::repeat_n(IGNORE_INDEX, sl - 1))
                    .collect()
            } else {
                vec![IGNORE_INDEX; sl]
            };
            let tgt_label: Vec<i32> = if opts.mask_history && turn != 0 {
                vec![IGNORE_INDEX; tl]
            } else {
                tgt.iter().map(|&t| t as i32).collect()
            };
            let mut ids = src.to_vec();
            ids.extend_from_slice(tgt);
            let mut labels = src_label;
            labels.extend(tgt_label);
            blocks.push((ids, labels));
        }
        if opts.mask_history {
            blocks.reverse();
        }
        for (ids, labels) in blocks {
            out.input_ids.extend(ids);
            out.labels.extend(labels);
        }
        if efficient {
            if let Some(e) = self.eos {
                out.input_ids.push(e);
                out.labels.push(e as i32);
            }
        }
        Ok(out)
    }

    /// Encodes a preference example into (chosen, rejected) samples sharing the prompt; the prompt and the
    /// longer response share `cutoff_len` by [`infer_seqlen`].
    pub fn encode_pairwise(
        &self,
        enc: &dyn TextEncoder,
        ex: &Example,
        opts: &EncodeOptions,
    ) -> Result<(Encoded, Encoded)> {
        let (Some(chosen), Some(rejected)) = (&ex.chosen, &ex.rejected) else {
            return Err(DataError::Config(
                "a preference example needs chosen and rejected".into(),
            ));
        };
        let with = |resp: &Message| -> Result<Vec<Vec<u32>>> {
            let mut msgs = ex.messages.clone();
            msgs.push(resp.clone());
            self.encode_turns(enc, ex, &msgs)
        };
        let c = with(chosen)?;
        let r = with(rejected)?;
        let prompt: Vec<u32> = c[..c.len() - 1].concat();
        let (cr, rr) = (c.last().expect("response"), r.last().expect("response"));
        let (sl, tl) = infer_seqlen(prompt.len(), cr.len().max(rr.len()), opts.cutoff_len);
        let build = |resp: &[u32]| {
            let resp = &resp[..tl.min(resp.len())];
            let mut input_ids = prompt[..sl].to_vec();
            input_ids.extend_from_slice(resp);
            let mut labels = if opts.train_on_prompt {
                prompt[..sl].iter().map(|&t| t as i32).collect()
            } else {
                vec![IGNORE_INDEX; sl]
            };
            labels.extend(resp.iter().map(|&t| t as i32));
            Encoded {
                input_ids,
                labels,
                truncated: sl < prompt.len() || tl < cr.len().max(rr.len()),
            }
        };
        Ok((build(cr), build(rr)))
    }
}

/// Pre-training text: BOS (if the tokenizer has one) + text + EOS, all trained; cut to `cutoff` when given.
pub fn encode_pretrain(
    enc: &dyn TextEncoder,
    text: &str,
    cutoff: Option<usize>,
) -> Result<Encoded> {
    let mut ids: Vec<u32> = enc.bos_id().into_iter().collect();
    ids.extend(enc.encode(text).map_err(DataError::Tokenizer)?);
    ids.extend(enc.eos_id());
    let mut truncated = false;
    if let Some(c) = cutoff {
        if ids.len() > c {
            ids.truncate(c);
            truncated = true;
        }
    }
    let labels = ids.iter().map(|&t| t as i32).collect();
    Ok(Encoded {
        input_ids: ids,
        labels,
        truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoder::ByteEncoder;
    use crate::format::Role;
    use crate::template::Template;

    #[test]
    fn infer_seqlen_matches_llama_factory_cases() {
        // Values from LLaMA-Factory's tests/data/processor/test_processor_utils.py.
        for (s, t, c, want) in [
            (3000, 2000, 1000, (600, 400)),
            (2000, 3000, 1000, (400, 600)),
            (1000, 100, 1000, (900, 100)),
            (100, 1000, 1000, (100, 900)),
            (100, 500, 1000, (100, 500)),
            (500, 100, 1000, (500, 100)),
            (10, 10, 1000, (10, 10)),
        ] {
            assert_eq!(infer_seqlen(s, t, c), want, "{s} {t} {c}");
        }
    }

    fn conv(turns: &[&str]) -> Example {
        Example {
            messages: turns
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    Message::new(
                        if i % 2 == 0 {
                            Role::User
                        } else {
                            Role::Assistant
                        },
                        *t,
                    )
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn multi_turn_trains_every_response_and_masks_history_on_request() {
        let enc = ByteEncoder::default();
        let t = Template::load("llama2", None)
            .unwrap()
            .resolve(&enc)
            .unwrap();
        let ex = conv(&["u1", "a1", "u2", "a2"]);
        let opts = EncodeOptions {
            cutoff_len: 1000,
            train_on_prompt: false,
            mask_history: false,
        };
        let e = t.encode_supervised(&enc, &ex, &opts).unwrap();
        assert_eq!(
            enc.decode(&e.input_ids),
            "<s>[INST] u1 [/INST]a1</s><s>[INST] u2 [/INST]a2</s>"
        );
        let trained: Vec<u32> = e
            .input_ids
            .iter()
            .zip(&e.labels)
            .filter(|(_, &l)| l != IGNORE_INDEX)
            .map(|(&i, _)| i)
            .collect();
        assert_eq!(enc.decode(&trained), "a1</s>a2</s>");
        let e = t
            .encode_supervised(
                &enc,
                &ex,
                &EncodeOptions {
                    mask_history: true,
                    ..opts.clone()
                },
            )
            .unwrap();
        let trained: Vec<u32> = e
            .input_ids
            .iter()
            .zip(&e.labels)
            .filter(|(_, &l)| l != IGNORE_INDEX)
            .map(|(&i, _)| i)
            .collect();
        assert_eq!(enc.decode(&trained), "a2</s>");
        let e = t
            .encode_supervised(
                &enc,
                &ex,
                &EncodeOptions {
                    train_on_prompt: true,
                    ..opts
                },
            )
            .unwrap();
        assert!(e.labels.iter().all(|&l| l != IGNORE_INDEX));
    }

    #[test]
    fn cutoff_truncates_and_flags() {
        let enc = ByteEncoder::default();
        let t = Template::load("empty", None)
            .unwrap()
            .resolve(&enc)
            .unwrap();
        let ex = conv(&[&"p".repeat(30), &"r".repeat(30)]);
        let opts = EncodeOptions {
            cutoff_len: 20,
            train_on_prompt: false,
            mask_history: false,
        };
        let e = t.encode_supervised(&enc, &ex, &opts).unwrap();
        assert_eq!(e.input_ids.len(), 20);
        assert!(e.truncated);
        assert_eq!(e.labels.iter().filter(|&&l| l != IGNORE_INDEX).count(), 10);
        let p = encode_pretrain(&enc, "abc", None).unwrap();
        assert_eq!(
            p.input_ids,
            vec![1, b'a' as u32 + 3, b'b' as u32 + 3, b'c' as u32 + 3, 2]
        );
    }
}
