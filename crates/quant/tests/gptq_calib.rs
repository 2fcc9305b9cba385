//! GPTQ calibration windows from the project's registry (`datasets/dataset_info.json`, `demo_corpus`):
//! every window is a contiguous `seq_len` slice of BOS + the joined texts' token ids (here a byte-level
//! encoder, so the expected ids follow from the file itself), windows are distinct, and asking for more
//! samples than the text holds returns every whole window.

use ferrotune_data::ByteEncoder;
use ferrotune_quant::calibrate::{
    calibration_samples, dataset_texts, resolve_dataset, CalibConfig,
};

#[test]
fn calibration_windows_from_the_registry() {
    let root = ferrotune_core::testkit::workspace_root();
    let src = resolve_dataset("demo_corpus", &root.join("datasets")).unwrap();
    let texts = dataset_texts(&src).unwrap();
    let raw = std::fs::read_to_string(root.join("datasets/demo_corpus.txt")).unwrap();
    let lines: Vec<&str> = raw.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(texts, lines, "one text per corpus line");
    let ids: Vec<i64> = std::iter::once(1)
        .chain(texts.join("\n\n").bytes().map(|b| b as i64 + 3))
        .collect();
    let enc = ByteEncoder::default();
    let cfg = CalibConfig {
        nsamples: 5,
        seq_len: 100,
        seed: 1,
    };
    let s = calibration_samples(&texts, &enc, &cfg).unwrap();
    assert_eq!(s.size(), [5, 100]);
    let mut starts = vec![];
    for r in 0..5 {
        let row: Vec<i64> = Vec::try_from(s.get(r)).unwrap();
        let at = ids.chunks_exact(100).position(|c| c == row.as_slice());
        starts.push(at.expect("a window of the tokenized text"));
    }
    starts.sort();
    starts.dedup();
    assert_eq!(starts.len(), 5, "distinct windows");
    let all = calibration_samples(
        &texts,
        &enc,
        &CalibConfig {
            nsamples: 1_000_000,
            ..cfg
        },
    )
    .unwrap();
    assert_eq!(all.size(), [(ids.len() / 100) as i64, 100]);
    assert!(resolve_dataset("demo_corpuss", &root.join("datasets"))
        .unwrap_err()
        .to_string()
        .contains("demo_corpus"));
}
