//! `ferrotune merge-lora` (fold a PEFT adapter into its base and write a full HF checkpoint) and
//! `ferrotune eval` (per-token log-probabilities and perplexity of each line of a text file).

use anyhow::{bail, Context};
use ferrotune_core::{DType, DeviceSpec};
use ferrotune_model::{resolve_device, save_pretrained, AttentionMask};
use serde::Serialize;
use std::path::PathBuf;
use tch::{Kind, Tensor};

#[derive(Debug, clap::Args)]
pub struct MergeLoraArgs {
    /// The base model directory (HF layout).
    #[arg(long)]
    base: PathBuf,
    /// The PEFT adapter directory (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    adapter: PathBuf,
    /// Where to write the merged checkpoint (replaced atomically).
    #[arg(long)]
    out: PathBuf,
    /// dtype of the loaded and written weights (default: the base's torch_dtype, else fp32); each weight's
    /// merge is computed in fp32 and rounded once.
    #[arg(long)]
    dtype: Option<DType>,
    /// Largest shard, e.g. 5GB, 500MB, 2GiB or a byte count.
    #[arg(long, default_value = "5GB")]
    max_shard_size: String,
    /// Device to merge on.
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// Quantize the 16-bit base at load (4: nf4/fp4 with double quant, 8: int8), as it was during QLoRA
    /// training, then dequantize and merge. A pre-quantized base directory is dequantized without it.
    #[arg(long, value_parser = ["4", "8"])]
    quantization_bit: Option<String>,
    /// The 4-bit data type with --quantization-bit 4.
    #[arg(long, default_value = "nf4", value_parser = ["nf4", "fp4"])]
    quantization_type: String,
}

/// Parses `5GB`, `500MB`, `2GiB`, `123` (bytes), as transformers does (GB = 10⁹, GiB = 2³⁰).
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let t = s.trim().to_ascii_uppercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .with_context(|| format!("size `{s}`: no number"))?;
    let mult = match unit.trim() {
        "" | "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KIB" => 1024.0,
        "MIB" => 1024.0 * 1024.0,
        "GIB" => 1024.0 * 1024.0 * 1024.0,
        u => bail!("size `{s}`: unknown unit `{u}` (B, KB, MB, GB, KiB, MiB, GiB)"),
    };
    Ok((n * mult) as u64)
}

pub fn merge_lora(a: MergeLoraArgs) -> anyhow::Result<()> {
    let shard = parse_size(&a.max_shard_size)?;
    let device = resolve_device(a.device);
    let base_cfg = ferrotune_model::LlamaConfig::from_json_file(&a.base.join("config.json"))?;
    let out_dtype = a.dtype.or(base_cfg.torch_dtype).unwrap_or(DType::F32);
    tracing::info!(base = %a.base.display(), adapter = %a.adapter.display(), dtype = %out_dtype, "merging");
    let spec = crate::quant_cmd::load_time_spec(
        a.quantization_bit.as_deref(),
        &a.quantization_type,
        DType::F32,
    )?;
    let quantized = spec.is_some() || ferrotune_quant::dir_quantization(&a.base)?.is_some();
    // A quantized base is dequantized to fp32, merged in fp32 and rounded once to `out_dtype` on saving.
    let load_dtype = if quantized { DType::F32 } else { out_dtype };
    let ((mut model, _vs, _), _) =
        ferrotune_quant::load_model(&a.base, load_dtype, device, spec.as_ref())
            .with_context(|| format!("loading the base model {}", a.base.display()))?;
    if quantized {
        let n = ferrotune_quant::dequantize_model(&mut model, Kind::Float);
        tracing::warn!("{}", ferrotune_quant::MERGE_ROUNDING_WARNING);
        eprintln!(
            "warning: dequantized {n} projections: {}",
            ferrotune_quant::MERGE_ROUNDING_WARNING
        );
    }
    model
        .load_lora("merge", &a.adapter, Some(Kind::Float))
        .with_context(|| format!("loading the adapter {}", a.adapter.display()))?;
    model.merge_lora("merge")?;
    save_pretrained(&model, &a.out, Some(out_dtype), shard.max(1))
        .with_context(|| format!("writing {}", a.out.display()))?;
    for f in [
        "tokenizer.model",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        let src = a.base.join(f);
        if src.is_file() {
            let bytes =
                std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
            ferrotune_core::write_atomic(a.out.join(f), &bytes)?;
        }
    }
    eprintln!(
        "merged {} into {} → {} ({out_dtype})",
        a.adapter.display(),
        a.base.display(),
        a.out.display()
    );
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// The model directory (HF layout, with its tokenizer).
    #[arg(long)]
    model: PathBuf,
    /// A PEFT adapter directory to apply.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// One text per line (empty lines are skipped).
    #[arg(long)]
    text_file: PathBuf,
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
    /// Compute dtype.
    #[arg(long, default_value = "fp32")]
    dtype: DType,
    #[arg(long, default_value = "auto")]
    device: DeviceSpec,
    /// Do not prepend the BOS token.
    #[arg(long)]
    no_bos: bool,
    /// Quantize a 16-bit model while loading: 4 (nf4/fp4 with double quant) or 8 (int8), computing in
    /// --dtype. A pre-quantized directory (`ferrotune quantize`) loads as stored without it.
    #[arg(long, value_parser = ["4", "8"])]
    quantization_bit: Option<String>,
    /// The 4-bit data type with --quantization-bit 4.
    #[arg(long, default_value = "nf4", value_parser = ["nf4", "fp4"])]
    quantization_type: String,
}

#[derive(Debug, Serialize)]
struct TokenScore {
    id: u32,
    piece: String,
    logprob: f64,
}

#[derive(Debug, Serialize)]
struct LineScore {
    line: usize,
    text: String,
    /// Scored tokens: every token after the first (the first has no context).
    tokens: Vec<TokenScore>,
    nll: f64,
    perplexity: f64,
}

#[derive(Debug, Serialize)]
struct EvalReport {
    lines: Vec<LineScore>,
    tokens: usize,
    perplexity: f64,
}

pub fn eval(a: EvalArgs) -> anyhow::Result<()> {
    let device = resolve_device(a.device);
    let tok = ferrotune_tokenizer::Tokenizer::from_path(&a.model)
        .with_context(|| format!("loading the tokenizer of {}", a.model.display()))?;
    let spec = crate::quant_cmd::load_time_spec(
        a.quantization_bit.as_deref(),
        &a.quantization_type,
        a.dtype,
    )?;
    let ((mut model, _vs, _), _) =
        ferrotune_quant::load_model(&a.model, a.dtype, device, spec.as_ref())
            .with_context(|| format!("loading {}", a.model.display()))?;
    if let Some(ad) = &a.adapter {
        model
            .load_lora("eval", ad, None)
            .with_context(|| format!("loading the adapter {}", ad.display()))?;
    }
    let text = std::fs::read_to_string(&a.text_file)
        .with_context(|| format!("reading {}", a.text_file.display()))?;
    let _g = tch::no_grad_guard();
    let mut lines = vec![];
    let (mut total_nll, mut total_n) = (0.0, 0usize);
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let ids = tok
            .encode(line, !a.no_bos, false)
            .with_context(|| format!("line {}: encoding", i + 1))?;
        if ids.len() < 2 {
            tracing::warn!("line {}: fewer than two tokens, nothing to score", i + 1);
            continue;
        }
        let t = ids.len() as i64;
        let x = Tensor::from_slice(&ids.iter().map(|&v| v as i64).collect::<Vec<_>>())
            .view([1, t])
            .to_device(device);
        let pos = Tensor::arange(t, (Kind::Int64, device)).view([1, t]);
        let logits = model.forward(&x, &pos, &AttentionMask::Causal, None);
        let lp = logits
            .get(0)
            .narrow(0, 0, t - 1)
            .to_kind(Kind::Float)
            .log_softmax(-1, Kind::Float);
        let tgt = x.get(0).narrow(0, 1, t - 1).unsqueeze(1);
        let scores: Vec<f64> = Vec::try_from(
            lp.gather(1, &tgt, false)
                .squeeze_dim(1)
                .to_kind(Kind::Double)
                .to_device(tch::Device::Cpu),
        )?;
        let tokens: Vec<TokenScore> = ids[1..]
            .iter()
            .zip(&scores)
            .map(|(&id, &logprob)| TokenScore {
                id,
                piece: tok.id_to_piece(id).unwrap_or_default(),
                logprob,
            })
            .collect();
        let nll = -scores.iter().sum::<f64>() / scores.len() as f64;
        total_nll += -scores.iter().sum::<f64>();
        total_n += scores.len();
        lines.push(LineScore {
            line: i + 1,
            text: line.to_string(),
            tokens,
            nll,
            perplexity: nll.exp(),
        });
    }
    if total_n == 0 {
        bail!(
            "{}: no line with at least two tokens",
            a.text_file.display()
        );
    }
    let report = EvalReport {
        lines,
        tokens: total_n,
        perplexity: (total_nll / total_n as f64).exp(),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for l in &report.lines {
            println!(
                "line {}: {} tokens scored, perplexity {:.4}",
                l.line,
                l.tokens.len(),
                l.perplexity
            );
            for t in &l.tokens {
                println!("  {:>8}  {:<20} {:.6}", t.id, t.piece, t.logprob);
            }
        }
        println!(
            "total: {} tokens, perplexity {:.4}",
            report.tokens, report.perplexity
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_like_transformers() {
        assert_eq!(parse_size("5GB").unwrap(), 5_000_000_000);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("500mb").unwrap(), 500_000_000);
        assert_eq!(parse_size("1234").unwrap(), 1234);
        assert!(parse_size("5 parsecs").is_err());
    }
}
