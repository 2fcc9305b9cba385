//! Converters against oracles nobody here wrote: the real stories260K checkpoint (llama2.c `.bin` and
//! llama.cpp `.gguf` of the same model) must convert to identical HF weights that transformers loads and
//! that continue "Once upon a time, there was a little girl named Lily." from BOS (the model's documented
//! llama2.c behaviour); a random two-shard Meta checkpoint must give the logits of Meta's reference forward.

use ferrotune_core::testkit::{fixture_or_skip, run_oracle};
use ferrotune_model::{convert_gguf, convert_llama2c, convert_meta};
use safetensors::SafeTensors;
use std::path::Path;

fn tensors(dir: &Path) -> Vec<(String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.shape().to_vec(), t.data().to_vec()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn json(dir: &Path, file: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join(file)).unwrap()).unwrap()
}

#[test]
fn stories260k_bin_and_gguf_convert_to_identical_weights_that_tell_of_lily() {
    let test = "stories260k_bin_and_gguf_convert_to_identical_weights_that_tell_of_lily";
    let Some(bin) = fixture_or_skip(test, "models/stories260K/stories260K.bin") else {
        return;
    };
    let Some(gguf) = fixture_or_skip(test, "models/stories260K/stories260K.gguf") else {
        return;
    };
    let Some(tok) = fixture_or_skip(test, "models/stories260K/tok512.bin") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("from-bin"), tmp.path().join("from-gguf"));
    let da = convert_llama2c::convert_llama2c(&bin, Some(&tok), &a).unwrap();
    let db = convert_gguf::convert_gguf(&gguf, &b).unwrap();
    // The .bin header says seq_len 512, llama.cpp's converter wrote context_length 2048: all else agrees.
    let no_ctx = |d: &ferrotune_model::convert::LlamaDims| ferrotune_model::convert::LlamaDims {
        max_position_embeddings: 0,
        ..d.clone()
    };
    assert_eq!(
        no_ctx(&da),
        no_ctx(&db),
        "both sources describe the same architecture"
    );
    assert_eq!(
        (da.hidden_size, da.num_hidden_layers, da.num_key_value_heads),
        (64, 5, 4)
    );
    assert!(da.tie_word_embeddings);
    let (ta, tb) = (tensors(&a), tensors(&b));
    assert_eq!(ta.len(), 2 + 5 * 9);
    assert!(ta == tb, "weights from .bin and .gguf differ");
    let cfg = |d: &Path| {
        let mut v = json(d, "config.json");
        v.as_object_mut().unwrap().remove("max_position_embeddings");
        v
    };
    assert_eq!(cfg(&a), cfg(&b));
    let spm = |d: &Path| std::fs::read(d.join("tokenizer.model")).unwrap();
    assert!(
        spm(&a) == spm(&b),
        "tok512.bin and the GGUF's embedded vocabulary give the same tokenizer.model"
    );
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 2, "no temporary directories left behind");

    let out = run_oracle(
        "acquire_generate.py",
        &["24", a.to_str().unwrap(), b.to_str().unwrap()],
    );
    let runs: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(runs.len(), 2);
    let want = "Once upon a time, there was a little girl named Lily.";
    for (run, dir) in runs.iter().zip(["from-bin", "from-gguf"]) {
        assert_eq!(run["vocab"], 512, "{dir}: {run}");
        let spm = run["text_spm"].as_str().unwrap();
        let hf = run["text_hf"].as_str().unwrap();
        assert!(
            spm.starts_with(want),
            "{dir}: sentencepiece decoded {spm:?}"
        );
        assert!(
            hf.trim_start().starts_with(want),
            "{dir}: transformers decoded {hf:?}"
        );
    }
    assert_eq!(runs[0]["ids"], runs[1]["ids"]);
}

#[test]
fn meta_two_shard_checkpoint_matches_reference_forward_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, out) = (tmp.path().join("meta"), tmp.path().join("hf"));
    std::fs::create_dir_all(&src).unwrap();
    run_oracle("acquire_meta.py", &["make", src.to_str().unwrap()]);
    let dims = convert_meta::convert_meta(&src, None, &out).unwrap();
    assert_eq!(
        (dims.hidden_size, dims.num_key_value_heads, dims.vocab_size),
        (64, 2, 96)
    );
    assert!(!dims.tie_word_embeddings);
    let report = run_oracle(
        "acquire_meta.py",
        &["check", src.to_str().unwrap(), out.to_str().unwrap()],
    );
    let v: serde_json::Value = serde_json::from_str(report.trim()).unwrap();
    let (diff, scale) = (
        v["max_abs_diff"].as_f64().unwrap(),
        v["ref_abs_max"].as_f64().unwrap(),
    );
    assert!(scale > 0.5, "reference logits are not trivial: {v}");
    assert!(
        diff < 1e-4,
        "HF logits differ from Meta's reference forward: {v}"
    );
}

#[test]
fn truncated_llama2c_checkpoint_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("broken.bin");
    let header: Vec<u8> = [64i32, 172, 5, 8, 4, 512, 512]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    std::fs::write(&p, [header, vec![0u8; 100]].concat()).unwrap();
    let err = convert_llama2c::convert_llama2c(&p, None, &tmp.path().join("out")).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("broken.bin") && msg.contains("token_embedding_table"),
        "{msg}"
    );
    assert!(!tmp.path().join("out").exists());
}

#[test]
fn torch_save_reader_matches_torch_for_strided_shared_and_mixed_dtype_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    run_oracle("acquire_pickle.py", &[tmp.path().to_str().unwrap()]);
    let got = ferrotune_model::convert_pickle::load_torch_state_dict(&tmp.path().join("state.pth"))
        .unwrap();
    let bytes = std::fs::read(tmp.path().join("expected.safetensors")).unwrap();
    let want = SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = want.names().into_iter().map(str::to_string).collect();
    names.sort();
    assert_eq!(got.keys().cloned().collect::<Vec<_>>(), names);
    for n in &names {
        let (g, w) = (&got[n], want.tensor(n).unwrap());
        assert_eq!((g.dtype, g.shape.as_slice()), (w.dtype(), w.shape()), "{n}");
        assert!(g.data == w.data(), "{n}: values differ from torch's");
    }
}

#[test]
fn gguf_f16_and_bf16_tensors_convert_to_the_rounded_f32_weights() {
    let test = "gguf_f16_and_bf16_tensors_convert_to_the_rounded_f32_weights";
    let Some(gguf) = fixture_or_skip(test, "models/stories260K/stories260K.gguf") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let f32_dir = tmp.path().join("f32");
    convert_gguf::convert_gguf(&gguf, &f32_dir).unwrap();
    let reference = tch::Tensor::read_safetensors(f32_dir.join("model.safetensors")).unwrap();
    for (kind, ttype) in [("f16", tch::Kind::Half), ("bf16", tch::Kind::BFloat16)] {
        // The oracle script rewrites the real file's 2-D tensors as F16/BF16 (norms stay F32).
        let recast = tmp.path().join(format!("{kind}.gguf"));
        run_oracle(
            "acquire_gguf_recast.py",
            &[gguf.to_str().unwrap(), recast.to_str().unwrap(), kind],
        );
        let dir = tmp.path().join(kind);
        convert_gguf::convert_gguf(&recast, &dir).unwrap();
        let got: std::collections::HashMap<_, _> =
            tch::Tensor::read_safetensors(dir.join("model.safetensors"))
                .unwrap()
                .into_iter()
                .collect();
        assert_eq!(got.len(), reference.len(), "{kind}: tensor count");
        for (name, want) in &reference {
            let t = &got[name];
            if want.dim() == 2 {
                assert_eq!(t.kind(), ttype, "{kind}: {name} dtype");
                assert!(
                    t.equal(&want.to_kind(ttype)),
                    "{kind}: {name} is not the {kind} rounding of the F32 weight"
                );
            } else {
                assert_eq!(t.kind(), tch::Kind::Float, "{kind}: {name} dtype");
                assert!(t.equal(want), "{kind}: {name} differs");
            }
        }
    }
}
