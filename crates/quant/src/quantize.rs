//! Quantizing a loaded model in place: every decoder projection's dense base weight is replaced by a
//! quantized kernel ([`quantize_weight`] picks it by method) and the dense tensor's storage is released;
//! embeddings, norms and `lm_head` stay in their dtype, as bitsandbytes/transformers leave them.

use crate::format::{quant_kernel, QuantKernel, QuantMethod, QuantSpec, QuantWeight};
use crate::quant_linear::QuantLinear;
use crate::QuantError;
use ferrotune_model::{BaseWeight, LlamaForCausalLM};
use tch::Tensor;

/// What a quantization did and the memory it left.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QuantReport {
    /// `nf4`, `fp4`, `int8`, ...
    pub method: String,
    /// Projections replaced by quantized kernels.
    pub projections: usize,
    /// Parameters of those projections and the bytes their kernels hold (packed + quantization state).
    pub quantized_params: u64,
    pub quantized_bytes: u64,
    /// Every other (dense) parameter and its bytes.
    pub dense_params: u64,
    pub dense_bytes: u64,
}

impl QuantReport {
    /// Bytes per parameter over the quantized projections only (NF4 + double quant ≈ 0.516).
    pub fn bytes_per_quantized_param(&self) -> f64 {
        self.quantized_bytes as f64 / self.quantized_params.max(1) as f64
    }
    /// Bytes per parameter over the whole model (quantized projections + dense rest).
    pub fn bytes_per_param(&self) -> f64 {
        (self.quantized_bytes + self.dense_bytes) as f64
            / (self.quantized_params + self.dense_params).max(1) as f64
    }
}

/// The quantized kernel for one dense weight [out, in] (`name` for errors). nf4/fp4/int8 are
/// [`QuantLinear`]s; other methods plug in here.
pub fn quantize_weight(
    name: &str,
    w: &Tensor,
    spec: &QuantSpec,
) -> Result<Box<dyn QuantKernel>, QuantError> {
    match &spec.method {
        QuantMethod::Nf4 | QuantMethod::Fp4 | QuantMethod::Int8 { .. } => {
            let q = QuantLinear::quantize(w, spec)
                .map_err(|e| QuantError::tensor(name, e.to_string()))?;
            Ok(Box::new(q))
        }
        QuantMethod::Rtn { .. } => Err(QuantError::Spec(format!(
            "`{name}`: round-to-nearest int4 is not available in this build"
        ))),
        QuantMethod::Gptq { .. } => Err(QuantError::Spec(format!(
            "`{name}`: GPTQ needs calibration activations; it cannot quantize a weight alone"
        ))),
    }
}

/// Releases the storage of a tensor that other handles (the var store) may still share: its data is
/// replaced by an empty tensor for every holder of the same tensor.
pub(crate) fn release(mut t: Tensor) {
    let empty = Tensor::empty([0], (t.kind(), t.device()));
    t.set_data(&empty);
}

/// Replaces the base weight of `model.layers.*.{q,k,v,o,gate,up,down}_proj` by a quantized kernel per `spec`,
/// freeing each dense weight as soon as it is quantized. Projections that are already quantized are kept.
pub fn quantize_model(
    model: &mut LlamaForCausalLM,
    spec: &QuantSpec,
) -> Result<QuantReport, QuantError> {
    spec.validate()?;
    let _g = tch::no_grad_guard();
    for (i, layer) in model.model.layers.iter_mut().enumerate() {
        for (name, lin) in layer.projections_mut() {
            let key = format!("model.layers.{i}.{name}.weight");
            let BaseWeight::Dense(w) = &lin.weight else {
                continue;
            };
            if !lin.merged.is_empty() {
                tracing::warn!(
                    "{key}: quantizing a weight with merged adapters {:?}",
                    lin.merged
                );
            }
            let k = quantize_weight(&key, w, spec)?;
            if let BaseWeight::Dense(old) = std::mem::replace(&mut lin.weight, QuantWeight::base(k))
            {
                release(old);
            }
        }
    }
    let mut report = memory_report(model);
    report.method = spec.method_name().to_string();
    tracing::info!(
        method = report.method,
        projections = report.projections,
        bytes_per_quantized_param = report.bytes_per_quantized_param(),
        "quantized"
    );
    Ok(report)
}

/// Counts the quantized projections and the dense rest of `model` (method left empty when none is quantized).
pub fn memory_report(model: &LlamaForCausalLM) -> QuantReport {
    let mut r = QuantReport::default();
    for layer in &model.model.layers {
        for (_, lin) in layer.projections() {
            if let Some(k) = quant_kernel(&lin.weight) {
                let (o, i) = k.shape();
                r.projections += 1;
                r.quantized_params += (o * i) as u64;
                r.quantized_bytes += k.resident_bytes() as u64;
                if r.method.is_empty() {
                    r.method = k.method().to_string();
                }
            }
        }
    }
    for (_, t) in model.named_parameters() {
        r.dense_params += t.numel() as u64;
        r.dense_bytes += (t.numel() * t.kind().elt_size_in_bytes()) as u64;
    }
    r
}
