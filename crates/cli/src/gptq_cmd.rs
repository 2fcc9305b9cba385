//! `ferrotune quantize --method gptq|rtn`: int4 with one scale and zero point per group of input columns.
//! GPTQ draws calibration windows from `--calib-dataset` (tokenized with the model's tokenizer) and quantizes
//! the decoder layer by layer on them (lit-llama's `quantize/gptq.py`); round-to-nearest needs no data.
//! The model is held in fp32 while quantizing; the checkpoint is written like the other methods
//! (`quantization_config` in `config.json`, dense tensors in `--dtype`, tokenizer files copied).

use crate::quant_cmd::{MethodArg, QuantizeArgs};
use anyhow::{bail, Context};
use ferrotune_core::DType;
use ferrotune_model::{kind_of, load_pretrained, resolve_device};
use ferrotune_quant::calibrate::{
    calibration_samples, dataset_texts, resolve_dataset, CalibConfig,
};
use ferrotune_quant::{GptqConfig, Int4Method, QuantMethod, QuantSpec};

pub fn run_int4(a: &QuantizeArgs) -> anyhow::Result<()> {
    let gptq = a.method == MethodArg::Gptq;
    if a.bits != 4 {
        bail!(
            "--method gptq|rtn writes 4-bit weights only (got --bits {})",
            a.bits
        );
    }
    if a.act_order && !gptq {
        bail!("--act-order applies to --method gptq only");
    }
    if a.double_quant || a.int8_threshold.is_some() {
        bail!("--double-quant and --int8-threshold do not apply to --method gptq|rtn");
    }
    if ferrotune_quant::dir_quantization(&a.model)?.is_some() {
        bail!("{} is already quantized", a.model.display());
    }
    let cfg = ferrotune_model::LlamaConfig::from_json_file(&a.model.join("config.json"))?;
    let dtype = a.dtype.or(cfg.torch_dtype).unwrap_or(DType::F32);
    let device = resolve_device(a.device);
    let max_shard = crate::model_cmd::parse_size(&a.max_shard_size)?;
    let method = if gptq {
        QuantMethod::Gptq {
            bits: 4,
            group_size: a.group_size,
            act_order: a.act_order,
        }
    } else {
        QuantMethod::Rtn {
            bits: 4,
            group_size: a.group_size,
        }
    };
    let spec = QuantSpec::new(method).with_compute_dtype(kind_of(a.compute_dtype));
    spec.validate()?;

    let samples = if gptq {
        let name = a
            .calib_dataset
            .as_deref()
            .context("--method gptq needs --calib-dataset NAME|FILE")?;
        let tok = ferrotune_tokenizer::Tokenizer::from_path(&a.model)
            .with_context(|| format!("loading the tokenizer of {}", a.model.display()))?;
        let src = resolve_dataset(name, &a.dataset_dir)?;
        let texts = dataset_texts(&src)?;
        let max_pos = usize::try_from(cfg.max_position_embeddings).unwrap_or(usize::MAX);
        let calib = CalibConfig {
            nsamples: a.nsamples,
            seq_len: a.seq_len.min(max_pos),
            seed: a.seed,
        };
        let s = calibration_samples(&texts, &tok, &calib)?;
        eprintln!(
            "calibration: {} samples of {} tokens from `{name}` ({} records)",
            s.size()[0],
            s.size()[1],
            texts.len()
        );
        Some(s)
    } else {
        if a.calib_dataset.is_some() {
            tracing::warn!("--calib-dataset is ignored by --method rtn");
        }
        None
    };

    let (mut model, _vs, _) = load_pretrained(&a.model, DType::F32, device)
        .with_context(|| format!("loading {}", a.model.display()))?;
    let narrow = model
        .model
        .layers
        .first()
        .map(|l| {
            l.projections()
                .iter()
                .any(|(_, p)| p.weight.shape().1 < a.group_size)
        })
        .unwrap_or(false);
    if narrow {
        eprintln!(
            "note: projections with fewer than {} input columns get one group (of all their columns)",
            a.group_size
        );
    }
    let n_layers = model.model.layers.len() as u64;
    let bar = indicatif::ProgressBar::new(n_layers).with_style(
        indicatif::ProgressStyle::with_template(
            "{msg} {bar:40} {pos}/{len} layers [{elapsed}<{eta}]",
        )
        .expect("a valid template"),
    );
    bar.set_message(format!("{} int4", spec.method_name()));
    let int4 = if gptq {
        Int4Method::Gptq(GptqConfig {
            group_size: a.group_size,
            act_order: a.act_order,
            percdamp: a.percdamp,
            ..GptqConfig::default()
        })
    } else {
        Int4Method::Rtn {
            group_size: a.group_size,
        }
    };
    let report =
        ferrotune_quant::quantize_model_int4(&mut model, int4, samples.as_ref(), |_| bar.inc(1))
            .with_context(|| format!("quantizing {}", a.model.display()))?;
    bar.finish_and_clear();
    let losses: Vec<f64> = report.iter().filter_map(|r| r.gptq_loss).collect();
    let mem = crate::quant_cmd::save_with_report(&model, &spec, dtype, a, max_shard)?;
    let loss = if losses.is_empty() {
        String::new()
    } else {
        format!(
            ", mean GPTQ loss {:.6}",
            losses.iter().sum::<f64>() / losses.len() as f64
        )
    };
    eprintln!(
        "quantized {} projections of {} to {} int4, group size {}{} ({:.4} bytes/param over them{loss}) → {}",
        report.len(),
        a.model.display(),
        spec.method_name(),
        a.group_size,
        if a.act_order { ", act-order" } else { "" },
        mem.bytes_per_quantized_param(),
        a.out.display()
    );
    Ok(())
}
