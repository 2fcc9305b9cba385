//! `ferrotune quantize`: writes a pre-quantized checkpoint of a 16-bit model directory — NF4 / FP4 (optional
//! double quantization) or int8 (optional outlier threshold), quantized layer by layer while streaming the
//! weights — with `quantization_config` in `config.json` and the tokenizer files copied. Each method has its
//! own arm in [`run`].

use anyhow::Context;
use ferrotune_core::{DType, DeviceSpec};
use ferrotune_model::{kind_of, resolve_device};
use ferrotune_quant::{QuantMethod, QuantSpec};
use std::path::PathBuf;

/// `--method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MethodArg {
    /// 4-bit NormalFloat, blockwise absmax (bitsandbytes).
    Nf4,
    /// 4-bit float, blockwise absmax (bitsandbytes).
    Fp4,
    /// LLM.int8-style per-row int8.
    Int8,
    /// GPTQ int4 with calibration samples (--calib-dataset; --group-size, --act-order).
    Gptq,
    /// Round-to-nearest int4 per group of --group-size input columns (GPTQ's baseline).
    Rtn,
}

#[derive(Debug, clap::Args)]
pub struct QuantizeArgs {
    /// Quantization method.
    #[arg(long, value_enum)]
    pub method: MethodArg,
    /// The 16-bit model directory (HF layout).
    #[arg(long)]
    pub model: PathBuf,
    /// Where to write the quantized checkpoint (replaced atomically).
    #[arg(long)]
    pub out: PathBuf,
    /// nf4/fp4: quantize the absmax again (8-bit, blocks of 256), ≈0.37 bits/param less.
    #[arg(long)]
    pub double_quant: bool,
    /// dtype the quantized layers dequantize to and multiply in.
    #[arg(long, default_value = "bf16")]
    pub compute_dtype: DType,
    /// int8: input columns holding a weight with |w| ≥ this stay 16-bit (bitsandbytes' default is 6.0).
    #[arg(long)]
    pub int8_threshold: Option<f32>,
    /// nf4/fp4 block size (values sharing one absmax).
    #[arg(long, default_value_t = ferrotune_quant::DEFAULT_BLOCK_SIZE)]
    pub block_size: i64,
    /// dtype of the weights left unquantized (embeddings, norms, lm_head); default: the checkpoint's
    /// torch_dtype, else fp32.
    #[arg(long)]
    pub dtype: Option<DType>,
    /// Device to quantize on.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// CPU threads for libtorch's intra-op parallelism (default: libtorch's choice, OMP_NUM_THREADS or
    /// one per core). GPTQ runs many small tensor ops: on a busy machine fewer threads than cores avoid
    /// OpenMP oversubscription.
    #[arg(long)]
    pub threads: Option<i32>,
    /// Largest shard, e.g. 5GB, 500MB, 2GiB or a byte count.
    #[arg(long, default_value = "5GB")]
    pub max_shard_size: String,
    /// gptq/rtn: bits per weight (4).
    #[arg(long, default_value_t = 4)]
    pub bits: u8,
    /// gptq/rtn: input columns sharing one scale and zero point.
    #[arg(long, default_value_t = 128)]
    pub group_size: i64,
    /// gptq: quantize columns by descending Hessian diagonal (stores each column's group as g_idx).
    #[arg(long)]
    pub act_order: bool,
    /// gptq: calibration data, a dataset name in --dataset-dir/dataset_info.json or a .txt/.json/.jsonl file.
    #[arg(long)]
    pub calib_dataset: Option<String>,
    /// gptq: the directory of dataset_info.json.
    #[arg(long, default_value = "datasets")]
    pub dataset_dir: PathBuf,
    /// gptq: calibration samples (fewer when the dataset is shorter).
    #[arg(long, default_value_t = 128)]
    pub nsamples: usize,
    /// gptq: tokens per calibration sample (capped by the dataset and max_position_embeddings).
    #[arg(long, default_value_t = 2048)]
    pub seq_len: usize,
    /// gptq: dampening as a fraction of the mean Hessian diagonal.
    #[arg(long, default_value_t = 0.01)]
    pub percdamp: f64,
    /// gptq: seed of the calibration sample order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(a: QuantizeArgs) -> anyhow::Result<()> {
    if let Some(t) = a.threads {
        if t < 1 {
            anyhow::bail!("--threads must be at least 1 (got {t})");
        }
        tch::set_num_threads(t);
    }
    tracing::info!(
        threads = tch::get_num_threads(),
        "libtorch intra-op threads"
    );
    match a.method {
        MethodArg::Nf4 | MethodArg::Fp4 | MethodArg::Int8 => run_bnb(&a),
        MethodArg::Gptq | MethodArg::Rtn => crate::gptq_cmd::run_int4(&a),
        // other methods: add an arm here
    }
}

/// The spec of the bitsandbytes-style methods from the flags.
fn bnb_spec(a: &QuantizeArgs) -> anyhow::Result<QuantSpec> {
    let method = match a.method {
        MethodArg::Nf4 => QuantMethod::Nf4,
        MethodArg::Fp4 => QuantMethod::Fp4,
        MethodArg::Int8 => QuantMethod::Int8 {
            threshold: a.int8_threshold,
        },
        MethodArg::Gptq | MethodArg::Rtn => anyhow::bail!("not a bitsandbytes method"),
    };
    if a.int8_threshold.is_some() && a.method != MethodArg::Int8 {
        anyhow::bail!("--int8-threshold applies to --method int8 only");
    }
    let spec = QuantSpec {
        method,
        double_quant: a.double_quant,
        compute_dtype: kind_of(a.compute_dtype),
        block_size: a.block_size,
    };
    spec.validate()?;
    Ok(spec)
}

/// The dtype of the weights that stay dense: `--dtype`, else the checkpoint's `torch_dtype`, else fp32.
fn dense_dtype(a: &QuantizeArgs) -> anyhow::Result<DType> {
    if let Some(d) = a.dtype {
        return Ok(d);
    }
    let cfg = ferrotune_model::LlamaConfig::from_json_file(&a.model.join("config.json"))?;
    Ok(cfg.torch_dtype.unwrap_or(DType::F32))
}

fn run_bnb(a: &QuantizeArgs) -> anyhow::Result<()> {
    let spec = bnb_spec(a)?;
    if ferrotune_quant::dir_quantization(&a.model)?.is_some() {
        anyhow::bail!("{} is already quantized", a.model.display());
    }
    let dtype = dense_dtype(a)?;
    let device = resolve_device(a.device);
    let max_shard = crate::model_cmd::parse_size(&a.max_shard_size)?;
    let (model, _vs, _cfg) = ferrotune_quant::load_quantized(&a.model, &spec, dtype, device)
        .with_context(|| format!("quantizing {}", a.model.display()))?;
    let report = save_with_report(&model, &spec, dtype, a, max_shard)?;
    eprintln!(
        "quantized {} projections of {} to {} ({:.4} bytes/param over them, {:.4} over the model) → {}",
        report.projections,
        a.model.display(),
        spec.method_name(),
        report.bytes_per_quantized_param(),
        report.bytes_per_param(),
        a.out.display()
    );
    Ok(())
}

/// The spec of `--quantization-bit 4|8 [--quantization-type nf4|fp4]` (quantize at load, as LLaMA-Factory's
/// `quantization_bit`): 4 bits with double quantization, computing in `compute`.
/// Writes the quantized `model` to `a.out` (tokenizer and config from `a.model`) and returns its memory
/// report.
pub fn save_with_report(
    model: &ferrotune_model::LlamaForCausalLM,
    spec: &QuantSpec,
    dtype: DType,
    a: &QuantizeArgs,
    max_shard: u64,
) -> anyhow::Result<ferrotune_quant::QuantReport> {
    let report = ferrotune_quant::memory_report(model);
    ferrotune_quant::save_quantized(model, spec, &a.out, Some(dtype), Some(&a.model), max_shard)
        .with_context(|| format!("writing {}", a.out.display()))?;
    Ok(report)
}

pub fn load_time_spec(
    bits: Option<&str>,
    four_bit_type: &str,
    compute: DType,
) -> anyhow::Result<Option<QuantSpec>> {
    let method = match (bits, four_bit_type) {
        (None, _) => return Ok(None),
        (Some("8"), _) => QuantMethod::Int8 { threshold: None },
        (Some("4"), "nf4") => QuantMethod::Nf4,
        (Some("4"), "fp4") => QuantMethod::Fp4,
        (b, t) => anyhow::bail!("unsupported quantization: {b:?} bits, type {t}"),
    };
    let double_quant = !matches!(method, QuantMethod::Int8 { .. });
    Ok(Some(QuantSpec {
        double_quant,
        ..QuantSpec::new(method).with_compute_dtype(kind_of(compute))
    }))
}
