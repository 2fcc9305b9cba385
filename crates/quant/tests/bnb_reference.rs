//! Bit-for-bit checks of ferrotune's NF4 / FP4 / double-quant / int8 weights against a numpy reference of
//! bitsandbytes' algorithm (tests/oracle/quant_bnb_ref.py): packed bytes, absmax and double-quant state,
//! int8 codes and row scales, and the dequantized weights — on random weights and on stories260K's.

use ferrotune_core::testkit::{fixture_or_skip, run_oracle};
use ferrotune_model::safetensors_io::{read_safetensors, write_safetensors};
use ferrotune_quant::blockwise::{quantize_4bit, Absmax, FourBit};
use ferrotune_quant::int8::quantize_int8;
use std::collections::HashMap;
use std::path::Path;
use tch::{Kind, Tensor};

const ALL: &[&str] = &["nf4", "nf4-dq", "fp4", "fp4-dq", "int8"];

fn read_all(path: &Path) -> HashMap<String, Tensor> {
    let mut m = HashMap::new();
    read_safetensors(path, |k, t| {
        m.insert(k.to_string(), t.copy());
        Ok(())
    })
    .unwrap();
    m
}

fn bytes(t: &Tensor) -> Vec<u8> {
    let c = t.contiguous();
    let mut b = vec![0u8; c.numel() * c.kind().elt_size_in_bytes()];
    c.copy_data_u8(&mut b, c.numel());
    b
}

/// Same kind, same element count, same bytes; on a mismatch names the first differing element.
fn assert_bits(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.kind(), want.kind(), "{what}: kind");
    assert_eq!(got.numel(), want.numel(), "{what}: element count");
    let (g, w) = (got.reshape([-1]), want.reshape([-1]));
    if bytes(&g) != bytes(&w) {
        let ne = g.to_kind(Kind::Double).ne_tensor(&w.to_kind(Kind::Double));
        let idx = i64::try_from(ne.to_kind(Kind::Int64).argmax(0, false)).unwrap();
        panic!(
            "{what}: differs, first at element {idx}: ferrotune {} vs reference {}",
            g.double_value(&[idx]),
            w.double_value(&[idx])
        );
    }
}

/// Quantizes every weight with every variant here and in the reference; returns the number of checks.
fn check_against_reference(weights: &[(String, Tensor)], variants: &[&str]) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let (inp, out) = (
        dir.path().join("w.safetensors"),
        dir.path().join("ref.safetensors"),
    );
    write_safetensors(&inp, weights, &[]).unwrap();
    run_oracle(
        "quant_bnb_ref.py",
        &[
            inp.to_str().unwrap(),
            out.to_str().unwrap(),
            "--variants",
            &variants.join(","),
        ],
    );
    let r = read_all(&out);
    let mut checks = 0;
    for v in variants {
        for (name, w) in weights {
            let want = |f: &str| {
                r.get(&format!("{v}/{name}.{f}"))
                    .unwrap_or_else(|| panic!("reference lacks {v}/{name}.{f}"))
            };
            let what = |f: &str| format!("{v} {name} {f}");
            if let Some(rest) = v.strip_prefix("int8") {
                let threshold = rest.strip_prefix("-t").map(|t| t.parse::<f32>().unwrap());
                let q = quantize_int8(w, threshold, Kind::Float);
                assert_bits(&what("int8 codes"), &q.cb, want("cb"));
                assert_bits(&what("row absmax"), &q.scb, want("scb"));
                assert_bits(&what("outlier columns"), &q.outlier_cols, want("cols"));
                assert_bits(&what("dequantized"), &q.dequantize_f32(), want("deq"));
            } else {
                let kind = if v.starts_with("nf4") {
                    FourBit::Nf4
                } else {
                    FourBit::Fp4
                };
                let p = quantize_4bit(w, kind, 64, v.ends_with("-dq"));
                assert_bits(&what("packed"), &p.packed, want("packed"));
                match &p.absmax {
                    Absmax::Plain(a) => assert_bits(&what("absmax"), a, want("absmax")),
                    Absmax::Double { q, offset } => {
                        assert_bits(&what("absmax codes"), &q.codes, want("absmax"));
                        assert_bits(&what("nested absmax"), &q.absmax, want("nested_absmax"));
                        assert_bits(&what("nested offset"), offset, want("nested_offset"));
                        assert_bits(&what("dynamic map"), &q.code, want("nested_code"));
                    }
                }
                assert_bits(&what("dequantized"), &p.dequantize_f32(), want("deq"));
                // Chunked into the compute dtype (QuantLinear's forward): the same values, rounded once.
                // A chunk of 1000 elements is 15 whole blocks, so the weights span many chunks.
                assert_bits(
                    &what("dequantized in chunks"),
                    &p.dequantize_chunked(Kind::Float, 1000),
                    want("deq"),
                );
                assert!(
                    p.dequantize_chunked(Kind::BFloat16, 1000)
                        .equal(&p.dequantize_f32().to_kind(Kind::BFloat16)),
                    "{}",
                    what("bf16 dequantized in chunks")
                );
            }
            checks += 1;
        }
    }
    checks
}

#[test]
fn four_bit_and_int8_match_the_bitsandbytes_reference_on_random_weights() {
    tch::manual_seed(7);
    // 38400 values: 600 blocks of 64, so 3 double-quant blocks of 256 (the last partial); a zero block.
    let big = Tensor::randn([128, 300], (Kind::Float, tch::Device::Cpu)) * 0.02;
    let _ = big.get(0).narrow(0, 0, 64).zero_();
    let _ = big.get(5).get(17).fill_(0.9);
    let _ = big.get(9).get(250).fill_(-0.7);
    // An odd element count: a partial last block and a half-filled last byte.
    let odd = Tensor::randn([33, 65], (Kind::Float, tch::Device::Cpu));
    // Heavy tails (Student-like: normal / |normal|) for FP4's subnormal and top codes.
    let wide = Tensor::randn([16, 192], (Kind::Float, tch::Device::Cpu))
        / (Tensor::randn([16, 192], (Kind::Float, tch::Device::Cpu)).abs() + 0.05);
    let weights = vec![
        ("big".to_string(), big),
        ("odd".to_string(), odd),
        ("wide".to_string(), wide),
    ];
    let mut variants = ALL.to_vec();
    variants.push("int8-t0.5");
    let n = check_against_reference(&weights, &variants);
    assert_eq!(n, weights.len() * variants.len());
}

#[test]
fn four_bit_and_int8_match_the_bitsandbytes_reference_on_stories260k() {
    let test = "four_bit_and_int8_match_the_bitsandbytes_reference_on_stories260k";
    let (Some(bin), Some(tok)) = (
        fixture_or_skip(test, "models/stories260K/stories260K.bin"),
        fixture_or_skip(test, "models/stories260K/tok512.bin"),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    ferrotune_model::convert_llama2c::convert_llama2c(&bin, Some(&tok), &hf).unwrap();
    let (model, _vs, cfg) =
        ferrotune_model::load_pretrained(&hf, ferrotune_core::DType::F32, tch::Device::Cpu)
            .unwrap();
    let mut weights = vec![];
    for (i, layer) in model.model.layers.iter().enumerate() {
        for (n, l) in layer.projections() {
            weights.push((
                format!("model.layers.{i}.{n}.weight"),
                l.weight.dense().unwrap().shallow_clone(),
            ));
        }
    }
    assert_eq!(weights.len(), 7 * cfg.num_hidden_layers as usize);
    let n = check_against_reference(&weights, ALL);
    assert_eq!(n, weights.len() * ALL.len());
}
