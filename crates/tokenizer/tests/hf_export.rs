//! The exported HF files load in transformers (`AutoTokenizer.from_pretrained(dir)`, default BOS handling):
//! for pure Llama-2 the ids equal Google sentencepiece's on all 1,999 alpaca demo texts; for the merged
//! vocabulary they equal ferrotune's `tokenizers` backend on the same file and decode to the same text as
//! sentencepiece's ids (segmentations can differ where two appended score-0 pieces overlap: sentencepiece
//! takes the leftmost, a `tokenizers` BPE ranks every merge strictly).

mod common;

use ferrotune_tokenizer::{hf_files, ModelProto, Tokenizer};
use std::path::Path;

fn export(proto: &ModelProto, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let files = hf_files(proto, &dir.join("tokenizer.model")).unwrap();
    files.load(dir).unwrap();
    files.write(dir).unwrap();
}

#[test]
fn hf_export_matches_sentencepiece_and_transformers() {
    let Some(f) = common::fixtures("hf_export_matches_sentencepiece_and_transformers") else {
        return;
    };
    let texts = common::texts(&f);
    let tmp = tempfile::tempdir().unwrap();
    let data = common::write_json(tmp.path(), "texts.json", &texts);

    // Pure Llama-2: transformers == sentencepiece, every text.
    let llama = ferrotune_tokenizer::merge::read_model(&f.llama).unwrap();
    let llama_dir = tmp.path().join("llama");
    export(&llama, &llama_dir);
    let merged = common::merged(&f);
    let merged_dir = tmp.path().join("merged");
    export(&merged, &merged_dir);
    let merged_model = tmp.path().join("merged.model");
    std::fs::write(&merged_model, merged.to_bytes()).unwrap();
    let mut out: Vec<Vec<Vec<u32>>> = common::oracle_jobs(&[
        ["hf", llama_dir.to_str().unwrap(), &data],
        ["sp", f.llama.to_str().unwrap(), &data],
        ["hf", merged_dir.to_str().unwrap(), &data],
        ["sp", merged_model.to_str().unwrap(), &data],
    ]);
    let (merged_sp, merged_hf) = (out.pop().unwrap(), out.pop().unwrap());
    let (sp, hf) = (out.pop().unwrap(), out.pop().unwrap());
    let bad = (0..texts.len()).filter(|&i| hf[i] != sp[i]).count();
    assert_eq!(
        bad, 0,
        "llama2 tokenizer.json: {bad} texts differ from sentencepiece"
    );
    let ours = Tokenizer::from_path(&llama_dir.join("tokenizer.json")).unwrap();
    assert_eq!(ours.backend_name(), "tokenizers");
    assert_eq!(ours.encode_batch(&texts, true, false).unwrap(), sp);

    // Merged vocabulary.
    let (hf, sp) = (merged_hf, merged_sp);
    let ours = Tokenizer::from_path(&merged_dir).unwrap();
    assert_eq!(ours.backend_name(), "tokenizers");
    assert_eq!(ours.vocab_size(), 49953);
    assert_eq!(
        (ours.bos_id(), ours.eos_id(), ours.unk_id()),
        (Some(1), Some(2), Some(0))
    );
    assert_eq!(ours.encode_batch(&texts, true, false).unwrap(), hf);
    let spt = Tokenizer::from_path(&merged_model).unwrap();
    let mut same = 0;
    let (mut hf_tokens, mut sp_tokens) = (0usize, 0usize);
    for i in 0..texts.len() {
        assert_eq!(
            ours.decode(&hf[i]).unwrap(),
            spt.decode(&sp[i]).unwrap(),
            "text {i}"
        );
        same += usize::from(hf[i] == sp[i]);
        hf_tokens += hf[i].len();
        sp_tokens += sp[i].len();
    }
    eprintln!(
        "merged tokenizer.json: {same} of {} texts identical to sentencepiece; {hf_tokens} vs {sp_tokens} tokens",
        texts.len()
    );
    // Different segmentations of the same text, of nearly the same length.
    assert!(
        hf_tokens.abs_diff(sp_tokens) * 100 < sp_tokens,
        "{hf_tokens} vs {sp_tokens}"
    );
}
