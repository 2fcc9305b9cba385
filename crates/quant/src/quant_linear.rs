//! `QuantLinear`: a decoder projection's base weight held as NF4 / FP4 (packed, blockwise absmax, optional
//! double quant) or int8 (row absmax, optional 16-bit outlier columns). The forward dequantizes on the fly
//! with tensor ops (CPU and CUDA) into the compute dtype and multiplies; the quantized tensors never require
//! grad, while the input's gradient flows, so LoRA adapters on top train (QLoRA). The dense weight is not
//! kept for the backward: it is dequantized again there (`recompute`).

use crate::blockwise::{quantize_4bit, FourBit, Packed4};
use crate::format::{QuantKernel, QuantMethod, QuantSpec};
use crate::int8::{quantize_int8, Int8Weight};
use crate::recompute;
use crate::QuantError;
use ferrotune_model::LinearKernel;
use tch::{Kind, Tensor};

/// The stored form of a [`QuantLinear`].
#[derive(Debug)]
pub enum QuantData {
    FourBit(Packed4),
    Int8(Int8Weight),
}

/// A quantized base weight [out, in] implementing [`LinearKernel`] and [`QuantKernel`].
#[derive(Debug)]
pub struct QuantLinear {
    pub data: QuantData,
    pub out_features: i64,
    pub in_features: i64,
    /// The dtype the forward dequantizes to and multiplies in.
    pub compute_dtype: Kind,
}

impl QuantLinear {
    /// Quantizes the dense weight `w` [out, in] (on its device) by `spec` (nf4, fp4 or int8).
    pub fn quantize(w: &Tensor, spec: &QuantSpec) -> Result<Self, QuantError> {
        let _g = tch::no_grad_guard();
        let size = w.size();
        let [out_f, in_f] = size[..] else {
            return Err(QuantError::Spec(format!(
                "a quantized linear needs a 2-d weight, got shape {size:?}"
            )));
        };
        let data = match spec.method {
            QuantMethod::Nf4 | QuantMethod::Fp4 => {
                let kind = if spec.method == QuantMethod::Nf4 {
                    FourBit::Nf4
                } else {
                    FourBit::Fp4
                };
                QuantData::FourBit(quantize_4bit(w, kind, spec.block_size, spec.double_quant))
            }
            QuantMethod::Int8 { threshold } => {
                QuantData::Int8(quantize_int8(w, threshold, spec.compute_dtype))
            }
            _ => return Err(not_bnb(spec)),
        };
        Ok(QuantLinear {
            data,
            out_features: out_f,
            in_features: in_f,
            compute_dtype: spec.compute_dtype,
        })
    }

    /// The dense weight [out, in] in fp32 (bit-exact bitsandbytes dequantization).
    pub fn dequantize_f32(&self) -> Tensor {
        match &self.data {
            QuantData::FourBit(p) => p
                .dequantize_f32()
                .reshape([self.out_features, self.in_features]),
            QuantData::Int8(q) => q.dequantize_f32(),
        }
    }

    /// Rebuilds a kernel stored by [`QuantKernel::tensors`] under `prefix`; `get(name)` returns the tensor of
    /// that full key (already on the target device).
    pub fn from_tensors(
        prefix: &str,
        shape: (i64, i64),
        spec: &QuantSpec,
        get: &mut dyn FnMut(&str) -> Option<Tensor>,
    ) -> Result<Self, QuantError> {
        let err = |m: String| QuantError::tensor(format!("{prefix}.weight"), m);
        let data = match spec.method {
            QuantMethod::Nf4 | QuantMethod::Fp4 => {
                let kind = if spec.method == QuantMethod::Nf4 {
                    FourBit::Nf4
                } else {
                    FourBit::Fp4
                };
                let key = format!("{prefix}.weight");
                let p = Packed4::from_tensors(kind, shape.0 * shape.1, spec.block_size, &mut |s| {
                    get(&format!("{key}{s}"))
                })
                .map_err(err)?;
                QuantData::FourBit(p)
            }
            QuantMethod::Int8 { .. } => {
                let q = Int8Weight::from_tensors(shape, spec.compute_dtype, &mut |s| {
                    get(&format!("{prefix}{s}"))
                })
                .map_err(err)?;
                QuantData::Int8(q)
            }
            _ => return Err(not_bnb(spec)),
        };
        Ok(QuantLinear {
            data,
            out_features: shape.0,
            in_features: shape.1,
            compute_dtype: spec.compute_dtype,
        })
    }
}

impl LinearKernel for QuantLinear {
    fn matmul(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let y = match &self.data {
            QuantData::FourBit(p) => {
                // Dequantized in bounded chunks straight into the compute dtype (bitsandbytes' values),
                // and again in the backward rather than kept for it.
                let (p, kind, shape) = (p.shallow_clone(), self.compute_dtype, self.shape());
                recompute::matmul_recomputing(&x.to_kind(self.compute_dtype), move || {
                    p.dequantize(kind).reshape([shape.0, shape.1])
                })
            }
            QuantData::Int8(q) => q.matmul(x, self.compute_dtype),
        };
        y.to_kind(kind)
    }

    fn dense_weight(&self, kind: Kind) -> Tensor {
        let _g = tch::no_grad_guard();
        match &self.data {
            QuantData::FourBit(p) => p
                .dequantize(kind)
                .reshape([self.out_features, self.in_features]),
            QuantData::Int8(q) => q.dequantize_f32().to_kind(kind),
        }
    }

    fn shape(&self) -> (i64, i64) {
        (self.out_features, self.in_features)
    }
}

impl QuantKernel for QuantLinear {
    fn method(&self) -> &'static str {
        match &self.data {
            QuantData::FourBit(p) => p.kind.name(),
            QuantData::Int8(_) => "int8",
        }
    }

    fn tensors(&self, prefix: &str) -> Vec<(String, Tensor)> {
        match &self.data {
            QuantData::FourBit(p) => p.tensors(&format!("{prefix}.weight")),
            QuantData::Int8(q) => q.tensors(prefix),
        }
    }

    fn resident_bytes(&self) -> usize {
        match &self.data {
            QuantData::FourBit(p) => p.resident_bytes(),
            QuantData::Int8(q) => q.resident_bytes(),
        }
    }
}

/// The error for a method `QuantLinear` does not hold (GPTQ/RTN have their own kernel).
fn not_bnb(spec: &QuantSpec) -> QuantError {
    QuantError::Spec(format!(
        "QuantLinear holds nf4/fp4/int8, not {}",
        spec.method_name()
    ))
}
