//! QLoRA's frozen base: the `quantization_bit` / `quantization_type` / `double_quantization` keys of the
//! train config turned into a [`QuantSpec`] (compute dtype from `bf16` / `fp16` / fp32), the base loaded
//! with ferrotune-quant's streaming loader (each decoder projection quantized as it is read, so the peak is
//! the quantized model plus one tensor), or a randomly initialised base quantized in place.
//!
//! Only the seven decoder projections are quantized (embeddings, norms and `lm_head` stay in the compute
//! dtype, as bitsandbytes leaves them); LoRA goes on top and trains in fp32. The adapter is saved in plain
//! PEFT format and loads on the 16-bit base.

use crate::error::TrainError;
use ferrotune_core::train_config::{QuantizationType, TrainConfig};
use ferrotune_core::DType;
use ferrotune_model::LlamaForCausalLM;
use ferrotune_quant::{QuantMethod, QuantSpec};
use tch::Device;

/// The quantization the config asks for, if any.
pub fn quant_spec(cfg: &TrainConfig) -> Option<QuantSpec> {
    let bits = cfg.quantization_bit?;
    let method = match (bits, cfg.quantization_type) {
        (8, _) => QuantMethod::Int8 { threshold: None },
        (_, QuantizationType::Nf4) => QuantMethod::Nf4,
        (_, QuantizationType::Fp4) => QuantMethod::Fp4,
    };
    let mut spec =
        QuantSpec::new(method).with_compute_dtype(ferrotune_model::kind_of(cfg.compute_dtype()));
    spec.double_quant = bits == 4 && cfg.double_quantization;
    Some(spec)
}

/// Loads `model_name_or_path` in `dtype` on `device`: quantized while streaming when the config asks for
/// QLoRA; a directory that is already quantized (written by `ferrotune quantize`) loads as stored.
pub fn load_base(
    cfg: &TrainConfig,
    dtype: DType,
    device: Device,
) -> Result<(LlamaForCausalLM, tch::nn::VarStore), TrainError> {
    let spec = quant_spec(cfg);
    let ((model, vs, _), used) =
        ferrotune_quant::load_model(&cfg.model_name_or_path, dtype, device, spec.as_ref())?;
    if let Some(s) = used {
        let r = ferrotune_quant::memory_report(&model);
        tracing::info!(
            method = s.method_name(),
            double_quant = s.double_quant,
            projections = r.projections,
            bytes_per_quantized_param = format!("{:.4}", r.bytes_per_quantized_param()),
            "frozen base quantized"
        );
    }
    Ok((model, vs))
}

/// Quantizes a model that is already in memory (a `train_from_scratch` base) when the config asks for it.
pub fn quantize_in_place(
    cfg: &TrainConfig,
    model: &mut LlamaForCausalLM,
) -> Result<(), TrainError> {
    if let Some(spec) = quant_spec(cfg) {
        ferrotune_quant::quantize_model(model, &spec)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_follows_the_llama_factory_keys() {
        let mut cfg = TrainConfig {
            quantization_bit: Some(4),
            bf16: true,
            ..Default::default()
        };
        let s = quant_spec(&cfg).unwrap();
        assert_eq!(s.method, QuantMethod::Nf4);
        assert!(s.double_quant);
        assert_eq!(s.compute_dtype, tch::Kind::BFloat16);
        cfg.quantization_type = QuantizationType::Fp4;
        cfg.double_quantization = false;
        cfg.bf16 = false;
        let s = quant_spec(&cfg).unwrap();
        assert_eq!(
            (s.method.clone(), s.double_quant),
            (QuantMethod::Fp4, false)
        );
        assert_eq!(s.compute_dtype, tch::Kind::Float);
        cfg.quantization_bit = Some(8);
        let s = quant_spec(&cfg).unwrap();
        assert_eq!(s.method, QuantMethod::Int8 { threshold: None });
        assert!(!s.double_quant);
        cfg.quantization_bit = None;
        assert!(quant_spec(&cfg).is_none());
    }
}
