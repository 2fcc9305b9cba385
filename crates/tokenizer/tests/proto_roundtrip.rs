//! `ModelProto` read → write is byte-identical on every real SentencePiece model, and broken files fail
//! with errors that name the file.

use ferrotune_core::testkit::fixture_or_skip;
use ferrotune_tokenizer::{ModelProto, ModelType, Tokenizer};
use std::path::Path;

#[test]
fn real_models_round_trip_byte_identical() {
    for (name, pieces, kind) in [
        ("llama2-tokenizer.model", 32000, ModelType::Bpe),
        ("chinese_sp.model", 20000, ModelType::Unigram),
        ("unigram-botchan-2000.model", 2000, ModelType::Unigram),
    ] {
        let test = "real_models_round_trip_byte_identical";
        let Some(path) = fixture_or_skip(test, &format!("tokenizers/{name}")) else {
            return;
        };
        let bytes = std::fs::read(&path).unwrap();
        let proto = ModelProto::decode_exact(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(proto.pieces.len(), pieces, "{name}");
        assert_eq!(proto.trainer().kind(), kind, "{name}");
        assert!(proto.to_bytes() == bytes, "{name}: re-encoding differs");
        // sentencepiece itself agrees on the vocabulary size.
        assert_eq!(Tokenizer::from_path(&path).unwrap().vocab_size(), pieces);
    }
}

fn load_err(path: &Path) -> String {
    Tokenizer::from_path(path).unwrap_err().to_string()
}

#[test]
fn truncated_and_garbage_models_are_errors_naming_the_file() {
    let Some(llama) = fixture_or_skip(
        "truncated_and_garbage_models_are_errors_naming_the_file",
        "tokenizers/llama2-tokenizer.model",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(llama).unwrap();
    let truncated = dir.path().join("truncated.model");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(&truncated);
    assert!(
        e.contains("truncated.model") && e.contains("not a SentencePiece model"),
        "{e}"
    );

    let garbage = dir.path().join("garbage.model");
    std::fs::write(&garbage, b"\xff\xfe this is not protobuf \x00\x01").unwrap();
    let e = load_err(&garbage);
    assert!(e.contains("garbage.model"), "{e}");

    let missing = dir.path().join("missing.model");
    assert!(load_err(&missing).contains("missing.model"));
    let empty_dir = dir.path().join("empty");
    std::fs::create_dir(&empty_dir).unwrap();
    assert!(load_err(&empty_dir).contains("neither tokenizer.model nor tokenizer.json"));
}
