//! QLoRA end to end on a tiny random Llama generated here: the frozen base quantized to NF4 with double
//! quantization at load (`quantization_bit = 4`), LoRA on all projections trained for 20 steps on a
//! learnable token pattern — the loss falls clearly; the saved adapter is plain PEFT: it loads on the dense
//! base in ferrotune and in PEFT (`PeftModel.from_pretrained`, tests/oracle/model_logits.py) with the same
//! logits, and those differ from both the base's and the quantized base's. The int8 base (`quantization_bit
//! = 8`) trains too.

use ferrotune_core::testkit::run_oracle;
use ferrotune_core::train_config::{SchedulerType, TrainConfig};
use ferrotune_core::{DType, DeviceSpec};
use ferrotune_model::{AdapterSelection, AttentionMask, LlamaConfig, LlamaForCausalLM};
use ferrotune_train::{Sample, TrainData};
use std::path::Path;
use tch::{Device, Kind, Tensor};

const VOCAB: i64 = 96;
const SEQ: usize = 24;

fn make_base(dir: &Path) {
    let cfg = LlamaConfig::from_json_str(&format!(
        r#"{{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": {VOCAB},
            "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
            "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": false}}"#
    ))
    .unwrap();
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let m = LlamaForCausalLM::load(vs.root(), &cfg).unwrap();
    m.init_weights(7);
    // Wider than transformers' 0.02 init so that a few LoRA steps can move the tiny network.
    tch::no_grad(|| {
        for (k, mut t) in m.named_parameters() {
            if !k.ends_with("norm.weight") {
                let _ = t.normal_(0.0, 0.15);
            }
        }
    });
    ferrotune_model::save_pretrained(&m, dir, None, ferrotune_model::DEFAULT_MAX_SHARD_SIZE)
        .unwrap();
}

/// Rows of counting tokens (`t, t+1, t+2, ...` from a start that varies per row): each token predicts the next.
fn samples(n: usize) -> Vec<Sample> {
    (0..n)
        .map(|i| {
            let start = (i * 7) % 60;
            let ids: Vec<i64> = (0..SEQ)
                .map(|t| (3 + (start + t) % (VOCAB as usize - 3)) as i64)
                .collect();
            Sample {
                labels: ids.clone(),
                input_ids: ids,
                seq_starts: vec![],
            }
        })
        .collect()
}

fn config(base: &Path, out: &Path, bits: u8, steps: u64) -> TrainConfig {
    TrainConfig {
        model_name_or_path: base.to_path_buf(),
        dataset: vec!["generated".into()],
        output_dir: out.to_path_buf(),
        quantization_bit: Some(bits),
        double_quantization: true,
        lora_rank: 8,
        lora_alpha: 16.0,
        lora_target: vec!["all".into()],
        per_device_train_batch_size: 4,
        learning_rate: 1e-2,
        max_steps: Some(steps),
        lr_scheduler_type: SchedulerType::Constant,
        logging_steps: 1,
        save_steps: 0,
        seed: 3,
        device: DeviceSpec::Cpu,
        num_threads: Some(1),
        ..Default::default()
    }
}

fn data() -> TrainData {
    TrainData {
        train: samples(32),
        val: vec![],
        pad_id: 0,
        tokenizer_vocab: None,
    }
}

fn logits(model: &LlamaForCausalLM, ids: &Tensor) -> Tensor {
    let _g = tch::no_grad_guard();
    let t = ids.size()[1];
    let pos = Tensor::arange(t, (Kind::Int64, Device::Cpu))
        .unsqueeze(0)
        .repeat([ids.size()[0], 1]);
    model.forward(ids, &pos, &AttentionMask::Causal, None)
}

/// Mean next-token cross-entropy of `logits` on `ids`.
fn ce(logits: &Tensor, ids: &Tensor) -> f64 {
    let (sum, n) = ferrotune_model::shifted_ce_sum(logits, ids);
    sum.double_value(&[]) / n as f64
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn qlora_nf4_trains_and_its_adapter_loads_on_the_dense_base_in_ferrotune_and_peft() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, out) = (tmp.path().join("base"), tmp.path().join("run"));
    make_base(&base);
    let s = ferrotune_train::run(&config(&base, &out, 4, 20), data()).unwrap();
    let l = &s.losses;
    assert_eq!(l.len(), 20, "{l:?}");
    let first = l[..3].iter().sum::<f64>() / 3.0;
    let last = l[l.len() - 3..].iter().sum::<f64>() / 3.0;
    assert!(
        last < 0.6 * first,
        "QLoRA loss should fall clearly: first {first:.4}, last {last:.4} ({l:?})"
    );

    // The adapter on the dense (unquantized) base, in ferrotune...
    let ids: Vec<i64> = samples(3).into_iter().flat_map(|s| s.input_ids).collect();
    let ids = Tensor::from_slice(&ids).view([3, SEQ as i64]);
    let (mut dense, _vs, _) =
        ferrotune_model::load_pretrained(&base, DType::F32, Device::Cpu).unwrap();
    let base_logits = logits(&dense, &ids);
    dense.load_lora("qlora", &out, None).unwrap();
    dense.set_adapter(AdapterSelection::Single("qlora".into()));
    let ours = logits(&dense, &ids);
    assert!(
        max_diff(&ours, &base_logits) > 1e-2,
        "the trained adapter changes the logits"
    );
    // ... differs slightly from the adapter on the NF4 base it was trained with (quantization error) ...
    let spec = ferrotune_train::qlora::quant_spec(&config(&base, &out, 4, 20)).unwrap();
    let ((mut q, _qvs, _), _) =
        ferrotune_quant::load_model(&base, DType::F32, Device::Cpu, Some(&spec)).unwrap();
    assert_eq!(ferrotune_quant::memory_report(&q).projections, 14);
    q.load_lora("qlora", &out, None).unwrap();
    q.set_adapter(AdapterSelection::Single("qlora".into()));
    let on_q = logits(&q, &ids);
    let dq = max_diff(&on_q, &ours);
    assert!(dq > 1e-6, "the NF4 base differs from the dense one: {dq}");
    // The adapter learnt on the NF4 base lowers the loss on its own base and on the dense base.
    let (l_base, l_q, l_dense) = (ce(&base_logits, &ids), ce(&on_q, &ids), ce(&ours, &ids));
    eprintln!(
        "qlora nf4: train loss {first:.4} -> {last:.4}; eval CE base {l_base:.4}, NF4+adapter {l_q:.4}, dense+adapter {l_dense:.4}"
    );
    assert!(
        l_q < 0.8 * l_base && l_dense < 0.8 * l_base,
        "loss of base {l_base:.4}, NF4 base + adapter {l_q:.4}, dense base + adapter {l_dense:.4}"
    );

    // ... and PEFT gives the same logits on the dense base.
    let inputs = tmp.path().join("inputs.safetensors");
    let mask = ids.ones_like();
    let pos = Tensor::arange(SEQ as i64, (Kind::Int64, Device::Cpu))
        .unsqueeze(0)
        .repeat([3, 1]);
    Tensor::write_safetensors(
        &[
            ("input_ids", &ids),
            ("attention_mask", &mask),
            ("position_ids", &pos),
        ],
        &inputs,
    )
    .unwrap();
    let peft_out = tmp.path().join("peft.safetensors");
    let jobs = tmp.path().join("jobs.json");
    std::fs::write(
        &jobs,
        serde_json::json!([{"model": base, "adapter": out, "inputs": inputs, "out": peft_out}])
            .to_string(),
    )
    .unwrap();
    run_oracle("model_logits.py", &[jobs.to_str().unwrap()]);
    let theirs: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&peft_out)
        .unwrap()
        .into_iter()
        .collect();
    let d = max_diff(&ours, &theirs["logits"]);
    eprintln!("ferrotune vs PEFT max |logit diff| {d:e}");
    assert!(
        d < 1e-4,
        "ferrotune vs PEFT logits, adapter on the dense base: {d:e}"
    );
}

#[test]
fn qlora_int8_base_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, out) = (tmp.path().join("base"), tmp.path().join("run"));
    make_base(&base);
    let s = ferrotune_train::run(&config(&base, &out, 8, 8), data()).unwrap();
    assert_eq!(s.losses.len(), 8);
    assert!(s.losses.iter().all(|l| l.is_finite()), "{:?}", s.losses);
    assert!(
        s.losses[7] < s.losses[0],
        "int8 QLoRA loss falls: {:?}",
        s.losses
    );
    let (mut dense, _vs, _) =
        ferrotune_model::load_pretrained(&base, DType::F32, Device::Cpu).unwrap();
    let cfg = dense.load_lora("int8", &out, None).unwrap();
    assert_eq!(cfg.targets().len(), 7);
}
