//! A pure-Rust re-implementation of sentencepiece's BPE encoder for the common LLaMA case (BPE model,
//! identity normalizer, no user-defined or unused pieces), used instead of the C++ library because it
//! skips the C++ → protobuf → Rust round trip per call.
//!
//! It follows `bpe_model.cc` (`Model::SampleEncode` without dropout) and `normalizer.cc` step by step:
//! the text is normalized (dummy prefix, spaces escaped as `▁`, extra whitespace removed when the spec says
//! so), split into characters, and the adjacent pair whose concatenation is a piece with the highest score
//! is merged first, ties going to the leftmost pair; stale pairs are detected by size as in the C++ code.
//! Unknown pieces become byte-fallback pieces (or one unknown id per run without byte fallback), as
//! `SentencePieceProcessor::PopulateSentencePieceText` does. The oracle tests compare it with Google's
//! sentencepiece on 1,999 texts.

use crate::proto::{ModelProto, ModelType, PieceType};
use ahash::AHashMap;
use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

const SPACE: char = '\u{2581}';

/// Encoder state derived once from a `ModelProto`.
#[derive(Debug)]
pub(crate) struct FastBpe {
    /// NORMAL pieces: text → (id, score) — sentencepiece's `pieces_`.
    mergeable: AHashMap<String, (u32, f32)>,
    /// CONTROL / UNKNOWN / BYTE pieces — sentencepiece's `reserved_id_map_`, looked up first.
    reserved: AHashMap<String, u32>,
    unk_id: u32,
    byte_ids: Option<Box<[u32; 256]>>,
    add_dummy_prefix: bool,
    remove_extra_whitespaces: bool,
    escape_whitespaces: bool,
    /// No piece joins a non-`▁` character to a following `▁`, so merges never cross such a boundary and
    /// each `▁`-started word can be encoded (and cached) on its own.
    split_words: bool,
    /// Identifies this encoder's entries in the per-thread word cache.
    cache_owner: u64,
}

/// Words cached per thread (owner, word → ids); cleared when full or when another encoder uses it.
struct WordCache {
    owner: u64,
    words: AHashMap<Box<str>, Box<[u32]>>,
}

const CACHE_CAPACITY: usize = 50_000;
const CACHE_MAX_WORD: usize = 128;
/// Words of at most this many characters use the quadratic scan instead of the heap.
const SCAN_MAX_SYMBOLS: usize = 48;

thread_local! {
    static CACHE: RefCell<WordCache> = RefCell::new(WordCache { owner: 0, words: AHashMap::new() });
}
static NEXT_OWNER: AtomicU64 = AtomicU64::new(1);

#[derive(Clone, Copy)]
struct Symbol {
    prev: i32,
    next: i32,
    start: u32,
    len: u32,
}

#[derive(PartialEq)]
struct Pair {
    score: f32,
    left: u32,
    right: u32,
    size: u32,
}

impl Eq for Pair {}
impl Ord for Pair {
    /// Max-heap order: higher score first, then the smaller left index (sentencepiece's comparator).
    fn cmp(&self, o: &Self) -> Ordering {
        self.score
            .total_cmp(&o.score)
            .then_with(|| o.left.cmp(&self.left))
    }
}
impl PartialOrd for Pair {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

impl FastBpe {
    /// The fast encoder when `proto` is a model it reproduces exactly, else `None` (use the C++ library).
    pub(crate) fn new(proto: &ModelProto) -> Option<FastBpe> {
        let trainer = proto.trainer();
        let norm = proto.normalizer();
        let identity = norm.precompiled_charsmap.as_ref().is_none_or(Vec::is_empty)
            && norm
                .normalization_rule_tsv
                .as_ref()
                .is_none_or(String::is_empty);
        if trainer.kind() != ModelType::Bpe
            || !identity
            || trainer.treat_whitespace_as_suffix.unwrap_or(false)
        {
            return None;
        }
        let mut mergeable = AHashMap::with_capacity(proto.pieces.len());
        let mut reserved = AHashMap::new();
        let mut byte_ids = [u32::MAX; 256];
        let mut unk_id = None;
        for (i, p) in proto.pieces.iter().enumerate() {
            let id = i as u32;
            match p.kind() {
                PieceType::Normal => {
                    mergeable.insert(p.text().to_owned(), (id, p.score.unwrap_or(0.0)));
                }
                PieceType::UserDefined | PieceType::Unused => return None,
                PieceType::Unknown => {
                    unk_id = Some(id);
                    reserved.insert(p.text().to_owned(), id);
                }
                PieceType::Byte => {
                    if let Some(b) = crate::vocab::parse_byte_piece(p.text()) {
                        byte_ids[b as usize] = id;
                    }
                    reserved.insert(p.text().to_owned(), id);
                }
                PieceType::Control => {
                    reserved.insert(p.text().to_owned(), id);
                }
            }
        }
        let byte_fallback = trainer.byte_fallback.unwrap_or(false);
        if byte_fallback && byte_ids.contains(&u32::MAX) {
            return None;
        }
        let joins_space = mergeable.keys().any(|p: &String| {
            let mut prev = SPACE;
            p.chars().any(|c| {
                let hit = c == SPACE && prev != SPACE;
                prev = c;
                hit
            })
        });
        Some(FastBpe {
            mergeable,
            reserved,
            unk_id: unk_id?,
            byte_ids: byte_fallback.then(|| Box::new(byte_ids)),
            add_dummy_prefix: norm.add_dummy_prefix.unwrap_or(true),
            remove_extra_whitespaces: norm.remove_extra_whitespaces.unwrap_or(true),
            escape_whitespaces: norm.escape_whitespaces.unwrap_or(true),
            split_words: byte_fallback && !joins_space && norm.escape_whitespaces.unwrap_or(true),
            cache_owner: NEXT_OWNER.fetch_add(1, AtomicOrdering::Relaxed),
        })
    }

    /// sentencepiece's `Normalizer::Normalize` for an identity normalizer.
    fn normalize(&self, text: &str) -> String {
        let space = if self.escape_whitespaces { SPACE } else { ' ' };
        let rex = self.remove_extra_whitespaces;
        let body = if rex {
            text.trim_start_matches(' ')
        } else {
            text
        };
        if body.is_empty() {
            return String::new();
        }
        let mut out = String::with_capacity(body.len() + 8);
        if self.add_dummy_prefix {
            out.push(space);
        }
        let mut prev_space = rex;
        for c in body.chars() {
            if c == ' ' {
                if !(rex && prev_space) {
                    out.push(space);
                }
                prev_space = rex;
            } else {
                out.push(c);
                prev_space = false;
            }
        }
        if rex {
            while out.ends_with(space) {
                out.pop();
            }
        }
        out
    }

    /// Appends the ids of `text` to `ids`.
    pub(crate) fn encode_into(&self, text: &str, ids: &mut Vec<u32>) {
        let norm = self.normalize(text);
        if norm.is_empty() {
            return;
        }
        if !self.split_words {
            let mut prev_unk = false;
            self.encode_word(&norm, ids, &mut prev_unk);
            return;
        }
        CACHE.with(|cache| {
            let mut cache = cache.borrow_mut();
            if cache.owner != self.cache_owner || cache.words.len() >= CACHE_CAPACITY {
                cache.owner = self.cache_owner;
                cache.words.clear();
            }
            let mut start = 0;
            let mut prev = SPACE;
            for (i, c) in norm.char_indices() {
                if c == SPACE && prev != SPACE && i > start {
                    self.encode_cached(&norm[start..i], ids, &mut cache.words);
                    start = i;
                }
                prev = c;
            }
            self.encode_cached(&norm[start..], ids, &mut cache.words);
        });
    }

    fn encode_cached(
        &self,
        word: &str,
        ids: &mut Vec<u32>,
        cache: &mut AHashMap<Box<str>, Box<[u32]>>,
    ) {
        if let Some(hit) = cache.get(word) {
            ids.extend_from_slice(hit);
            return;
        }
        let from = ids.len();
        // With byte fallback unknown runs are never merged, so words are independent.
        let mut prev_unk = false;
        self.encode_word(word, ids, &mut prev_unk);
        if word.len() <= CACHE_MAX_WORD {
            cache.insert(word.into(), ids[from..].into());
        }
    }

    /// The piece id of a final symbol: reserved pieces first, then normal ones, else unknown.
    fn final_id(&self, piece: &str) -> u32 {
        self.reserved
            .get(piece)
            .copied()
            .or_else(|| self.mergeable.get(piece).map(|&(id, _)| id))
            .unwrap_or(self.unk_id)
    }

    fn emit(&self, piece: &str, ids: &mut Vec<u32>, prev_unk: &mut bool) {
        let id = self.final_id(piece);
        let is_unk = id == self.unk_id;
        match (&self.byte_ids, is_unk) {
            (Some(bytes), true) => ids.extend(piece.bytes().map(|b| bytes[b as usize])),
            (None, true) if *prev_unk => {}
            _ => ids.push(id),
        }
        *prev_unk = is_unk;
    }

    fn score(&self, piece: &str) -> Option<f32> {
        self.mergeable.get(piece).map(|&(_, s)| s)
    }

    /// BPE over one normalized span: a scan for short spans, sentencepiece's heap algorithm for long ones.
    fn encode_word(&self, word: &str, ids: &mut Vec<u32>, prev_unk: &mut bool) {
        let mut symbols: Vec<Symbol> = Vec::with_capacity(word.len());
        for (start, c) in word.char_indices() {
            let i = symbols.len() as i32;
            symbols.push(Symbol {
                prev: i - 1,
                next: i + 1,
                start: start as u32,
                len: c.len_utf8() as u32,
            });
        }
        if let Some(last) = symbols.last_mut() {
            last.next = -1;
        }
        if symbols.len() <= SCAN_MAX_SYMBOLS {
            self.merge_scan(word, &mut symbols);
        } else {
            self.merge_heap(word, &mut symbols);
        }
        let mut index = if symbols.is_empty() { -1 } else { 0 };
        while index >= 0 {
            let s = symbols[index as usize];
            index = s.next;
            self.emit(
                &word[s.start as usize..(s.start + s.len) as usize],
                ids,
                prev_unk,
            );
        }
    }

    fn pair_score(&self, word: &str, symbols: &[Symbol], left: i32) -> Option<f32> {
        if left < 0 {
            return None;
        }
        let l = symbols[left as usize];
        if l.next < 0 {
            return None;
        }
        let r = symbols[l.next as usize];
        self.score(&word[l.start as usize..(l.start + l.len + r.len) as usize])
    }

    /// Repeatedly merges the best adjacent pair (highest score, leftmost on ties) — the same choice the
    /// heap makes, found by scanning the cached pair scores.
    fn merge_scan(&self, word: &str, symbols: &mut [Symbol]) {
        let mut scores: Vec<Option<f32>> = (0..symbols.len() as i32)
            .map(|i| self.pair_score(word, symbols, i))
            .collect();
        loop {
            let mut best: Option<(usize, f32)> = None;
            let mut i = 0i32;
            while i >= 0 {
                if let Some(sc) = scores[i as usize] {
                    if best.is_none_or(|(_, b)| sc > b) {
                        best = Some((i as usize, sc));
                    }
                }
                i = symbols[i as usize].next;
            }
            let Some((l, _)) = best else { break };
            let r = symbols[l].next as usize;
            symbols[l].len += symbols[r].len;
            let next = symbols[r].next;
            symbols[l].next = next;
            if next >= 0 {
                symbols[next as usize].prev = l as i32;
            }
            symbols[r].len = 0;
            scores[r] = None;
            scores[l] = self.pair_score(word, symbols, l as i32);
            let p = symbols[l].prev;
            if p >= 0 {
                scores[p as usize] = self.pair_score(word, symbols, p);
            }
        }
    }

    /// sentencepiece's priority-queue loop (`bpe_model.cc`), stale pairs detected by size.
    fn merge_heap(&self, word: &str, symbols: &mut [Symbol]) {
        let mut agenda = BinaryHeap::with_capacity(symbols.len());
        let add = |symbols: &[Symbol], agenda: &mut BinaryHeap<Pair>, left: i32, right: i32| {
            if left < 0 || right < 0 {
                return;
            }
            let (l, r) = (symbols[left as usize], symbols[right as usize]);
            let size = l.len + r.len;
            if let Some(score) = self.score(&word[l.start as usize..(l.start + size) as usize]) {
                agenda.push(Pair {
                    score,
                    left: left as u32,
                    right: right as u32,
                    size,
                });
            }
        };
        for i in 1..symbols.len() as i32 {
            add(symbols, &mut agenda, i - 1, i);
        }
        while let Some(top) = agenda.pop() {
            let (l, r) = (top.left as usize, top.right as usize);
            if symbols[l].len == 0
                || symbols[r].len == 0
                || symbols[l].len + symbols[r].len != top.size
            {
                continue;
            }
            symbols[l].len += symbols[r].len;
            let next = symbols[r].next;
            symbols[l].next = next;
            if next >= 0 {
                symbols[next as usize].prev = l as i32;
            }
            symbols[r].len = 0;
            add(symbols, &mut agenda, symbols[l].prev, l as i32);
            add(symbols, &mut agenda, l as i32, symbols[l].next);
        }
    }
}
