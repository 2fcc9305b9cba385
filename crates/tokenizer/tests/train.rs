//! `train` output is a SentencePiece model that Google's sentencepiece loads and uses: trained on the
//! Chinese corpora (lunyu, shijing, libai_wiki), both model types encode held-out alpaca Chinese text
//! without unknown ids, decode it back, and need fewer tokens than characters.

mod common;

use ferrotune_core::testkit::{fixture_or_skip, run_oracle};
use ferrotune_tokenizer::corpus::read_corpus;
use ferrotune_tokenizer::train::{train, TrainOptions};
use ferrotune_tokenizer::{ModelType, Tokenizer};

#[test]
fn trained_models_load_in_sentencepiece() {
    let test = "trained_models_load_in_sentencepiece";
    let mut lines = Vec::new();
    for name in ["lunyu.json", "shijing.json", "libai_wiki.txt"] {
        let Some(p) = fixture_or_skip(test, &format!("corpora/chinese/{name}")) else {
            return;
        };
        lines.extend(read_corpus(&p).unwrap());
    }
    let Some(f) = common::fixtures(test) else {
        return;
    };
    let held_out: Vec<String> = common::texts(&f)[..50].to_vec();
    let dir = tempfile::tempdir().unwrap();
    let data = common::write_json(dir.path(), "texts.json", &held_out);
    for (kind, vocab) in [(ModelType::Unigram, 3000), (ModelType::Bpe, 3000)] {
        let opts = TrainOptions {
            vocab_size: vocab,
            model_type: kind,
            ..TrainOptions::default()
        };
        let proto = train(&lines, &opts).unwrap();
        assert!(
            proto.pieces.len() <= vocab && proto.pieces.len() > vocab * 9 / 10,
            "{kind:?}: {}",
            proto.pieces.len()
        );
        let path = dir.path().join(format!("{kind:?}.model"));
        std::fs::write(&path, proto.to_bytes()).unwrap();

        let out: serde_json::Value = serde_json::from_str(&run_oracle(
            "tokenizer_train_check.py",
            &[path.to_str().unwrap(), &data],
        ))
        .unwrap();
        assert_eq!(
            out["vocab_size"].as_u64().unwrap() as usize,
            proto.pieces.len()
        );
        assert_eq!(
            out["unk"], 0,
            "{kind:?}: byte fallback covers every character"
        );
        let decoded: Vec<String> = serde_json::from_value(out["decoded"].clone()).unwrap();
        let ids: Vec<Vec<u32>> = serde_json::from_value(out["ids"].clone()).unwrap();
        let exact = (0..held_out.len())
            .filter(|&i| decoded[i] == held_out[i])
            .count();
        assert!(exact >= 45, "{kind:?}: {exact} of 50 decode back exactly");
        // ferrotune's Tokenizer (the same C++ library) agrees, and the model compresses the corpus text.
        let tok = Tokenizer::from_path(&path).unwrap();
        assert_eq!(tok.encode_batch(&held_out, false, false).unwrap(), ids);
        let corpus_sample = &lines[..200];
        let tokens: usize = tok
            .encode_batch(corpus_sample, false, false)
            .unwrap()
            .iter()
            .map(Vec::len)
            .sum();
        let chars: usize = corpus_sample.iter().map(|l| l.chars().count()).sum();
        assert!(
            tokens * 10 < chars * 9,
            "{kind:?}: {tokens} tokens for {chars} chars"
        );
    }
}
