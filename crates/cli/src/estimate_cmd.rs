//! `ferrotune estimate`: predicted training memory (weights / gradients / optimizer / activations /
//! logits+loss / runtime, and the total) for a Llama-2 preset or a model directory, on one device and per GPU
//! under each FSDP sharding strategy; `--table` prints a hardware table like LLaMA-Factory's (Full / LoRA /
//! QLoRA rows, 7B / 13B / 70B columns). The arithmetic is `ferrotune_core::estimate`.

use anyhow::Context;
use ferrotune_core::estimate::{
    estimate, estimate_sharded, Breakdown, EstimateOptions, Method, Sharding, Target,
};
use ferrotune_core::model_shape::{ModelShape, PROJECTIONS};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MethodArg {
    Full,
    Lora,
    Qlora,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceArg {
    Gpu,
    Cpu,
}

#[derive(Debug, clap::Args)]
pub struct EstimateArgs {
    /// `7b`, `13b`, `70b` (Llama-2 shapes; 70b with 8 KV heads) or a model directory with config.json.
    #[arg(long, default_value = "7b")]
    model: String,
    #[arg(long, value_enum, default_value_t = MethodArg::Lora)]
    method: MethodArg,
    /// Base weight bits: 32 or 16 (dense), 8 (int8), 4 (NF4/FP4). Default: 4 for qlora, else 16.
    #[arg(long)]
    bits: Option<u32>,
    /// Compute dtype (fp32, bf16, fp16). Default: fp32 with --bits 32, else bf16.
    #[arg(long)]
    dtype: Option<ferrotune_core::DType>,
    /// Weights, gradients and AdamW state all in bf16 (llama-recipes' pure_bf16).
    #[arg(long)]
    pure_bf16: bool,
    /// 4-bit without double quantization of the absmax (fp32 absmax per block of 64).
    #[arg(long)]
    no_double_quant: bool,
    #[arg(long, default_value_t = 2048)]
    seq: u64,
    #[arg(long, default_value_t = 1)]
    batch: u64,
    #[arg(long)]
    gradient_checkpointing: bool,
    /// Model a loss head that materialises the full logits (instead of ferrotune's chunked fused head).
    #[arg(long)]
    full_logits: bool,
    #[arg(long, default_value_t = 8)]
    lora_rank: u64,
    /// Comma-separated projections, or `all`.
    #[arg(long, default_value = "all")]
    lora_target: String,
    /// Ranks for the per-GPU sharding columns (1: only the single-device column).
    #[arg(long, default_value_t = 8)]
    world_size: u64,
    /// GPUs per node (HYBRID_SHARD shards within a node).
    #[arg(long, default_value_t = 8)]
    gpus_per_node: u64,
    /// GPU adds a CUDA context/workspace term; CPU libtorch's resident baseline.
    #[arg(long, value_enum, default_value_t = DeviceArg::Gpu)]
    device: DeviceArg,
    /// The hardware table (Full / LoRA / QLoRA rows × 7B / 13B / 70B) at --seq/--batch instead.
    #[arg(long)]
    table: bool,
    /// One JSON object on stdout.
    #[arg(long)]
    json: bool,
}

fn shape_of(model: &str) -> anyhow::Result<ModelShape> {
    if let Some(s) = ModelShape::preset(model) {
        return Ok(s);
    }
    let dir = Path::new(model);
    let file = if dir.is_dir() {
        dir.join("config.json")
    } else {
        dir.to_path_buf()
    };
    let text = std::fs::read_to_string(&file).with_context(|| {
        format!(
            "--model {model}: not a preset (7b, 13b, 70b) and {} is not readable",
            file.display()
        )
    })?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| model.to_string());
    let mut s = ModelShape::from_config_json(&text, &file.display().to_string())?;
    s.name = name;
    Ok(s)
}

fn options(a: &EstimateArgs) -> anyhow::Result<EstimateOptions> {
    let method = match a.method {
        MethodArg::Full => Method::Full,
        MethodArg::Lora => Method::Lora,
        MethodArg::Qlora => Method::Qlora,
    };
    let bits = a
        .bits
        .unwrap_or(if method == Method::Qlora { 4 } else { 16 });
    let dtype = a.dtype.unwrap_or(if bits == 32 {
        ferrotune_core::DType::F32
    } else {
        ferrotune_core::DType::BF16
    });
    let targets: Vec<String> = if a.lora_target.trim() == "all" {
        PROJECTIONS.iter().map(|s| s.to_string()).collect()
    } else {
        a.lora_target
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    };
    Ok(EstimateOptions {
        method,
        bits,
        compute_bytes: dtype.size_in_bytes() as u64,
        pure_bf16: a.pure_bf16,
        double_quant: !a.no_double_quant,
        seq_len: a.seq,
        batch_size: a.batch,
        gradient_checkpointing: a.gradient_checkpointing,
        lora_rank: a.lora_rank,
        lora_targets: targets,
        chunked_loss: !a.full_logits,
        target: match a.device {
            DeviceArg::Gpu => Target::Gpu,
            DeviceArg::Cpu => Target::Cpu,
        },
    })
}

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

fn fmt_bytes(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.2} GiB", gib(b))
    } else {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    }
}

fn breakdown_json(b: &Breakdown) -> serde_json::Value {
    serde_json::json!({
        "weights": b.weights, "gradients": b.gradients, "optimizer": b.optimizer,
        "activations": b.activations, "logits_loss": b.logits, "runtime": b.runtime,
        "total": b.total(), "total_gib": gib(b.total()),
        "total_mib": b.total() as f64 / (1u64 << 20) as f64,
    })
}

pub fn run(a: EstimateArgs) -> anyhow::Result<()> {
    if a.table {
        return hardware_table(&a);
    }
    let shape = shape_of(&a.model)?;
    let o = options(&a)?;
    let one = estimate(&shape, &o).map_err(|m| anyhow::anyhow!(m))?;
    let mut columns = vec![("1 device".to_string(), one)];
    if a.world_size > 1 {
        for st in Sharding::ALL {
            let b = estimate_sharded(&shape, &o, st, a.world_size, a.gpus_per_node)
                .map_err(|m| anyhow::anyhow!(m))?;
            columns.push((st.name().to_string(), b));
        }
    }
    let method = format!("{:?}", o.method).to_lowercase();
    if a.json {
        let per: serde_json::Map<String, serde_json::Value> = columns
            .iter()
            .skip(1)
            .map(|(n, b)| (n.clone(), breakdown_json(b)))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "model": shape.name, "parameters": shape.total_params(),
                "trainable_parameters": match o.method { Method::Full => shape.total_params(),
                    _ => shape.lora_params(o.lora_rank, &o.lora_targets) },
                "method": method, "bits": o.bits, "compute_bytes": o.compute_bytes,
                "seq": o.seq_len, "batch": o.batch_size,
                "gradient_checkpointing": o.gradient_checkpointing,
                "world_size": a.world_size, "device": format!("{:?}", a.device).to_lowercase(),
                "single": breakdown_json(&one), "per_gpu": per,
            })
        );
        return Ok(());
    }
    println!(
        "{} ({:.2}B parameters), {method} {}-bit, compute {} B/elt, seq {} × batch {}{}",
        shape.name,
        shape.total_params() as f64 / 1e9,
        o.bits,
        o.compute_bytes,
        o.seq_len,
        o.batch_size,
        if o.gradient_checkpointing {
            ", gradient checkpointing"
        } else {
            ""
        }
    );
    if a.world_size > 1 {
        println!(
            "per GPU with {} ranks ({} per node for HYBRID_SHARD)",
            a.world_size, a.gpus_per_node
        );
    }
    print!("{:<14}", "");
    for (n, _) in &columns {
        print!("{n:>15}");
    }
    println!();
    type Row = fn(&Breakdown) -> u64;
    let rows: [(&str, Row); 7] = [
        ("weights", |b| b.weights),
        ("gradients", |b| b.gradients),
        ("optimizer", |b| b.optimizer),
        ("activations", |b| b.activations),
        ("logits/loss", |b| b.logits),
        (
            if a.device == DeviceArg::Gpu {
                "CUDA context"
            } else {
                "libtorch"
            },
            |b| b.runtime,
        ),
        ("total", |b| b.total()),
    ];
    for (name, f) in rows {
        print!("{name:<14}");
        for (_, b) in &columns {
            print!("{:>15}", fmt_bytes(f(b)));
        }
        println!();
    }
    Ok(())
}

/// LLaMA-Factory's hardware table layout: rows of method × bits, columns of model sizes, GiB on one GPU.
fn hardware_table(a: &EstimateArgs) -> anyhow::Result<()> {
    let rows: [(&str, Method, u32, bool); 5] = [
        ("Full (AMP)", Method::Full, 16, false),
        ("Full (pure bf16)", Method::Full, 16, true),
        ("LoRA", Method::Lora, 16, false),
        ("QLoRA", Method::Qlora, 8, false),
        ("QLoRA", Method::Qlora, 4, false),
    ];
    let sizes = ["7b", "13b", "70b"];
    let mut out = vec![];
    if !a.json {
        println!(
            "GiB on one GPU, seq {} × batch {}{}, LoRA r{} on {}",
            a.seq,
            a.batch,
            if a.gradient_checkpointing {
                ", gradient checkpointing"
            } else {
                ""
            },
            a.lora_rank,
            a.lora_target
        );
        println!(
            "{:<18}{:>6}{:>10}{:>10}{:>10}",
            "Method", "Bits", "7B", "13B", "70B"
        );
    }
    for (label, method, bits, pure) in rows {
        let mut o = options(a)?;
        o.method = method;
        o.bits = bits;
        o.compute_bytes = 2;
        o.pure_bf16 = pure;
        o.target = Target::Gpu;
        let mut cells = vec![];
        for s in sizes {
            let shape = ModelShape::preset(s).expect("a preset");
            cells.push(
                estimate(&shape, &o)
                    .map_err(|m| anyhow::anyhow!(m))?
                    .total(),
            );
        }
        if a.json {
            out.push(serde_json::json!({"method": label, "bits": bits,
                "gib": sizes.iter().zip(&cells).map(|(s, c)| (s.to_string(), serde_json::json!(gib(*c)))).collect::<serde_json::Map<_, _>>()}));
        } else {
            print!("{label:<18}{bits:>6}");
            for c in cells {
                print!("{:>10.1}", gib(c));
            }
            println!();
        }
    }
    if a.json {
        println!("{}", serde_json::Value::Array(out));
    }
    Ok(())
}
