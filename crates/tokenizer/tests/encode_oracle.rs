//! Ids equal Google sentencepiece's (Python, BOS 1 prepended) for all 1,999 alpaca demo texts with the
//! merged model and with pure Llama-2; decoding equals sentencepiece's decoding (and the text itself where
//! sentencepiece round-trips); streaming decode concatenates to the full decode.

mod common;

use ferrotune_tokenizer::Tokenizer;
use std::path::Path;

fn check_model(tok: &Tokenizer, model_path: &Path, texts: &[String], dir: &Path, name: &str) {
    let data = common::write_json(dir, &format!("{name}-texts.json"), &texts);
    let want: Vec<Vec<u32>> = common::oracle("sp", model_path.to_str().unwrap(), &data);
    let got = tok.encode_batch(texts, true, false).unwrap();
    assert_eq!(got.len(), want.len());
    let bad: Vec<usize> = (0..got.len()).filter(|&i| got[i] != want[i]).collect();
    assert!(
        bad.is_empty(),
        "{name}: {} of {} texts differ from sentencepiece, first: {:?}",
        bad.len(),
        got.len(),
        bad.first().map(|&i| &texts[i])
    );

    let ids_file = common::write_json(dir, &format!("{name}-ids.json"), &got);
    let sp_text: Vec<String> = common::oracle("sp-decode", model_path.to_str().unwrap(), &ids_file);
    let mut round_trips = 0;
    for (i, ids) in got.iter().enumerate() {
        let ours = tok.decode(ids).unwrap();
        assert_eq!(ours, sp_text[i], "{name}: decode of text {i}");
        if sp_text[i] == texts[i] {
            round_trips += 1;
        }
        // Streaming: pieces of text concatenate to the full decode, never a broken character.
        let mut stream = tok.decode_stream();
        let mut streamed = String::new();
        for &id in ids {
            if let Some(piece) = stream.push(id).unwrap() {
                assert!(!piece.contains('\u{FFFD}') || ours.contains('\u{FFFD}'));
                streamed.push_str(&piece);
            }
        }
        streamed.push_str(&stream.finish().unwrap().unwrap_or_default());
        assert_eq!(streamed, ours, "{name}: streamed text {i}");
    }
    // Every text without characters sentencepiece normalizes away decodes to itself.
    assert!(
        round_trips > texts.len() * 9 / 10,
        "{name}: only {round_trips} round trips"
    );
    eprintln!(
        "{name}: {} texts identical to sentencepiece, {round_trips} round-trip exactly",
        texts.len()
    );
}

#[test]
fn merged_and_llama2_ids_equal_sentencepiece_on_alpaca_demo() {
    let Some(f) = common::fixtures("merged_and_llama2_ids_equal_sentencepiece_on_alpaca_demo")
    else {
        return;
    };
    let texts = common::texts(&f);
    assert_eq!(texts.len(), 1999);
    let dir = tempfile::tempdir().unwrap();
    let merged_path = dir.path().join("merged.model");
    std::fs::write(&merged_path, common::merged(&f).to_bytes()).unwrap();

    let merged = Tokenizer::from_path(&merged_path).unwrap();
    check_model(&merged, &merged_path, &texts, dir.path(), "merged");
    let llama = Tokenizer::from_path(&f.llama).unwrap();
    check_model(&llama, &f.llama, &texts, dir.path(), "llama2");

    // The extension pays off: fewer tokens for the Chinese half.
    let zh = &texts[..1000];
    let count = |t: &Tokenizer| -> usize {
        t.encode_batch(zh, false, false)
            .unwrap()
            .iter()
            .map(Vec::len)
            .sum()
    };
    let (m, l) = (count(&merged), count(&llama));
    assert!(m * 10 < l * 7, "merged {m} vs llama {l} tokens on Chinese");
}

#[test]
fn streaming_never_splits_a_character() {
    let Some(f) = common::fixtures("streaming_never_splits_a_character") else {
        return;
    };
    let tok = Tokenizer::from_path(&f.llama).unwrap();
    let text = "Rust 编程语言 🦀 ist schnell — 速度很快 😀👍🏽 done";
    let ids = tok.encode(text, true, true).unwrap();
    // Llama-2 has no piece for 🦀: it is four byte-fallback pieces.
    let byte_pieces = ids
        .iter()
        .filter(|&&id| {
            matches!(
                tok.piece_kind(id),
                Some(ferrotune_tokenizer::PieceKind::Byte(_))
            )
        })
        .count();
    assert!(byte_pieces >= 4, "{byte_pieces}");
    let mut stream = tok.decode_stream();
    let mut chunks = Vec::new();
    let mut held = 0;
    for &id in &ids {
        match stream.push(id).unwrap() {
            Some(s) => chunks.push(s),
            None => held += 1,
        }
    }
    assert!(held >= 3, "byte pieces must be held back, held {held}");
    chunks.extend(stream.finish().unwrap());
    assert!(chunks.iter().all(|c| !c.contains('\u{FFFD}')), "{chunks:?}");
    assert!(chunks.iter().any(|c| c.contains('🦀')));
    assert_eq!(chunks.concat(), tok.decode(&ids).unwrap());
    assert_eq!(chunks.concat(), text);
}

#[test]
fn rust_bpe_path_equals_the_cxx_library_on_edge_cases() {
    let Some(f) = common::fixtures("rust_bpe_path_equals_the_cxx_library_on_edge_cases") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let merged_path = dir.path().join("merged.model");
    std::fs::write(&merged_path, common::merged(&f).to_bytes()).unwrap();
    let long_zh = "人工智能是计算机科学的一个分支，它企图了解智能的实质，并生产出一种新的能以人类智能相似的方式做出反应的智能机器".repeat(3);
    let long_word = "a".repeat(300);
    let cases = [
        "",
        " ",
        "   ",
        "a",
        " leading",
        "trailing ",
        "  two  spaces  ",
        "\t\ttabs\nand\r\nnewlines\n",
        "ideographic\u{3000}space",
        "🦀🦀 crab",
        "x\u{FFFD}y",
        "数字12345和1999年",
        long_zh.as_str(),
        long_word.as_str(),
        "<s> not a control </s>",
        "▁already▁escaped",
        "ÅÄÖ åäö ñ ç",
    ];
    for path in [&f.llama, &merged_path] {
        let tok = Tokenizer::from_path(path).unwrap();
        assert!(tok.uses_fast_path());
        for text in cases {
            let ours = tok.encode(text, false, false).unwrap();
            // Twice: the second call is served from the per-thread word cache.
            assert_eq!(tok.encode(text, false, false).unwrap(), ours);
            assert_eq!(
                ours,
                tok.encode_with_library(text).unwrap(),
                "{} on {text:?}",
                path.display()
            );
        }
    }
}
