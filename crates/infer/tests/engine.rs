//! Engine tests on the deterministic toy model: the KV-cached, left-padded, continuously batched paths must
//! produce exactly what a plain full-recompute greedy loop produces for each prompt alone.

use ferrotune_infer::batch::DecodeBatch;
use ferrotune_infer::sampling::argmax;
use ferrotune_infer::testing::{ByteCodec, ToyModel};
use ferrotune_infer::{
    generate_batch, CausalLm, EngineConfig, EngineHandle, Event, FinishReason, GenRequest,
    GenerationParams, KvCache, SamplingParams, TextCodec, TokenStream,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::{Kind, Tensor};

fn toy() -> ToyModel {
    ToyModel::new(ByteCodec::VOCAB, 96, 11)
}

/// Greedy reference without cache or batching: full causal forward over the whole sequence every step.
fn reference_greedy(model: &ToyModel, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut ids = prompt.to_vec();
    for _ in 0..n {
        let t = ids.len() as i64;
        let x = Tensor::from_slice(&ids.iter().map(|&i| i as i64).collect::<Vec<_>>()).view([1, t]);
        let pos = Tensor::arange(t, (Kind::Int64, tch::Device::Cpu)).view([1, t]);
        let mask = Tensor::ones([t, t], (Kind::Bool, tch::Device::Cpu))
            .tril(0)
            .view([1, 1, t, t]);
        let logits = model
            .forward(&x, &pos, &mask, &mut KvCache::new(1), &[None])
            .unwrap()
            .select(1, -1)
            .view([-1]);
        let row = Vec::<f32>::try_from(&logits).unwrap();
        ids.push(argmax(&row) as u32);
    }
    ids[prompt.len()..].to_vec()
}

fn greedy(n: usize) -> GenerationParams {
    GenerationParams {
        max_new_tokens: n,
        ignore_eos: true,
        ..Default::default()
    }
}

fn prompts() -> Vec<Vec<u32>> {
    [
        "a",
        "Hello there, general",
        "xyz xyz",
        "The quick brown fox jumps",
    ]
    .iter()
    .map(|p| ByteCodec.encode(p, true).unwrap())
    .collect()
}

#[test]
fn batched_cached_greedy_equals_full_recompute() {
    let m = toy();
    let out = generate_batch(&m, &ByteCodec, &prompts(), &greedy(20)).unwrap();
    for (p, c) in prompts().iter().zip(&out) {
        assert_eq!(c.token_ids, reference_greedy(&m, p, 20), "prompt {p:?}");
        assert_eq!(c.finish_reason, FinishReason::Length);
        assert_eq!(c.text, ByteCodec.decode(&c.token_ids).unwrap());
    }
}

#[test]
fn rows_joining_and_leaving_keep_results_exact() {
    let m = toy();
    let ps = prompts();
    let want: Vec<Vec<u32>> = ps.iter().map(|p| reference_greedy(&m, p, 12)).collect();
    // Row 0 starts alone; row 1 joins after 3 steps (longer prompt: the batch is re-padded), row 0 leaves
    // after 6 steps (columns trimmed), row 2 joins later.
    let mut b = DecodeBatch::new(1, 0);
    let mut got: Vec<Vec<u32>> = vec![Vec::new(); 3];
    let mut rows: Vec<usize> = vec![0];
    let l = b.prefill(&m, &ps[0..1], &[]).unwrap();
    got[0].push(argmax(l.row(0)) as u32);
    for step in 0..30 {
        if step == 3 {
            let l = b.prefill(&m, &ps[1..2], &[]).unwrap();
            got[1].push(argmax(l.row(0)) as u32);
            rows.push(1);
        }
        if step == 8 {
            let l = b.prefill(&m, &ps[2..3], &[]).unwrap();
            got[2].push(argmax(l.row(0)) as u32);
            rows.push(2);
        }
        let keep: Vec<bool> = rows.iter().map(|&r| got[r].len() < 12).collect();
        b.retain(&keep);
        rows.retain(|&r| got[r].len() < 12);
        if rows.is_empty() {
            break;
        }
        let toks: Vec<u32> = rows.iter().map(|&r| *got[r].last().unwrap()).collect();
        let l = b.step(&m, &toks).unwrap();
        for (i, &r) in rows.iter().enumerate() {
            got[r].push(argmax(l.row(i)) as u32);
        }
    }
    for r in 0..3 {
        assert_eq!(got[r], want[r], "row {r}");
    }
    assert!(b.is_empty());
}

#[test]
fn seeded_sampling_is_reproducible_and_seed_dependent() {
    let m = toy();
    let params = |seed| GenerationParams {
        max_new_tokens: 40,
        ignore_eos: true,
        sampling: SamplingParams {
            temperature: 1.5,
            top_k: 50,
            top_p: 0.95,
            repetition_penalty: 1.1,
            seed,
        },
        ..Default::default()
    };
    let a = generate_batch(&m, &ByteCodec, &prompts(), &params(1)).unwrap();
    let b = generate_batch(&m, &ByteCodec, &prompts(), &params(1)).unwrap();
    let c = generate_batch(&m, &ByteCodec, &prompts(), &params(2)).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn stop_strings_and_eos_end_the_completion() {
    let m = toy();
    let p = &prompts()[1];
    let full = generate_batch(&m, &ByteCodec, std::slice::from_ref(p), &greedy(30)).unwrap();
    let text = &full[0].text;
    let stop = text[5..8].to_string();
    let cut = text.find(&stop).unwrap();
    let mut params = greedy(30);
    params.stop = vec![stop.clone()];
    let mut streamed = String::new();
    let mut stream = TokenStream::new(&m, &ByteCodec, p.clone(), &params).unwrap();
    for u in stream.by_ref() {
        streamed.push_str(&u.unwrap().delta);
    }
    let c = stream.completion();
    assert_eq!(c.text, text[..cut]);
    assert_eq!(streamed, text[..cut]);
    assert_eq!(c.finish_reason, FinishReason::Stop);
    // The 4th generated id as a stop id ends generation right before it.
    let mut params = greedy(30);
    params.stop_token_ids = vec![full[0].token_ids[3]];
    let first = full[0]
        .token_ids
        .iter()
        .position(|&t| t == full[0].token_ids[3])
        .unwrap();
    let c = generate_batch(&m, &ByteCodec, std::slice::from_ref(p), &params).unwrap();
    assert_eq!(c[0].token_ids, full[0].token_ids[..first]);
    assert_eq!(c[0].finish_reason, FinishReason::Stop);
}

fn collect(mut rx: tokio::sync::mpsc::UnboundedReceiver<Event>) -> (String, Event) {
    let mut text = String::new();
    loop {
        match rx
            .blocking_recv()
            .expect("engine ends every request with Done or Error")
        {
            Event::Delta(d) => text.push_str(&d),
            e => return (text, e),
        }
    }
}

#[test]
fn continuous_batching_matches_solo_generation() {
    let solo = toy();
    let ps = prompts();
    let want = generate_batch(&solo, &ByteCodec, &ps, &greedy(25)).unwrap();
    let mut m = toy();
    m.delay = Duration::from_millis(2);
    let engine = EngineHandle::spawn(
        Box::new(m),
        Arc::new(ByteCodec),
        EngineConfig { max_batch: 3 },
    );
    let handles: Vec<_> = ps
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let e = engine.clone();
            let p = p.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(7 * i as u64));
                let rx = e
                    .submit(GenRequest {
                        prompt_ids: p,
                        params: greedy(25),
                        adapter: None,
                    })
                    .unwrap();
                collect(rx)
            })
        })
        .collect();
    for (h, w) in handles.into_iter().zip(&want) {
        let (text, done) = h.join().unwrap();
        assert_eq!(text, w.text);
        assert_eq!(
            done,
            Event::Done {
                finish_reason: FinishReason::Length,
                prompt_tokens: w.prompt_tokens,
                completion_tokens: 25
            }
        );
    }
    let t = Instant::now();
    while engine.in_flight() != 0 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(engine.in_flight(), 0);
}

#[test]
fn dropped_receiver_cancels_and_adapters_apply_per_row() {
    let mut m = toy().with_adapters(&["a", "b"]);
    m.delay = Duration::from_millis(3);
    let engine = EngineHandle::spawn(Box::new(m), Arc::new(ByteCodec), EngineConfig::default());
    let p = prompts()[0].clone();
    let long = engine
        .submit(GenRequest {
            prompt_ids: p.clone(),
            params: greedy(80),
            adapter: None,
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(engine.in_flight(), 1);
    drop(long);
    let t = Instant::now();
    while engine.in_flight() != 0 && t.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(engine.in_flight(), 0, "cancelled request still in flight");
    // Adapter i adds +100 to id 3 + i (byte i); the base model does not.
    let req = |adapter: Option<&str>| GenRequest {
        prompt_ids: p.clone(),
        params: greedy(4),
        adapter: adapter.map(str::to_string),
    };
    let (ra, rb, rn) = (
        engine.submit(req(Some("a"))).unwrap(),
        engine.submit(req(Some("b"))).unwrap(),
        engine.submit(req(None)).unwrap(),
    );
    assert_eq!(collect(ra).0, "\u{0}".repeat(4));
    assert_eq!(collect(rb).0, "\u{1}".repeat(4));
    let solo = generate_batch(&toy(), &ByteCodec, std::slice::from_ref(&p), &greedy(4)).unwrap();
    assert_eq!(collect(rn).0, solo[0].text);
    assert!(engine.submit(req(Some("nope"))).is_err());
    let too_long = GenRequest {
        prompt_ids: vec![5; 96],
        params: greedy(4),
        adapter: None,
    };
    assert!(engine
        .submit(too_long)
        .unwrap_err()
        .to_string()
        .contains("context"));
}
