//! GPTQ and round-to-nearest int4 on a small random layer against tests/oracle/quant_gptq_ref.py, a numpy
//! float64 implementation written from the GPTQ paper: same Hessian, dampening, blocks and groups (with a
//! partial last group, a dead input column, and act-order). In float64 the integer codes, zero points and
//! act-order groups must be equal and the scales equal to rounding; GPTQ's output error ‖WX − ŴX‖ on the
//! calibration inputs must be below round-to-nearest's. The packed layer's forward is checked against the
//! dequantized weight.

use ferrotune_core::testkit::run_oracle;
use ferrotune_model::safetensors_io::{read_safetensors, write_safetensors};
use ferrotune_model::LinearKernel;
use ferrotune_quant::{gptq_quantize, quantize_rtn, GptqConfig, Hessian, Int4GroupLinear};
use std::collections::HashMap;
use std::path::Path;
use tch::{Kind, Tensor};

const ROWS: i64 = 40;
const COLS: i64 = 300; // groups of 128: 128, 128, 44
const SAMPLES: i64 = 8;
const TOKENS: i64 = 48;
const DEAD: i64 = 7;

fn load(path: &Path) -> HashMap<String, Tensor> {
    let mut m = HashMap::new();
    read_safetensors(path, |k, t| {
        m.insert(k.to_string(), t.copy());
        Ok(())
    })
    .unwrap();
    m
}

/// A layer and correlated inputs with unequal column scales (so act-order matters) and one dead column.
fn layer_and_inputs(seed: i64) -> (Tensor, Tensor) {
    tch::manual_seed(seed);
    let opts = (Kind::Double, tch::Device::Cpu);
    let w = Tensor::randn([ROWS, COLS], opts) * 0.05;
    let mix = Tensor::randn([COLS, COLS], opts) / (COLS as f64).sqrt();
    let col_scale = Tensor::rand([COLS], opts) * 2.0 + 0.1;
    let x = (Tensor::randn([SAMPLES, TOKENS, COLS], opts).matmul(&mix) + 0.3) * col_scale;
    let mut dead = x.narrow(2, DEAD, 1);
    let _ = dead.fill_(0.0);
    (w, x)
}

fn output_error(w: &Tensor, q: &Int4GroupLinear, x: &Tensor) -> f64 {
    let diff = w - q.dequantize(Kind::Double);
    f64::try_from(x.reshape([-1, COLS]).matmul(&diff.tr()).norm()).unwrap()
}

fn check_case(act_order: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (w, x) = layer_and_inputs(if act_order { 11 } else { 7 });
    let src = dir.path().join("in.safetensors");
    let dst = dir.path().join("out.safetensors");
    write_safetensors(
        &src,
        &[
            ("weight".into(), w.shallow_clone()),
            ("x".into(), x.shallow_clone()),
        ],
        &[],
    )
    .unwrap();
    run_oracle(
        "quant_gptq_ref.py",
        &[
            src.to_str().unwrap(),
            dst.to_str().unwrap(),
            "128",
            "128",
            "0.01",
            if act_order { "1" } else { "0" },
        ],
    );
    let want = load(&dst);

    let mut h = Hessian::new(COLS, Kind::Double, tch::Device::Cpu);
    for j in 0..SAMPLES {
        h.add_batch(&x.narrow(0, j, 1));
    }
    let cfg = GptqConfig {
        act_order,
        kind: Kind::Double,
        ..GptqConfig::default()
    };
    let out = gptq_quantize(&w, &h.h, &cfg).unwrap();
    let q = &out.layer;
    let codes = q.codes().to_kind(Kind::Int64);
    let differ = i64::try_from(codes.ne_tensor(&want["gptq_codes"]).sum(Kind::Int64)).unwrap();
    assert_eq!(
        differ, 0,
        "act_order={act_order}: {differ} GPTQ codes differ from the reference"
    );
    assert!(
        q.zeros.to_kind(Kind::Int64).equal(&want["gptq_zeros"]),
        "zeros"
    );
    let ds = f64::try_from(
        (q.scales.to_kind(Kind::Double) - &want["gptq_scales"])
            .abs()
            .max(),
    )
    .unwrap();
    let smax = f64::try_from(want["gptq_scales"].abs().max()).unwrap();
    assert!(
        ds <= 1e-6 * smax,
        "scales differ by {ds} (f32 storage of {smax})"
    );
    assert!(
        q.group_index().equal(&want["gptq_g_idx"]),
        "act_order={act_order}: group of each column"
    );
    assert_eq!(q.g_idx.is_some(), act_order);
    let want_loss = f64::try_from(want["gptq_loss"].get(0)).unwrap();
    assert!(
        (out.loss - want_loss).abs() <= 1e-9 * want_loss.abs(),
        "loss {} vs {want_loss}",
        out.loss
    );
    // A dead column quantizes to the zero point (its weight is zeroed, as the reference does).
    let dead_col = q.dequantize(Kind::Double).narrow(1, DEAD, 1);
    assert!(f64::try_from(dead_col.abs().max()).unwrap() < 1e-12);

    let r = quantize_rtn(&w, 128).unwrap();
    assert!(
        r.codes().to_kind(Kind::Int64).equal(&want["rtn_codes"]),
        "RTN codes"
    );
    assert!(
        r.zeros.to_kind(Kind::Int64).equal(&want["rtn_zeros"]),
        "RTN zeros"
    );
    let rs = f64::try_from(
        (r.scales.to_kind(Kind::Double) - &want["rtn_scales"])
            .abs()
            .max(),
    )
    .unwrap();
    assert!(rs <= 1e-6 * smax, "RTN scales differ by {rs}");

    let (eg, er) = (output_error(&w, q, &x), output_error(&w, &r, &x));
    eprintln!("act_order={act_order}: ‖WX−ŴX‖ GPTQ {eg:.5} vs RTN {er:.5}");
    assert!(eg < er, "GPTQ error {eg} is not below RTN's {er}");

    // The packed kernel's forward multiplies by the dequantized weight (f32 compute).
    let xs = x.narrow(0, 0, 2).to_kind(Kind::Float);
    let y = q.matmul(&xs);
    let y_ref = xs.matmul(&q.dequantize(Kind::Float).tr());
    assert_eq!(y.size(), [2, TOKENS, ROWS]);
    assert!(f64::try_from((y - y_ref).abs().max()).unwrap() < 1e-5);

    // The same algorithm in f32 (the default) stays close to the f64 reference: nearly all codes equal.
    let out32 = gptq_quantize(
        &w,
        &h.h,
        &GptqConfig {
            act_order,
            ..GptqConfig::default()
        },
    )
    .unwrap();
    let same = f64::try_from(
        out32
            .layer
            .codes()
            .to_kind(Kind::Int64)
            .eq_tensor(&want["gptq_codes"])
            .to_kind(Kind::Double)
            .mean(Kind::Double),
    )
    .unwrap();
    assert!(
        same > 0.98,
        "f32 GPTQ agrees with the f64 reference on {same} of the codes"
    );
}

#[test]
fn gptq_matches_reference_and_beats_rtn() {
    check_case(false);
}

#[test]
fn gptq_act_order_matches_reference() {
    check_case(true);
}

#[test]
fn int4_packing_round_trips_odd_widths() {
    tch::manual_seed(3);
    let codes = Tensor::randint(16, [5, 9], (Kind::Int64, tch::Device::Cpu));
    let scales = Tensor::rand([5, 2], (Kind::Float, tch::Device::Cpu)) + 0.01;
    let zeros = Tensor::randint(16, [5, 2], (Kind::Int64, tch::Device::Cpu));
    let q = Int4GroupLinear::from_codes(&codes, &scales, &zeros, None, 8).unwrap();
    assert_eq!(q.qweight.size(), [5, 5]);
    assert!(q.codes().to_kind(Kind::Int64).equal(&codes));
    // Group 0 = columns 0..8, group 1 = column 8.
    let deq = q.dequantize(Kind::Float);
    let c = codes.to_kind(Kind::Float);
    let z = zeros.to_kind(Kind::Float);
    let want = Tensor::cat(
        &[
            (c.narrow(1, 0, 8) - z.narrow(1, 0, 1)) * scales.narrow(1, 0, 1),
            (c.narrow(1, 8, 1) - z.narrow(1, 1, 1)) * scales.narrow(1, 1, 1),
        ],
        1,
    );
    assert!(f64::try_from((deq - want).abs().max()).unwrap() < 1e-7);
    let back = Int4GroupLinear::from_tensors(
        q.qweight.copy(),
        q.scales.copy(),
        q.zeros.copy(),
        None,
        9,
        8,
    )
    .unwrap();
    assert!(back.codes().equal(&q.codes()));
    assert!(Int4GroupLinear::from_tensors(
        q.qweight.copy(),
        q.scales.copy(),
        q.zeros.copy(),
        None,
        12,
        8
    )
    .is_err());
}

#[test]
fn int4_linear_input_gradient_uses_the_dequantized_weight() {
    // The product keeps no dense weight for the backward (it dequantizes again): same output and input
    // gradient as the dense product with the dequantized weight.
    tch::manual_seed(11);
    let w = Tensor::randn([24, 200], (Kind::Float, tch::Device::Cpu)) * 0.05;
    let q = quantize_rtn(&w, 64).unwrap();
    let deq = q.dequantize(Kind::Float);
    let x = Tensor::randn([3, 200], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    let y = q.matmul(&x);
    assert!(y.allclose(&x.detach().matmul(&deq.tr()), 1e-6, 1e-6, false));
    let g = Tensor::randn([3, 24], (Kind::Float, tch::Device::Cpu));
    (&y * &g).sum(Kind::Float).backward();
    assert!(x.grad().allclose(&g.matmul(&deq), 1e-5, 1e-6, false));
}
