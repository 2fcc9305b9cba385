//! The engine on the real Llama of `ferrotune-model` (stories260K, converted by the oracle script):
//! left-padded batches and continuous batching must reproduce each prompt's solo greedy completion, and
//! the solo completion must equal transformers' greedy `generate` on the same directory.

use ferrotune_core::testkit::{fixture_or_skip, run_oracle};
use ferrotune_infer::load::{load, LoadOptions};
use ferrotune_infer::{
    generate_batch, EngineConfig, EngineHandle, Event, GenRequest, GenerationParams, TextCodec,
};

#[test]
fn stories260k_batched_and_continuous_match_solo_and_transformers() {
    let test = "stories260k_batched_and_continuous_match_solo_and_transformers";
    let Some(bin) = fixture_or_skip(test, "models/stories260K/stories260K.bin") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("hf");
    let fixture_dir = bin.parent().unwrap().to_str().unwrap().to_string();
    run_oracle(
        "infer_stories260k.py",
        &[&fixture_dir, hf.to_str().unwrap(), "1"],
    );
    let opts = LoadOptions {
        device: Some(ferrotune_core::DeviceSpec::Cpu),
        ..Default::default()
    };
    let loaded = load(&hf, &opts).unwrap();
    let codec: &dyn TextCodec = loaded.tokenizer.as_ref();
    let texts = [
        "Once upon a time",
        "The cat sat on the mat and looked at the big red",
        "Tom",
    ];
    let prompts: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| codec.encode(t, true).unwrap())
        .collect();
    let params = GenerationParams {
        max_new_tokens: 24,
        ignore_eos: true,
        ..Default::default()
    };
    let batched = generate_batch(&loaded.model, codec, &prompts, &params).unwrap();
    let oracle: serde_json::Value = serde_json::from_str(&run_oracle(
        "infer_hf_greedy.py",
        &[hf.to_str().unwrap(), "24", texts[0], texts[1], texts[2]],
    ))
    .unwrap();
    for (i, p) in prompts.iter().enumerate() {
        let solo = generate_batch(&loaded.model, codec, std::slice::from_ref(p), &params).unwrap();
        assert_eq!(
            batched[i].token_ids, solo[0].token_ids,
            "prompt {i}: batch vs solo"
        );
        let want: Vec<u32> = oracle[i]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            solo[0].token_ids, want,
            "prompt {i}: ferrotune vs transformers"
        );
    }
    let engine = EngineHandle::spawn(
        Box::new(loaded.model),
        loaded.tokenizer.clone(),
        EngineConfig::default(),
    );
    let rxs: Vec<_> = prompts
        .iter()
        .map(|p| {
            std::thread::sleep(std::time::Duration::from_millis(15));
            engine
                .submit(GenRequest {
                    prompt_ids: p.clone(),
                    params: params.clone(),
                    adapter: None,
                })
                .unwrap()
        })
        .collect();
    for (i, mut rx) in rxs.into_iter().enumerate() {
        let mut text = String::new();
        while let Some(Event::Delta(d)) = rx.blocking_recv() {
            text.push_str(&d);
        }
        assert_eq!(text, batched[i].text, "prompt {i}: continuous batching");
    }
}
