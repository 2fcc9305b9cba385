//! Training-memory arithmetic for `ferrotune estimate`: weights, gradients, optimizer state, activations
//! and the logits/loss buffers of full / LoRA / QLoRA fine-tuning, on one device and per GPU under each
//! FSDP sharding strategy.
//!
//! The counts follow what ferrotune's recipe keeps alive at its peak (the start of the backward pass, when
//! every saved activation and the loss buffers are alive; gradients are counted as resident, as they are
//! with gradient accumulation):
//! * **weights**: projections in the base format — 16/32-bit, int8 (1 B/param + an fp32 scale per output
//!   row) or NF4/FP4 as bitsandbytes stores them (0.5 B/param, an absmax per block of 64: fp32, or with
//!   double quantization 1 byte per block + an fp32 per 256 blocks + an fp32 offset per tensor); the rest
//!   (embeddings, norms, `lm_head`) in the compute dtype; LoRA A/B in fp32 (bf16 with `pure_bf16`);
//! * **gradients** in the trained parameters' dtype; **optimizer**: AdamW m + v in that dtype, plus an
//!   fp32 master copy for mixed-precision full fine-tuning (ZeRO's 2 + 2 + 12 bytes/param);
//! * **activations** per decoder layer for `batch × seq` tokens as autograd saves them in ferrotune's
//!   layers (fp32 RMSNorm inputs, rotary q/k and v, fused-attention output, SiLU-gate MLP, the inputs of
//!   every projection that trains — LoRA keeps its own fp32 copy when the compute dtype is 16-bit); with
//!   gradient checkpointing only each layer's input plus one recomputed layer; a quantized base adds one
//!   dense dequantized projection (none is kept for the backward: it is dequantized again there);
//! * **logits/loss**: ferrotune's trainer uses a chunked fused loss head (`lm_head` + cross-entropy + their
//!   backward, 2^22 logits at a time): one chunk's logits, fp32 log-probabilities and gradient, plus the
//!   hidden-state gradient (and an fp32 `lm_head` gradient buffer when it trains); with `chunked_loss` off,
//!   full logits in the compute dtype plus three fp32 `batch·seq·vocab` buffers (log-softmax, its incoming
//!   and outgoing gradients) alive together in the loss backward;
//! * **runtime**: a fixed CUDA context + workspace term (GPU), or libtorch's resident baseline (CPU).

use crate::model_shape::{ModelShape, PROJECTIONS};

const MIB: u64 = 1 << 20;
/// CUDA context, cuBLAS/cuDNN workspaces and allocator slack on a GPU.
pub const GPU_RUNTIME_BYTES: u64 = 1024 * MIB;
/// Logit elements per chunk of the fused loss head (`ferrotune_model::fused_ce`).
pub const CE_CHUNK_ELEMENTS: u64 = 1 << 22;
/// Resident memory of a `ferrotune train` process with libtorch loaded and a tiny model training (measured:
/// 400 MiB peak RSS for a 1-layer, 32-wide model with a 1024-token vocabulary; see BENCHMARKS.md
/// `## estimate`). The CPU prediction is live memory plus this baseline, which is what the `ferrotune` binary
/// keeps resident: it allocates through jemalloc (crates/cli/src/cpu_tuning.rs), whose lowest-address-first
/// page runs reuse freed tensor memory without heap fragmentation (glibc's heap kept 35–55 % more).
pub const CPU_RUNTIME_BYTES: u64 = 400 * MIB;

/// What is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Full,
    Lora,
    /// LoRA on a quantized (4- or 8-bit) frozen base.
    Qlora,
}

/// Where the memory lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Gpu,
    Cpu,
}

/// FSDP's sharding strategies (PyTorch's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharding {
    /// Replicated (DDP).
    NoShard,
    /// Gradients and optimizer state sharded, parameters replicated (ZeRO-2).
    ShardGradOp,
    /// Everything sharded, one FSDP unit (decoder layer) gathered at a time (ZeRO-3).
    FullShard,
    /// FULL_SHARD inside a node, replicated across nodes.
    HybridShard,
}

impl Sharding {
    pub const ALL: [Sharding; 4] = [
        Sharding::NoShard,
        Sharding::ShardGradOp,
        Sharding::FullShard,
        Sharding::HybridShard,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Sharding::NoShard => "NO_SHARD",
            Sharding::ShardGradOp => "SHARD_GRAD_OP",
            Sharding::FullShard => "FULL_SHARD",
            Sharding::HybridShard => "HYBRID_SHARD",
        }
    }
}

/// The settings of one estimate.
#[derive(Debug, Clone, PartialEq)]
pub struct EstimateOptions {
    pub method: Method,
    /// Base weight bits: 32 or 16 (dense), 8 (int8), 4 (NF4/FP4).
    pub bits: u32,
    /// Bytes per element of the compute dtype (4 fp32, 2 bf16/fp16).
    pub compute_bytes: u64,
    /// Weights, gradients and optimizer state all in bf16 (llama-recipes' `pure_bf16`).
    pub pure_bf16: bool,
    /// 4-bit: quantize the absmax again (QLoRA's double quantization).
    pub double_quant: bool,
    pub seq_len: u64,
    pub batch_size: u64,
    pub gradient_checkpointing: bool,
    pub lora_rank: u64,
    /// Projection names LoRA wraps.
    pub lora_targets: Vec<String>,
    pub target: Target,
    /// The chunked fused loss head (ferrotune's single-device trainer) instead of full logits.
    pub chunked_loss: bool,
}

impl Default for EstimateOptions {
    fn default() -> Self {
        EstimateOptions {
            method: Method::Lora,
            bits: 16,
            compute_bytes: 2,
            pure_bf16: false,
            double_quant: true,
            seq_len: 2048,
            batch_size: 1,
            gradient_checkpointing: false,
            lora_rank: 8,
            lora_targets: PROJECTIONS.iter().map(|s| s.to_string()).collect(),
            target: Target::Gpu,
            chunked_loss: true,
        }
    }
}

/// Bytes per category; `total()` is their sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Breakdown {
    pub weights: u64,
    pub gradients: u64,
    pub optimizer: u64,
    pub activations: u64,
    pub logits: u64,
    pub runtime: u64,
}

impl Breakdown {
    pub fn total(&self) -> u64 {
        self.weights
            + self.gradients
            + self.optimizer
            + self.activations
            + self.logits
            + self.runtime
    }
}

/// Bytes of one `[out, in]` projection stored with `bits` (dense bits use `dense_bytes` per element).
pub fn projection_bytes(
    out: u64,
    inp: u64,
    bits: u32,
    double_quant: bool,
    dense_bytes: u64,
) -> u64 {
    let n = out * inp;
    match bits {
        8 => n + 4 * out,
        4 => {
            let blocks = n.div_ceil(64);
            let absmax = if double_quant {
                blocks + 4 * blocks.div_ceil(256) + 4
            } else {
                4 * blocks
            };
            n.div_ceil(2) + absmax
        }
        _ => dense_bytes * n,
    }
}

/// Checks a combination before estimating; the message names the flag.
pub fn validate(o: &EstimateOptions) -> Result<(), String> {
    if ![32, 16, 8, 4].contains(&o.bits) {
        return Err(format!("--bits {}: expected 32, 16, 8 or 4", o.bits));
    }
    match o.method {
        Method::Full if o.bits < 16 => {
            return Err(
                "full fine-tuning trains the weights themselves: use --bits 16 or 32".into(),
            )
        }
        Method::Qlora if o.bits > 8 => {
            return Err("qlora quantizes the base to --bits 4 or 8".into())
        }
        _ => {}
    }
    if o.method != Method::Full {
        if o.lora_rank == 0 {
            return Err("--lora-rank must be > 0".into());
        }
        if let Some(t) = o
            .lora_targets
            .iter()
            .find(|t| !PROJECTIONS.contains(&t.as_str()))
        {
            return Err(format!("--lora-target: unknown module `{t}`"));
        }
    }
    if o.seq_len == 0 || o.batch_size == 0 {
        return Err("--seq and --batch must be > 0".into());
    }
    Ok(())
}

fn lora_on(o: &EstimateOptions, p: &str) -> bool {
    o.method != Method::Full && o.lora_targets.iter().any(|t| t == p)
}

/// Bytes per element of trained parameters (and their gradients and moments).
fn train_bytes(o: &EstimateOptions) -> u64 {
    if o.pure_bf16 || (o.method == Method::Full && o.bits == 16) {
        2
    } else {
        4
    }
}

/// Weights of the whole model in the layout `o` describes.
pub fn weight_bytes(s: &ModelShape, o: &EstimateOptions) -> u64 {
    let e = o.compute_bytes;
    let dense = match (o.method, o.bits) {
        (Method::Full, 32) => 4,
        (Method::Full, _) => 2,
        (_, 32) => 4,
        _ => e,
    };
    let layer: u64 = PROJECTIONS
        .iter()
        .map(|p| {
            let (out, inp) = s.projection_shape(p);
            projection_bytes(out, inp, o.bits, o.double_quant, dense)
        })
        .sum();
    let lora = if o.method == Method::Full {
        0
    } else {
        train_bytes(o) * s.lora_params(o.lora_rank, &o.lora_targets)
    };
    s.num_hidden_layers * layer + dense * s.other_params() + lora
}

fn trained_params(s: &ModelShape, o: &EstimateOptions) -> u64 {
    match o.method {
        Method::Full => s.total_params(),
        _ => s.lora_params(o.lora_rank, &o.lora_targets),
    }
}

/// Saved activations of one decoder layer for `tokens` tokens (bytes).
pub fn layer_activation_bytes(s: &ModelShape, o: &EstimateOptions) -> u64 {
    let t = o.batch_size * o.seq_len;
    let (e, a) = (o.compute_bytes, train_bytes(o));
    let (h, i) = (s.hidden_size, s.intermediate_size);
    let qd = s.num_attention_heads * s.head_dim;
    let kd = s.num_key_value_heads * s.head_dim;
    let full = o.method == Method::Full;
    // Two RMSNorm inputs, saved in fp32 (the statistics are fp32); full also saves the normalised values.
    let mut b = 2 * 4 * t * h + if full { 2 * e * t * h } else { 0 };
    // Rotary q, k and v (kept by attention's backward), its output and log-sum-exp.
    b += e * t * (2 * qd + 2 * kd) + 4 * o.batch_size * s.num_attention_heads * o.seq_len;
    // MLP: gate output (SiLU's input), SiLU output and up output (the product's operands).
    b += 3 * e * t * i;
    // Inputs of trained projections, by group of projections sharing one input.
    let groups: [(&[&str], u64); 4] = [
        (&["q_proj", "k_proj", "v_proj"], h),
        (&["o_proj"], qd),
        (&["gate_proj", "up_proj"], h),
        (&["down_proj"], i),
    ];
    for (members, width) in groups {
        if full {
            b += e * t * width;
        } else {
            let n = members.iter().filter(|p| lora_on(o, p)).count() as u64;
            // LoRA casts its input to the adapter dtype: a copy per projection unless the dtypes agree.
            b += match (n, a == e) {
                (0, _) => 0,
                (_, true) => e * t * width,
                (n, false) => n * a * t * width,
            };
            b += n * a * t * o.lora_rank;
        }
    }
    b
}

/// Activations of the whole forward (layers only) at the backward's start.
pub fn activation_bytes(s: &ModelShape, o: &EstimateOptions) -> u64 {
    let layer = layer_activation_bytes(s, o);
    let residual = o.compute_bytes * o.batch_size * o.seq_len * s.hidden_size;
    // Final norm input (fp32) and, for full, its output.
    let head = 4 * o.batch_size * o.seq_len * s.hidden_size
        + if o.method == Method::Full {
            residual
        } else {
            0
        };
    // A quantized projection dequantizes its weight for the product and again for the input gradient,
    // keeping none: one dense weight (at most the largest projection's) exists at a time.
    let dequantized = if o.bits <= 8 {
        let (h, i) = (s.hidden_size, s.intermediate_size);
        o.compute_bytes * h * i.max(h).max(s.num_attention_heads * s.head_dim)
    } else {
        0
    };
    dequantized
        + if o.gradient_checkpointing {
            // Each layer's input is kept; one layer is recomputed at a time with its incoming gradient.
            s.num_hidden_layers * residual + head + layer + 2 * residual
        } else {
            s.num_hidden_layers * layer + head
        }
}

/// Logits and loss buffers of the loss head and its backward.
pub fn logits_bytes(s: &ModelShape, o: &EstimateOptions) -> u64 {
    let (n, v, e) = (o.batch_size * o.seq_len, s.vocab_size, o.compute_bytes);
    if !o.chunked_loss {
        // Logits in the compute dtype plus three fp32 `tokens × vocab` buffers.
        return n * v * (e + 12);
    }
    let rows = (CE_CHUNK_ELEMENTS / v.max(1)).clamp(1, n);
    let lm_head_grad = if o.method == Method::Full {
        2 * 4 * v * s.hidden_size
    } else {
        0
    };
    // One chunk's logits + fp32 log-probs and gradient; the hidden-state gradient and its surrogate product.
    rows * v * (e + 12) + 2 * e * n * s.hidden_size + lm_head_grad
}

/// The estimate on one device.
pub fn estimate(s: &ModelShape, o: &EstimateOptions) -> Result<Breakdown, String> {
    validate(o)?;
    let n = trained_params(s, o);
    let tb = train_bytes(o);
    let master = if o.method == Method::Full && o.bits == 16 && !o.pure_bf16 {
        4 * n
    } else {
        0
    };
    let moments = if o.method == Method::Full && o.bits == 16 && !o.pure_bf16 {
        8
    } else {
        2 * tb
    };
    Ok(Breakdown {
        weights: weight_bytes(s, o),
        gradients: tb * n,
        optimizer: moments * n + master,
        activations: activation_bytes(s, o),
        logits: logits_bytes(s, o),
        runtime: match o.target {
            Target::Gpu => GPU_RUNTIME_BYTES,
            Target::Cpu => CPU_RUNTIME_BYTES,
        },
    })
}

/// Per-GPU memory with `world_size` ranks under `strategy` (HYBRID_SHARD shards within nodes of
/// `gpus_per_node`). Activations are per rank (each rank runs its own micro-batch); FULL_SHARD adds the
/// unsharded working set: the root unit (embeddings, `lm_head`) and two decoder layers (the current one and
/// the prefetched next), plus one layer's unsharded gradients before the reduce-scatter.
pub fn estimate_sharded(
    s: &ModelShape,
    o: &EstimateOptions,
    strategy: Sharding,
    world_size: u64,
    gpus_per_node: u64,
) -> Result<Breakdown, String> {
    let one = estimate(s, o)?;
    let w = world_size.max(1);
    let shard = |x: u64, n: u64| x.div_ceil(n);
    let layers = s.num_hidden_layers.max(1);
    let full_shard = |n: u64| {
        let per_layer_w = (one.weights - weight_bytes_other(s, o)) / layers;
        let per_layer_g = one.gradients / (layers + 1);
        let working = weight_bytes_other(s, o) + 2 * per_layer_w + per_layer_g;
        Breakdown {
            weights: shard(one.weights, n) + working,
            gradients: shard(one.gradients, n),
            optimizer: shard(one.optimizer, n),
            ..one
        }
    };
    Ok(match strategy {
        _ if w == 1 => one,
        Sharding::NoShard => one,
        Sharding::ShardGradOp => Breakdown {
            gradients: shard(one.gradients, w),
            optimizer: shard(one.optimizer, w),
            ..one
        },
        Sharding::FullShard => full_shard(w),
        Sharding::HybridShard => full_shard(w.min(gpus_per_node.max(1))),
    })
}

/// Weights outside the decoder layers (embeddings, final norm, `lm_head`): FSDP's root unit.
fn weight_bytes_other(s: &ModelShape, o: &EstimateOptions) -> u64 {
    let dense = match (o.method, o.bits) {
        (Method::Full, 32) | (_, 32) => 4,
        (Method::Full, _) => 2,
        _ => o.compute_bytes,
    };
    dense * s.other_params()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gib(b: u64) -> f64 {
        b as f64 / (1u64 << 30) as f64
    }

    #[test]
    fn quantized_bytes_per_param_match_bitsandbytes() {
        // bitsandbytes Params4bit 4096x4096 with compress_statistics: 8388608 packed bytes,
        // 262144 uint8 absmax, 1024 fp32 second-level absmax, one fp32 offset.
        let n = 4096 * 4096;
        let dq = projection_bytes(4096, 4096, 4, true, 2);
        assert_eq!(dq, n / 2 + n / 64 + 4 * (n / 64 / 256) + 4);
        let per_param = dq as f64 / n as f64;
        assert!((per_param - (0.5 + 1.0 / 64.0 + 4.0 / 16384.0)).abs() < 1e-6);
        assert_eq!(
            projection_bytes(4096, 4096, 4, false, 2),
            n / 2 + 4 * n / 64
        );
        assert_eq!(
            projection_bytes(11008, 4096, 8, false, 2),
            11008 * 4096 + 4 * 11008
        );
        assert_eq!(projection_bytes(3, 5, 16, false, 2), 30);
    }

    #[test]
    fn llama2_7b_rows_agree_with_the_rules_of_thumb() {
        let s = ModelShape::preset("7b").unwrap();
        let p = s.total_params() as f64;
        // Full mixed precision: 2 + 2 + 12 bytes/param (ZeRO paper).
        let full = EstimateOptions {
            method: Method::Full,
            lora_targets: vec![],
            ..Default::default()
        };
        let b = estimate(&s, &full).unwrap();
        let static_b = (b.weights + b.gradients + b.optimizer) as f64;
        assert!((static_b / p - 16.0).abs() < 1e-9, "{}", static_b / p);
        // QLoRA NF4+DQ: ~3.5-4 GiB of weights (the projections at 0.516 B/param, embeddings in bf16).
        let q = EstimateOptions {
            method: Method::Qlora,
            bits: 4,
            gradient_checkpointing: true,
            ..Default::default()
        };
        let b = estimate(&s, &q).unwrap();
        assert!((3.5..4.0).contains(&gib(b.weights)), "{}", gib(b.weights));
        // LoRA 16-bit: bf16 weights ≈ 12.55 GiB.
        let l = EstimateOptions::default();
        let b = estimate(&s, &l).unwrap();
        assert!((12.5..12.8).contains(&gib(b.weights)), "{}", gib(b.weights));
        // Checkpointing cuts activations by more than 5x at seq 2048.
        let no_ckpt = activation_bytes(&s, &l);
        let ckpt = activation_bytes(
            &s,
            &EstimateOptions {
                gradient_checkpointing: true,
                ..l.clone()
            },
        );
        assert!(no_ckpt > 5 * ckpt, "{no_ckpt} vs {ckpt}");
    }

    #[test]
    fn chunked_loss_head_is_bounded_by_the_chunk() {
        let s = ModelShape::preset("7b").unwrap();
        let mut o = EstimateOptions {
            seq_len: 1024,
            batch_size: 4,
            ..Default::default()
        };
        // 4096 tokens x 32000 logits: bf16 logits + three fp32 buffers = 14 B each, ~1.7 GiB.
        o.chunked_loss = false;
        assert_eq!(logits_bytes(&s, &o), 4096 * 32000 * 14);
        // Chunked: 131 rows of 32000 at a time, plus the [4096, 4096] hidden-state gradient (x2, bf16).
        o.chunked_loss = true;
        assert_eq!(logits_bytes(&s, &o), 131 * 32000 * 14 + 2 * 2 * 4096 * 4096);
    }

    #[test]
    fn sharding_divides_what_it_shards() {
        let s = ModelShape::preset("13b").unwrap();
        let o = EstimateOptions {
            method: Method::Full,
            lora_targets: vec![],
            gradient_checkpointing: true,
            ..Default::default()
        };
        let one = estimate(&s, &o).unwrap();
        let ns = estimate_sharded(&s, &o, Sharding::NoShard, 8, 8).unwrap();
        assert_eq!(ns, one);
        let z2 = estimate_sharded(&s, &o, Sharding::ShardGradOp, 8, 8).unwrap();
        assert_eq!(z2.weights, one.weights);
        assert_eq!(z2.optimizer, one.optimizer.div_ceil(8));
        let z3 = estimate_sharded(&s, &o, Sharding::FullShard, 8, 8).unwrap();
        assert!(z3.weights < one.weights / 4 && z3.total() < z2.total());
        // HYBRID_SHARD over 2 nodes of 4 shards like FULL_SHARD over 4.
        let hy = estimate_sharded(&s, &o, Sharding::HybridShard, 8, 4).unwrap();
        let fs4 = estimate_sharded(&s, &o, Sharding::FullShard, 4, 4).unwrap();
        assert_eq!(hy, fs4);
        assert_eq!(activation_bytes(&s, &o), z3.activations);
    }

    #[test]
    fn invalid_combinations_name_the_flag() {
        let s = ModelShape::preset("7b").unwrap();
        let bad = |o: EstimateOptions| estimate(&s, &o).unwrap_err();
        assert!(bad(EstimateOptions {
            method: Method::Full,
            bits: 4,
            ..Default::default()
        })
        .contains("--bits"));
        assert!(bad(EstimateOptions {
            method: Method::Qlora,
            bits: 16,
            ..Default::default()
        })
        .contains("--bits 4 or 8"));
        assert!(bad(EstimateOptions {
            lora_targets: vec!["qproj".into()],
            ..Default::default()
        })
        .contains("qproj"));
    }
}
