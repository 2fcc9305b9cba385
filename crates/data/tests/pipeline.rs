//! The preparation pipeline end to end on small generated files with a byte-level test encoder: bad input
//! (malformed JSON with file/line/column, missing fields with record index, invalid UTF-8) errors by
//! default and is skipped and counted with `OnBadRecord::Skip`; the cache is reused or rebuilt by key;
//! validation splits are seeded and disjoint; concat packing chunks; batches resume mid-epoch.

use ferrotune_data::*;
use std::path::{Path, PathBuf};

fn cfg(files: &[PathBuf], packing: Packing, on_bad: OnBadRecord) -> PrepareConfig {
    PrepareConfig {
        sources: files.iter().map(|f| source_from_file(f).unwrap()).collect(),
        val_sources: vec![],
        template: Template::load("alpaca", None).unwrap(),
        stage: Stage::Sft,
        encode: EncodeOptions {
            cutoff_len: 256,
            train_on_prompt: false,
            mask_history: false,
        },
        packing,
        val_size: None,
        seed: 7,
        mix: MixStrategy::Concat,
        on_bad_record: on_bad,
        max_samples: None,
        num_workers: 2,
        tokenizer_path: None,
        overwrite_cache: false,
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn good_jsonl(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "{{\"instruction\": \"say {i}\", \"input\": \"\", \"output\": \"{}\"}}\n",
                "x".repeat(i % 7 + 1)
            )
        })
        .collect()
}

#[test]
fn bad_records_error_by_default_and_are_counted_when_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = good_jsonl(20).into_bytes();
    text.extend_from_slice(b"{\"instruction\": \"q\", \"output\": \"a\" oops}\n"); // line 21: malformed
    text.extend_from_slice(b"{\"instruction\": \"q\"}\n"); // line 22 (record 21): no output
    text.extend_from_slice(b"{\"instruction\": \"q\xff\", \"output\": \"a\"}\n"); // line 23: bad UTF-8
    text.extend_from_slice(b"{\"instruction\": [1], \"output\": \"a\"}\n"); // record 23: wrong type
    text.extend_from_slice(good_jsonl(5).as_bytes());
    let f = write(dir.path(), "mixed.jsonl", &text);
    let enc = ByteEncoder::default();
    let out = dir.path().join("out");
    let err = prepare(
        &cfg(std::slice::from_ref(&f), Packing::None, OnBadRecord::Error),
        &enc,
        "t",
        &out,
        &|_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("mixed.jsonl:21:36: malformed JSON"), "{err}");
    assert!(!out.exists(), "nothing is left behind on failure");
    let rep = prepare(
        &cfg(&[f], Packing::None, OnBadRecord::Skip),
        &enc,
        "t",
        &out,
        &|_| {},
    )
    .unwrap();
    let s = &rep.meta.stats;
    assert_eq!((s.records, s.samples, s.skipped), (29, 25, 4));
    assert!(
        s.skip_reasons[0].contains("mixed.jsonl:21:36"),
        "{:?}",
        s.skip_reasons
    );
    assert!(
        s.skip_reasons[1].contains("record 21, field `output`: missing required field"),
        "{:?}",
        s.skip_reasons
    );
    assert!(
        s.skip_reasons[2].contains("mixed.jsonl:23:19: invalid UTF-8"),
        "{:?}",
        s.skip_reasons
    );
    assert!(
        s.skip_reasons[3].contains("record 23, field `instruction`: expected a string"),
        "{:?}",
        s.skip_reasons
    );
    assert_eq!(
        TokenizedDataset::open(&out, Split::Train).unwrap().len(),
        25
    );
}

#[test]
fn framing_errors_are_fatal_even_when_skipping() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "cut.json",
        b"[{\"instruction\": \"a\", \"output\": \"b\"},\n {\"instruction\": \"c\", ",
    );
    let err = prepare(
        &cfg(&[f], Packing::None, OnBadRecord::Skip),
        &ByteEncoder::default(),
        "t",
        &dir.path().join("o"),
        &|_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("cut.json:2:2") && err.contains("unexpected end of file"),
        "{err}"
    );
}

#[test]
fn cache_is_reused_by_key_and_rebuilt_when_inputs_change() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "a.jsonl", good_jsonl(30).as_bytes());
    let enc = ByteEncoder::default();
    let out = dir.path().join("cache");
    let c = cfg(std::slice::from_ref(&f), Packing::None, OnBadRecord::Error);
    assert!(!prepare(&c, &enc, "tok1", &out, &|_| {}).unwrap().reused);
    assert!(prepare(&c, &enc, "tok1", &out, &|_| {}).unwrap().reused);
    assert!(
        !prepare(&c, &enc, "tok2", &out, &|_| {}).unwrap().reused,
        "another tokenizer"
    );
    let c2 = PrepareConfig {
        overwrite_cache: true,
        ..c.clone()
    };
    assert!(
        !prepare(&c2, &enc, "tok2", &out, &|_| {}).unwrap().reused,
        "overwrite_cache"
    );
    std::fs::write(&f, good_jsonl(31)).unwrap();
    let r = prepare(&c, &enc, "tok2", &out, &|_| {}).unwrap();
    assert!(!r.reused, "file content changed");
    assert_eq!(r.meta.stats.samples, 31);
    let c3 = PrepareConfig {
        encode: EncodeOptions {
            cutoff_len: 100,
            ..c.encode.clone()
        },
        ..c
    };
    assert!(
        !prepare(&c3, &enc, "tok2", &out, &|_| {}).unwrap().reused,
        "cutoff changed"
    );
}

#[test]
fn validation_split_is_seeded_and_disjoint() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "a.jsonl", good_jsonl(50).as_bytes());
    let enc = ByteEncoder::default();
    let mut c = cfg(&[f], Packing::None, OnBadRecord::Error);
    c.val_size = Some(ValSize::Fraction(0.2));
    let rep = prepare(&c, &enc, "t", &dir.path().join("a"), &|_| {}).unwrap();
    assert_eq!(rep.meta.splits[&Split::Validation].samples, 10);
    assert_eq!(rep.meta.splits[&Split::Train].samples, 40);
    let ids = |d: &str, s| {
        let ds = TokenizedDataset::open(&dir.path().join(d), s).unwrap();
        (0..ds.len()).map(|i| ds.input_ids(i)).collect::<Vec<_>>()
    };
    let (t, v) = (ids("a", Split::Train), ids("a", Split::Validation));
    assert!(v.iter().all(|x| !t.contains(x)));
    prepare(&c, &enc, "t", &dir.path().join("b"), &|_| {}).unwrap();
    assert_eq!(ids("b", Split::Validation), v, "same seed, same split");
    c.seed = 8;
    prepare(&c, &enc, "t", &dir.path().join("c"), &|_| {}).unwrap();
    assert_ne!(
        ids("c", Split::Validation),
        v,
        "another seed, another split"
    );
}

#[test]
fn concat_packing_chunks_pretraining_text_into_full_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "docs.txt",
        b"first document\n\nsecond one here\nthird\n",
    );
    let enc = ByteEncoder::default();
    let mut c = cfg(&[f], Packing::Concat, OnBadRecord::Error);
    c.stage = Stage::Pt;
    c.encode.cutoff_len = 8;
    prepare(&c, &enc, "t", &dir.path().join("pt"), &|_| {}).unwrap();
    let ds = TokenizedDataset::open(&dir.path().join("pt"), Split::Train).unwrap();
    let stream: Vec<u32> = ["first document", "second one here", "third"]
        .iter()
        .flat_map(|d| encode_pretrain(&enc, d, None).unwrap().input_ids)
        .collect();
    assert_eq!(ds.len(), stream.len() / 8);
    for i in 0..ds.len() {
        let s = ds.get(i);
        assert_eq!(s.input_ids, stream[i * 8..i * 8 + 8]);
        assert_eq!(
            s.labels,
            s.input_ids.iter().map(|&t| t as i32).collect::<Vec<_>>()
        );
        assert_eq!(s.position_ids, (0..8).collect::<Vec<u32>>());
    }
}

#[test]
fn batches_pad_right_and_resume_mid_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "a.jsonl", good_jsonl(23).as_bytes());
    let enc = ByteEncoder::default();
    let rep = prepare(
        &cfg(&[f], Packing::Pack, OnBadRecord::Error),
        &enc,
        "t",
        &dir.path().join("p"),
        &|_| {},
    )
    .unwrap();
    let ds = TokenizedDataset::open(&dir.path().join("p"), Split::Train).unwrap();
    assert!(ds.is_packed());
    let sc = SamplerConfig {
        batch_size: 2,
        seed: 3,
        ..Default::default()
    };
    let sampler = DistributedSampler::new(sc, ds.lengths());
    let full: Vec<Batch> = BatchIter::new(
        &ds,
        &sampler,
        SamplerState {
            epoch: 1,
            batches_done: 0,
        },
        rep.meta.pad_id,
    )
    .collect();
    assert_eq!(full.len(), sampler.num_batches());
    let mut it = BatchIter::new(
        &ds,
        &sampler,
        SamplerState {
            epoch: 1,
            batches_done: 0,
        },
        rep.meta.pad_id,
    );
    it.next();
    let saved = serde_json::to_string(&it.state()).unwrap();
    let resumed: Vec<Batch> = BatchIter::new(
        &ds,
        &sampler,
        serde_json::from_str(&saved).unwrap(),
        rep.meta.pad_id,
    )
    .collect();
    assert_eq!(resumed, full[1..]);
    for b in &full {
        for r in 0..b.batch_size {
            let n = ds.sample_len(b.indices[r]);
            let row = r * b.seq_len;
            assert!(b.attention_mask[row..row + n].iter().all(|&m| m == 1));
            assert!(b.attention_mask[row + n..row + b.seq_len]
                .iter()
                .all(|&m| m == 0));
            assert!(b.labels[row + n..row + b.seq_len]
                .iter()
                .all(|&l| l == -100));
            assert!(b.seq_ids[row + n..row + b.seq_len].iter().all(|&s| s == -1));
            assert!(b.input_ids[row + n..row + b.seq_len]
                .iter()
                .all(|&t| t == rep.meta.pad_id as i64));
        }
    }
}

#[test]
fn interleaving_is_seeded_and_max_samples_caps_each_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.jsonl", good_jsonl(30).as_bytes());
    let b_text: String = (0..30)
        .map(|i| format!("{{\"instruction\": \"b{i}\", \"output\": \"y\"}}\n"))
        .collect();
    let b = write(dir.path(), "b.jsonl", b_text.as_bytes());
    let enc = ByteEncoder::default();
    let run = |mix, seed, max: Option<u64>, out: &str| {
        let mut c = cfg(&[a.clone(), b.clone()], Packing::None, OnBadRecord::Error);
        c.mix = mix;
        c.seed = seed;
        c.max_samples = max;
        prepare(&c, &enc, "t", &dir.path().join(out), &|_| {}).unwrap();
        let ds = TokenizedDataset::open(&dir.path().join(out), Split::Train).unwrap();
        (0..ds.len())
            .map(|i| enc.decode(&ds.input_ids(i)))
            .collect::<Vec<String>>()
    };
    let concat = run(MixStrategy::Concat, 1, None, "c");
    let inter = run(MixStrategy::Interleave, 1, None, "i1");
    assert_eq!(inter, run(MixStrategy::Interleave, 1, None, "i2"));
    assert_ne!(inter, concat);
    let (mut x, mut y) = (inter.clone(), concat.clone());
    x.sort();
    y.sort();
    assert_eq!(x, y, "interleaving reorders, never drops");
    assert!(
        inter[..20].iter().any(|s| s.contains("b")),
        "both datasets appear early"
    );
    let capped = run(MixStrategy::Concat, 1, Some(5), "m");
    assert_eq!(capped.len(), 10);
}
