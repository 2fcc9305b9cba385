//! Quantized models end to end on a tiny random Llama: `QuantLinear`'s forward against torch's dense matmul
//! of the dequantized weight (gradients reach the input and LoRA, never the quantized tensors), streaming
//! load-time quantization equal to quantize-after-load, the save → load round trip of pre-quantized
//! checkpoints, and NF4 + double quant costing bitsandbytes' bytes per parameter.

use ferrotune_core::DType;
use ferrotune_model::{
    load_pretrained, save_pretrained, AttentionMask, LinearKernel, LlamaConfig, LlamaForCausalLM,
    LoraConfig,
};
use ferrotune_quant::{
    dir_quantization, load_model, load_quantized, memory_report, quantize_model,
    quantized_state_dict, save_quantized, QuantLinear, QuantMethod, QuantSpec,
};
use std::path::Path;
use tch::{Device, Kind, Tensor};

fn tiny_config() -> LlamaConfig {
    LlamaConfig::from_json_str(
        r#"{"model_type": "llama", "vocab_size": 100, "hidden_size": 64, "intermediate_size": 96,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "tie_word_embeddings": false,
            "bos_token_id": 1, "eos_token_id": 2}"#,
    )
    .unwrap()
}

/// A random tiny model saved as a 16-bit... (fp32 here, so both paths quantize the same values) checkpoint.
fn write_random_model(dir: &Path) {
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let model = LlamaForCausalLM::load(vs.root(), &tiny_config()).unwrap();
    model.init_weights(3);
    save_pretrained(&model, dir, Some(DType::F32), u64::MAX).unwrap();
}

fn logits(model: &LlamaForCausalLM) -> Tensor {
    let ids = Tensor::from_slice(&[1i64, 5, 9, 33, 70, 2, 4, 8]).view([1, 8]);
    let pos = Tensor::arange(8, (Kind::Int64, Device::Cpu)).view([1, 8]);
    model.forward(&ids, &pos, &AttentionMask::Causal, None)
}

fn assert_same_tensors(a: Vec<(String, Tensor)>, b: Vec<(String, Tensor)>) {
    let mut a = a;
    let mut b = b;
    a.sort_by(|x, y| x.0.cmp(&y.0));
    b.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        a.iter().map(|x| &x.0).collect::<Vec<_>>(),
        b.iter().map(|x| &x.0).collect::<Vec<_>>()
    );
    for ((k, x), (_, y)) in a.iter().zip(&b) {
        assert_eq!(x.kind(), y.kind(), "{k}");
        assert!(x.reshape([-1]).equal(&y.reshape([-1])), "{k} differs");
    }
}

#[test]
fn quant_linear_forward_is_the_dense_matmul_and_gradients_reach_only_the_input() {
    tch::manual_seed(11);
    let w = Tensor::randn([48, 128], (Kind::Float, Device::Cpu)) * 0.05;
    let _ = w.get(3).get(7).fill_(0.8);
    let specs = [
        QuantSpec::nf4_double_quant().with_compute_dtype(Kind::Float),
        QuantSpec::new(QuantMethod::Fp4).with_compute_dtype(Kind::Float),
        QuantSpec::new(QuantMethod::Int8 {
            threshold: Some(0.5),
        })
        .with_compute_dtype(Kind::Float),
    ];
    for spec in specs {
        let q = QuantLinear::quantize(&w, &spec).unwrap();
        let deq = q.dense_weight(Kind::Float);
        assert_eq!(deq.size(), [48, 128]);
        // The dequantized weight approximates w (4-bit: within half a code step of the block absmax).
        let err = f64::try_from((&deq - &w).abs().max()).unwrap();
        assert!(err < 0.8 * 0.25, "{}: max error {err}", spec.method_name());
        let x = Tensor::randn([2, 5, 128], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let y = q.matmul(&x);
        let want = x.detach().matmul(&deq.tr());
        assert!(
            y.allclose(&want, 1e-5, 1e-6, false),
            "{}",
            spec.method_name()
        );
        let g = Tensor::randn([2, 5, 48], (Kind::Float, Device::Cpu));
        (&y * &g).sum(Kind::Float).backward();
        let gx = x.grad();
        assert!(gx.allclose(&g.matmul(&deq), 1e-5, 1e-6, false));
        for (k, t) in ferrotune_quant::QuantKernel::tensors(&q, "p") {
            assert!(!t.requires_grad(), "{k} requires grad");
        }
        // bf16 compute: output in x's dtype, close to the fp32 product.
        let qb =
            QuantLinear::quantize(&w, &spec.clone().with_compute_dtype(Kind::BFloat16)).unwrap();
        let yb = qb.matmul(&x.detach());
        assert_eq!(yb.kind(), Kind::Float);
        let rel = f64::try_from((&yb - &want).abs().max() / want.abs().max()).unwrap();
        assert!(rel < 2e-2, "bf16 compute: relative error {rel}");
    }
}

#[test]
fn streaming_quantization_equals_quantize_after_load_and_checkpoints_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("fp32");
    write_random_model(&src);
    let (dense, _vs0, _) = load_pretrained(&src, DType::F32, Device::Cpu).unwrap();
    let want_dense = logits(&dense);
    let specs = [
        QuantSpec::nf4_double_quant().with_compute_dtype(Kind::Float),
        QuantSpec::new(QuantMethod::Fp4).with_compute_dtype(Kind::Float),
        QuantSpec::new(QuantMethod::Int8 {
            threshold: Some(0.05),
        })
        .with_compute_dtype(Kind::Float),
    ];
    for spec in specs {
        let name = spec.method_name();
        let (mut after, _vs1, _) = load_pretrained(&src, DType::F32, Device::Cpu).unwrap();
        let report = quantize_model(&mut after, &spec).unwrap();
        assert_eq!(report.projections, 14, "{name}");
        let (streamed, vs2, _) = load_quantized(&src, &spec, DType::F32, Device::Cpu).unwrap();
        assert_same_tensors(
            quantized_state_dict(&after, None),
            quantized_state_dict(&streamed, None),
        );
        // The var store no longer holds the (released) projection weights.
        assert!(vs2
            .variables()
            .keys()
            .all(|k| !k.contains("q_proj") && !k.contains("down_proj")));
        let got = logits(&streamed);
        assert!(logits(&after).equal(&got), "{name}");
        // Quantization moves the logits a little, not a lot.
        let rel = f64::try_from((&got - &want_dense).abs().max() / want_dense.abs().max()).unwrap();
        assert!(
            rel > 0.0 && rel < 0.5,
            "{name}: relative logit change {rel}"
        );

        let out = dir.path().join(format!("q-{name}"));
        save_quantized(&streamed, &spec, &out, None, Some(&src), u64::MAX).unwrap();
        assert_eq!(dir_quantization(&out).unwrap().as_ref(), Some(&spec));
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["quantization_config"]["bits"], spec.bits() as i64);
        let ((back, _vs3, _), used) = load_model(&out, DType::F32, Device::Cpu, None).unwrap();
        assert_eq!(used, Some(spec.clone()));
        assert_same_tensors(
            quantized_state_dict(&streamed, None),
            quantized_state_dict(&back, None),
        );
        assert!(logits(&back).equal(&got), "{name} after reload");
        let bytes_q = std::fs::metadata(out.join("model.safetensors"))
            .unwrap()
            .len();
        let bytes_f = std::fs::metadata(src.join("model.safetensors"))
            .unwrap()
            .len();
        assert!(bytes_q < bytes_f, "{name}: {bytes_q} vs {bytes_f}");
    }
}

#[test]
fn nf4_double_quant_costs_bitsandbytes_bytes_and_lora_trains_on_top() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("fp32");
    write_random_model(&src);
    let spec = QuantSpec::nf4_double_quant();
    let (mut model, _vs, cfg) = load_quantized(&src, &spec, DType::F32, Device::Cpu).unwrap();
    let r = memory_report(&model);
    // bitsandbytes' layout per weight of n values: n/2 packed bytes, n/64 absmax bytes, fp32 nested absmax
    // per 256 blocks, a 256-entry fp32 dynamic map, the 16-entry fp32 quant map and the fp32 offset.
    let (h, i, kv) = (cfg.hidden_size, cfg.intermediate_size, 2 * 16);
    let shapes = [h * h, kv * h, kv * h, h * h, i * h, i * h, h * i];
    let per_layer: i64 = shapes
        .iter()
        .map(|n| n / 2 + n / 64 + 4 * ((n / 64 + 255) / 256) + 4 * 256 + 4 * 16 + 4)
        .sum();
    assert_eq!(r.quantized_bytes as i64, 2 * per_layer);
    assert_eq!(r.quantized_params as i64, 2 * shapes.iter().sum::<i64>());
    assert_eq!(r.dense_params as i64, 2 * 100 * 64 + 64 * 5);

    let mut lcfg = LoraConfig::new(4, 8.0, &["q_proj", "down_proj"]);
    lcfg.lora_dropout = 0.0;
    model.add_lora("qlora", &lcfg, 5, Kind::Float).unwrap();
    let params: Vec<Tensor> = model
        .lora_parameters("qlora")
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    let ids = Tensor::from_slice(&[1i64, 5, 9, 33, 70, 2, 4, 8, 11, 12]).view([1, 10]);
    let pos = Tensor::arange(10, (Kind::Int64, Device::Cpu)).view([1, 10]);
    let mut opt_losses = vec![];
    for _ in 0..8 {
        for p in &params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        let lg = model.forward(&ids, &pos, &AttentionMask::Causal, None);
        let (loss, _) = model.loss(&lg, &ids);
        loss.backward();
        opt_losses.push(f64::try_from(&loss).unwrap());
        tch::no_grad(|| {
            for p in &params {
                let mut p = p.shallow_clone();
                let _ = p.g_add_(&(p.grad() * -0.5));
            }
        });
    }
    assert!(
        opt_losses.windows(2).all(|w| w[1] < w[0])
            && opt_losses.last().unwrap() < &(opt_losses[0] - 0.02),
        "loss did not fall: {opt_losses:?}"
    );
}
