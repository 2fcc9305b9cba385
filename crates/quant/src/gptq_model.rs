//! Int4 quantization of a whole decoder, layer by layer (lit-llama's `quantize/gptq.py` flow): the
//! calibration samples are embedded once; for each decoder layer the seven projections are quantized in the
//! order their inputs become available (`q/k/v`, `o`, `gate/up`, `down`), each group's inputs collected by
//! running the samples through the layer with the earlier projections already quantized; then the samples
//! go through the fully quantized layer to become the next layer's inputs. Round-to-nearest needs no data.
//!
//! Inputs are captured without touching the model code: while a projection is being measured its base
//! weight is swapped for a [`CaptureKernel`] (a [`LinearKernel`] that multiplies by the dense weight and adds
//! each input to the layer's [`Hessian`]). Embeddings and `lm_head` stay in their dtype, as in GPTQ.

use crate::error::QuantError;
use crate::format::QuantWeight;
use crate::gptq::{gptq_quantize, GptqConfig, Hessian};
use crate::gptq_linear::Int4GroupLinear;
use crate::rtn::quantize_rtn;
use ferrotune_model::{BaseWeight, LinearKernel, LlamaForCausalLM};
use std::sync::{Arc, Mutex};
use tch::{Kind, Tensor};

/// Which int4 algorithm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Int4Method {
    /// Round to nearest, per group.
    Rtn { group_size: i64 },
    /// GPTQ with calibration inputs.
    Gptq(GptqConfig),
}

/// The projections of a decoder layer in the order GPTQ quantizes them; one group shares its input.
pub const SEQUENTIAL_GROUPS: [&[&str]; 4] = [
    &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
    &["self_attn.o_proj"],
    &["mlp.gate_proj", "mlp.up_proj"],
    &["mlp.down_proj"],
];

/// A dense weight that records its inputs into a Hessian while it multiplies.
#[derive(Debug)]
pub struct CaptureKernel {
    pub weight: Tensor,
    pub hessian: Arc<Mutex<Hessian>>,
}

impl LinearKernel for CaptureKernel {
    fn matmul(&self, x: &Tensor) -> Tensor {
        self.hessian
            .lock()
            .expect("hessian lock poisoned")
            .add_batch(x);
        x.matmul(&self.weight.tr())
    }
    fn dense_weight(&self, kind: Kind) -> Tensor {
        self.weight.to_kind(kind)
    }
    fn shape(&self) -> (i64, i64) {
        (self.weight.size()[0], self.weight.size()[1])
    }
}

/// One quantized projection in the report.
#[derive(Debug, Clone)]
pub struct LayerReport {
    /// Checkpoint key prefix (`model.layers.3.mlp.down_proj`).
    pub name: String,
    /// GPTQ's loss (`None` for round-to-nearest).
    pub gptq_loss: Option<f64>,
}

fn dense_of(w: &BaseWeight, name: &str) -> Result<Tensor, QuantError> {
    w.dense().map(Tensor::shallow_clone).ok_or_else(|| {
        QuantError::tensor(
            format!("{name}.weight"),
            "already quantized: int4 quantization needs a dense 16/32-bit base",
        )
    })
}

/// Quantizes every decoder projection of `model` to int4 in place (`BaseWeight::Kernel(Int4GroupLinear)`).
/// `samples` are token-id rows `[N, L]` (GPTQ only; ignored by RTN). `on_layer(i)` is called after each
/// decoder layer (progress).
pub fn quantize_model_int4(
    model: &mut LlamaForCausalLM,
    method: Int4Method,
    samples: Option<&Tensor>,
    mut on_layer: impl FnMut(usize),
) -> Result<Vec<LayerReport>, QuantError> {
    let _g = tch::no_grad_guard();
    let mut report = vec![];
    match method {
        Int4Method::Rtn { group_size } => {
            for (i, layer) in model.model.layers.iter_mut().enumerate() {
                for (n, lin) in layer.projections_mut() {
                    let name = format!("model.layers.{i}.{n}");
                    let q = quantize_rtn(&dense_of(&lin.weight, &name)?, group_size)?;
                    lin.weight = QuantWeight::base(Box::new(q));
                    report.push(LayerReport {
                        name,
                        gptq_loss: None,
                    });
                }
                on_layer(i);
            }
        }
        Int4Method::Gptq(cfg) => {
            let samples =
                samples.ok_or_else(|| QuantError::Spec("GPTQ needs calibration samples".into()))?;
            report = gptq_model(model, &cfg, samples, &mut on_layer)?;
        }
    }
    Ok(report)
}

fn gptq_model(
    model: &mut LlamaForCausalLM,
    cfg: &GptqConfig,
    samples: &Tensor,
    on_layer: &mut dyn FnMut(usize),
) -> Result<Vec<LayerReport>, QuantError> {
    let device = model.model.embed_tokens.weight.device();
    let (n, len) = samples
        .size2()
        .map_err(|_| QuantError::Spec("calibration samples must be [N, L] token ids".into()))?;
    let ids = samples.to_kind(Kind::Int64).to_device(device);
    let mut inps: Vec<Tensor> = (0..n)
        .map(|j| model.model.embed_tokens.forward(&ids.narrow(0, j, 1)))
        .collect();
    let kind = inps.first().map(Tensor::kind).unwrap_or(Kind::Float);
    let pos = Tensor::arange(len, (Kind::Int64, device)).view([1, len]);
    let (cos, sin) = model.model.rotary.cos_sin(&pos, kind);
    let mut report = vec![];
    for i in 0..model.model.layers.len() {
        for group in SEQUENTIAL_GROUPS {
            let mut captures = vec![];
            {
                let layer = &mut model.model.layers[i];
                for (pname, lin) in layer.projections_mut() {
                    if !group.contains(&pname) {
                        continue;
                    }
                    let name = format!("model.layers.{i}.{pname}");
                    let w = dense_of(&lin.weight, &name)?;
                    let hess = Arc::new(Mutex::new(Hessian::new(w.size()[1], cfg.kind, device)));
                    captures.push((pname, name, w.shallow_clone(), hess.clone()));
                    lin.weight = BaseWeight::Kernel(Box::new(CaptureKernel {
                        weight: w,
                        hessian: hess,
                    }));
                }
            }
            let layer = &model.model.layers[i];
            for x in &inps {
                let _ = layer.forward(x, &cos, &sin, None, None);
            }
            let layer = &mut model.model.layers[i];
            for (pname, name, w, hess) in captures {
                let h = std::mem::replace(
                    &mut *hess.lock().expect("hessian lock poisoned"),
                    Hessian::new(0, cfg.kind, device),
                );
                let out = gptq_quantize(&w, &h.h, cfg)
                    .map_err(|e| QuantError::tensor(format!("{name}.weight"), e.to_string()))?;
                tracing::debug!(layer = %name, loss = out.loss, "gptq");
                let q: Int4GroupLinear = out.layer;
                for (p, lin) in layer.projections_mut() {
                    if p == pname {
                        lin.weight = QuantWeight::base(Box::new(q));
                        break;
                    }
                }
                report.push(LayerReport {
                    name,
                    gptq_loss: Some(out.loss),
                });
            }
        }
        let layer = &model.model.layers[i];
        inps = inps
            .iter()
            .map(|x| layer.forward(x, &cos, &sin, None, None))
            .collect();
        on_layer(i);
    }
    Ok(report)
}
