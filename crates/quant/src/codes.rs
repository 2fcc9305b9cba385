//! bitsandbytes' code tables, verbatim: the NF4 and FP4 values (`functional.get_4bit_type`), the decision-tree
//! thresholds of `dQuantizeNF4` / `dQuantizeFP4` (csrc/kernels.cu), and the signed 8-bit dynamic map
//! (`functional.create_dynamic_map(signed=True)`) with `dQuantize`'s binary search, as tensor ops.

// The constants are bitsandbytes' literals verbatim (more digits than an f32 holds, rounded the same way).
#![allow(clippy::excessive_precision)]

use tch::{Device, Kind, Tensor};

/// NF4 values by 4-bit code (bitsandbytes `get_4bit_type("nf4")`, the values of `dDequantizeNF4`).
pub const NF4_TABLE: [f32; 16] = [
    -1.0,
    -0.696_192_800_998_687_7,
    -0.525_073_051_452_636_7,
    -0.394_917_488_098_144_53,
    -0.284_441_381_692_886_35,
    -0.184_773_430_228_233_34,
    -0.091_050_036_251_544_95,
    0.0,
    0.079_580_299_556_255_34,
    0.160_930_201_411_247_25,
    0.246_112_301_945_686_34,
    0.337_915_241_718_292_24,
    0.440_709_829_330_444_34,
    0.562_617_003_917_694_1,
    0.722_956_836_223_602_3,
    1.0,
];

/// `dQuantizeNF4`'s pivots, low to high: code = how many of them `x` exceeds (`>`), as the tree decides.
pub const NF4_THRESHOLDS: [f32; 15] = [
    -0.848_096_400_499_343_9,
    -0.610_632_926_225_662_2,
    -0.459_995_269_775_390_6,
    -0.339_679_434_895_515_44,
    -0.234_607_405_960_559_84,
    -0.137_911_733_239_889_14,
    -0.045_525_018_125_772_476,
    0.039_790_149_778_127_67,
    0.120_255_250_483_751_3,
    0.203_521_251_678_466_8,
    0.292_013_771_831_989_3,
    0.389_312_535_524_368_3,
    0.501_663_416_624_069_2,
    0.642_786_920_070_648_2,
    0.861_478_418_111_801_1,
];

/// FP4 values by code: `get_4bit_type("fp4")` = [0, 0.0625, 8, 12, 4, 6, 2, 3, -0, -0.0625, -8, -12, -4, -6,
/// -2, -3] / 12, computed as bitsandbytes does (fp32 division by the max).
pub fn fp4_table() -> [f32; 16] {
    let raw: [f32; 16] = [
        0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, -0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0,
        -3.0,
    ];
    raw.map(|v| v / 12.0)
}

/// `dQuantizeFP4`'s pivots on |x|, low to high.
pub const FP4_THRESHOLDS: [f32; 7] = [
    0.002_604_17,
    0.085_937_5,
    0.208_333_33,
    0.291_666_67,
    0.416_666_7,
    0.583_333,
    0.833_333_3,
];

/// The FP4 magnitude code after passing `i` pivots (the tree's leaves in order: 0, 0.0625, 2, 3, 4, 6, 8, 12).
pub const FP4_MAGNITUDE_CODES: [u8; 8] = [0b000, 0b001, 0b110, 0b111, 0b100, 0b101, 0b010, 0b011];

/// Counts, per element of `x` (fp32), how many of the ascending `pivots` it exceeds, as uint8.
fn count_above(x: &Tensor, pivots: &[f32]) -> Tensor {
    let mut c = Tensor::zeros(x.size(), (Kind::Uint8, x.device()));
    for &p in pivots {
        c += x.gt(p as f64).to_kind(Kind::Uint8);
    }
    c
}

/// NF4 codes (uint8 0..15) of normalised fp32 values, exactly as `dQuantizeNF4` (NaN → 0).
pub fn quantize_nf4(x: &Tensor) -> Tensor {
    count_above(x, &NF4_THRESHOLDS)
}

/// FP4 codes (uint8 0..15) of normalised fp32 values, exactly as `dQuantizeFP4` (sign bit 8 for x < 0).
pub fn quantize_fp4(x: &Tensor) -> Tensor {
    let idx = count_above(&x.abs(), &FP4_THRESHOLDS).to_kind(Kind::Int64);
    let lut = Tensor::from_slice(&FP4_MAGNITUDE_CODES).to_device(x.device());
    let mag = lut.index_select(0, &idx.reshape([-1])).reshape(x.size());
    mag + x.lt(0.0).to_kind(Kind::Uint8) * 8
}

/// bitsandbytes' `create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8)`: 256 ascending fp32
/// values in [-1, 1]. Built with the same torch ops (fp32 `linspace`, fp32 means, fp32 scaling by 10^e).
pub fn dynamic_map_signed() -> Tensor {
    let max_exponent_bits = 7i64;
    let non_sign_bits = 7i64;
    let mut data: Vec<f32> = Vec::with_capacity(256);
    for i in 0..max_exponent_bits {
        let items = (1i64 << (i + non_sign_bits - max_exponent_bits)) + 1;
        let b = Tensor::linspace(0.1, 1.0, items, (Kind::Float, Device::Cpu));
        let means = (b.narrow(0, 0, items - 1) + b.narrow(0, 1, items - 1)) / 2.0;
        // 10 ** (-(max_exponent_bits - 1) + i), a Python float (or int for e >= 0), times an fp32 tensor.
        let scale: f64 = format!("1e{}", -(max_exponent_bits - 1) + i)
            .parse()
            .expect("a float literal");
        let pos = &means * scale;
        let neg = &means * -scale;
        data.extend(Vec::<f32>::try_from(&pos).expect("fp32 values"));
        data.extend(Vec::<f32>::try_from(&neg).expect("fp32 values"));
    }
    data.push(0.0);
    data.push(1.0);
    debug_assert_eq!(data.len(), 256);
    data.sort_by(|a, b| a.total_cmp(b));
    Tensor::from_slice(&data)
}

/// `dQuantize<0>`: the 8-bit code of each fp32 value of `x` (already scaled into [-1, 1]) by the kernel's
/// 7-step binary search over `code` (256 ascending values) and midpoint rounding. Returns uint8.
pub fn quantize_dynamic(code: &Tensor, x: &Tensor) -> Tensor {
    let dev = x.device();
    let code = code.to_device(dev);
    let shape = x.size();
    let x = x.reshape([-1]);
    let full_i = |v: i64| Tensor::full(x.size(), v, (Kind::Int64, dev));
    let full_f = |v: f64| Tensor::full(x.size(), v, (Kind::Float, dev));
    let mut pivot = full_i(127);
    let mut upper_pivot = full_i(255);
    let mut lower_pivot = full_i(0);
    let mut lower = full_f(-1.0);
    let mut upper = full_f(1.0);
    let mut val = code.index_select(0, &pivot);
    let mut step = 64i64;
    while step > 0 {
        let gt = x.gt_tensor(&val);
        lower_pivot = pivot.where_self(&gt, &lower_pivot);
        lower = val.where_self(&gt, &lower);
        upper_pivot = upper_pivot.where_self(&gt, &pivot);
        upper = upper.where_self(&gt, &val);
        pivot = (&pivot + step).where_self(&gt, &(&pivot - step));
        val = code.index_select(0, &pivot);
        step >>= 1;
    }
    let last = code.get(255).expand_as(&upper);
    let first = code.get(0).expand_as(&lower);
    let upper = last.where_self(&upper_pivot.eq(255), &upper);
    let lower = first.where_self(&lower_pivot.eq(0), &lower);
    let gt = x.gt_tensor(&val);
    let mid_up = (&upper + &val) * 0.5;
    let mid_low = (&lower + &val) * 0.5;
    let above = upper_pivot.where_self(&x.gt_tensor(&mid_up), &pivot);
    let below = lower_pivot.where_self(&x.lt_tensor(&mid_low), &pivot);
    above
        .where_self(&gt, &below)
        .to_kind(Kind::Uint8)
        .reshape(shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nf4_thresholds_are_the_table_midpoints() {
        for i in 0..15 {
            let mid = (NF4_TABLE[i] as f64 + NF4_TABLE[i + 1] as f64) / 2.0;
            assert!((mid - NF4_THRESHOLDS[i] as f64).abs() < 1e-7, "{i}");
        }
        let t = fp4_table();
        let mags: Vec<f32> = FP4_MAGNITUDE_CODES.iter().map(|&c| t[c as usize]).collect();
        assert!(mags.windows(2).all(|w| w[0] < w[1]), "{mags:?}");
        for i in 0..7 {
            let mid = (mags[i] + mags[i + 1]) / 2.0;
            assert!((mid - FP4_THRESHOLDS[i]).abs() < 1e-6, "{i}");
        }
    }
}
