//! The Chinese-LLaMA-Alpaca vocabulary merge: Llama-2 + chinese_sp gives 49953 pieces, byte for byte the
//! model that upstream's method (Google's protobuf classes, tests/oracle/tokenizer_merge_ref.py) writes.

mod common;

use ferrotune_core::testkit::run_oracle;
use ferrotune_tokenizer::{PieceType, Tokenizer};

#[test]
fn llama2_plus_chinese_is_49953_pieces_identical_to_reference_merge() {
    let Some(f) =
        common::fixtures("llama2_plus_chinese_is_49953_pieces_identical_to_reference_merge")
    else {
        return;
    };
    let proto = common::merged(&f);
    assert_eq!(proto.pieces.len(), 49953);
    let base = ferrotune_tokenizer::merge::read_model(&f.llama).unwrap();
    assert_eq!(proto.trainer_spec, base.trainer_spec);
    assert_eq!(proto.normalizer_spec, base.normalizer_spec);
    assert!(proto.pieces[32000..]
        .iter()
        .all(|p| p.score == Some(0.0) && p.kind() == PieceType::Normal));

    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours.model");
    std::fs::write(&ours, proto.to_bytes()).unwrap();
    let reference = dir.path().join("reference.model");
    let n = run_oracle(
        "tokenizer_merge_ref.py",
        &[
            f.llama.to_str().unwrap(),
            f.chinese.to_str().unwrap(),
            reference.to_str().unwrap(),
        ],
    );
    assert_eq!(n.trim(), "49953");
    assert!(
        std::fs::read(&reference).unwrap() == std::fs::read(&ours).unwrap(),
        "merged model differs from the reference merge's bytes"
    );
    let tok = Tokenizer::from_path(&ours).unwrap();
    assert_eq!(tok.vocab_size(), 49953);
    assert_eq!(
        (tok.bos_id(), tok.eos_id(), tok.unk_id(), tok.pad_id()),
        (Some(1), Some(2), Some(0), None)
    );
}
