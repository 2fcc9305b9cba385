//! The `ferrotune train` config: one flat table whose keys follow transformers' `TrainingArguments` and
//! LLaMA-Factory's argument names, so that recipes read like theirs.
//!
//! Every key is optional except `model_name_or_path`, `dataset` and `output_dir`; missing keys take the
//! defaults below (mostly transformers' and LLaMA-Factory's). Unknown keys are errors with a did-you-mean
//! (see [`crate::config`]). [`TrainConfig::validate`] checks what serde cannot (ranges, combinations).

use crate::{DType, DeviceSpec};
use serde::{Deserialize, Deserializer, Serialize};
use std::path::PathBuf;

/// `stage`: continued pre-training on raw text, or supervised fine-tuning on instructions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Continued pre-training: every token of the text is a label.
    Pt,
    /// Supervised fine-tuning: prompts are masked (-100), responses are labels.
    #[default]
    Sft,
}

/// `finetuning_type`: which parameters are trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinetuningType {
    /// Low-rank adapters on `lora_target`; the base model is frozen.
    #[default]
    Lora,
    /// Every parameter.
    Full,
    /// The decoder layers above the first `num_freeze_layers` (plus the final norm); the rest is frozen.
    Freeze,
}

/// `lr_scheduler_type`, with transformers' names (plus llama-recipes' per-epoch `step`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerType {
    Constant,
    #[default]
    Linear,
    Cosine,
    /// Multiply the rate by `gamma` after every epoch (llama-recipes' `StepLR(step_size=1, gamma)`).
    Step,
}

/// `quantization_type`: the 4-bit data type of a QLoRA base (bitsandbytes' names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum QuantizationType {
    /// 4-bit NormalFloat (QLoRA).
    #[default]
    Nf4,
    /// 4-bit float (sign, 3 bits).
    Fp4,
}

/// The resolved training configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    // --- model ---
    /// Directory of an HF checkpoint (config.json + safetensors + tokenizer.model).
    pub model_name_or_path: PathBuf,
    /// A PEFT adapter directory to start from (LoRA training continues it).
    pub adapter_name_or_path: Option<PathBuf>,
    /// A tokenizer.model to use instead of the model's (e.g. an extended Chinese vocabulary).
    pub tokenizer_name_or_path: Option<PathBuf>,
    /// Start from random weights (seeded; `model_name_or_path` then needs only `config.json` and the
    /// tokenizer), as LLaMA-Factory's `train_from_scratch`.
    pub train_from_scratch: bool,
    /// Resize embed_tokens/lm_head to the tokenizer's vocabulary and train them (LLaMA-Factory `resize_vocab`).
    pub resize_vocab: bool,
    /// Extra modules trained and saved in full beside the adapter (PEFT `modules_to_save`).
    pub additional_target: Vec<String>,
    // --- method ---
    pub stage: Stage,
    pub finetuning_type: FinetuningType,
    /// Freeze mode: how many of the lowest decoder layers stay frozen.
    pub num_freeze_layers: Option<usize>,
    pub lora_rank: i64,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    /// Projection names (`q_proj`, ...) or `all` for all seven.
    #[serde(deserialize_with = "string_list")]
    pub lora_target: Vec<String>,
    /// QLoRA: quantize the frozen base's projections to 4 (NF4/FP4) or 8 (int8) bits right after loading
    /// (LLaMA-Factory `quantization_bit`); only with `finetuning_type = "lora"`.
    pub quantization_bit: Option<u8>,
    /// The 4-bit data type, `nf4` (QLoRA's NormalFloat) or `fp4` (LLaMA-Factory `quantization_type`).
    pub quantization_type: QuantizationType,
    /// 4-bit: quantize the per-block absmax again (8-bit, blocks of 256), as QLoRA does
    /// (LLaMA-Factory `double_quantization`).
    pub double_quantization: bool,
    // --- data ---
    /// Dataset names from `dataset_dir/dataset_info.json` (a comma-separated string or a list).
    #[serde(deserialize_with = "string_list")]
    pub dataset: Vec<String>,
    /// Validation datasets by name (instead of splitting `val_size` off the training data).
    #[serde(deserialize_with = "string_list")]
    pub eval_dataset: Vec<String>,
    pub dataset_dir: PathBuf,
    pub template: String,
    pub cutoff_len: usize,
    pub packing: bool,
    /// Validation split: a fraction of the samples when < 1, else a count.
    pub val_size: f64,
    pub max_samples: Option<usize>,
    // --- optimisation ---
    pub per_device_train_batch_size: usize,
    pub per_device_eval_batch_size: usize,
    pub gradient_accumulation_steps: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    pub num_train_epochs: f64,
    /// Total optimizer steps; overrides `num_train_epochs` when set.
    pub max_steps: Option<u64>,
    pub lr_scheduler_type: SchedulerType,
    /// Per-epoch decay factor of the `step` scheduler.
    pub gamma: f64,
    pub warmup_ratio: f64,
    pub warmup_steps: Option<u64>,
    /// Clip the global gradient norm to this; 0 disables clipping.
    pub max_grad_norm: f64,
    pub bf16: bool,
    pub fp16: bool,
    /// Everything (weights, gradients, optimizer state) in bf16, as llama-recipes' `pure_bf16`.
    pub pure_bf16: bool,
    #[serde(alias = "fsdp_activation_checkpointing")]
    pub gradient_checkpointing: bool,
    /// Stop with an error after this many consecutive steps with a NaN/inf loss (each one is skipped).
    pub max_nonfinite_steps: u32,
    // --- bookkeeping ---
    pub logging_steps: u64,
    /// Evaluate every this many optimizer steps (0: only at the end).
    pub eval_steps: u64,
    /// Also evaluate before the first step (the "before" number of a before/after comparison).
    pub eval_on_start: bool,
    /// Save a checkpoint every this many optimizer steps (0: only at the end).
    pub save_steps: u64,
    pub save_total_limit: Option<usize>,
    pub save_optimizer: bool,
    pub output_dir: PathBuf,
    pub overwrite_output_dir: bool,
    /// A checkpoint directory, or `auto` for the newest one in `output_dir` (none: start fresh).
    pub resume_from_checkpoint: Option<String>,
    pub plot_loss: bool,
    pub seed: u64,
    pub device: DeviceSpec,
    /// Intra-op CPU threads (default: libtorch's choice).
    pub num_threads: Option<usize>,
    /// Multi-process training (`[parallel]`): used when the job has more than one rank.
    pub parallel: ParallelConfig,
}

/// `parallel.strategy`: how the ranks of a job share the model (llama-recipes' FSDP `sharding_strategy`
/// names; DeepSpeed-style aliases accepted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ShardingStrategy {
    /// DDP: every rank holds everything; gradients are all-reduced in buckets.
    #[default]
    #[serde(rename = "NO_SHARD", alias = "ddp", alias = "no_shard")]
    NoShard,
    /// ZeRO-2: gradients reduce-scattered, optimizer state + fp32 master sharded, parameters all-gathered.
    #[serde(rename = "SHARD_GRAD_OP", alias = "zero2", alias = "shard_grad_op")]
    ShardGradOp,
    /// ZeRO-3 / FSDP: parameters sharded per decoder layer, gathered just in time.
    #[serde(
        rename = "FULL_SHARD",
        alias = "zero3",
        alias = "fsdp",
        alias = "full_shard"
    )]
    FullShard,
    /// FULL_SHARD within a node, replicated across nodes.
    #[serde(rename = "HYBRID_SHARD", alias = "hybrid", alias = "hybrid_shard")]
    HybridShard,
}

/// `parallel.checkpoint_type` (llama-recipes' names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum CheckpointType {
    /// Rank 0 gathers and writes the single-process files (HF/PEFT weights, optimizer state).
    #[default]
    #[serde(rename = "FULL_STATE_DICT", alias = "full")]
    FullStateDict,
    /// Every rank writes its shard plus a layout file; resumable at another world size.
    #[serde(rename = "SHARDED_STATE_DICT", alias = "sharded")]
    ShardedStateDict,
}

/// The `[parallel]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ParallelConfig {
    #[serde(alias = "sharding_strategy")]
    pub strategy: ShardingStrategy,
    pub checkpoint_type: CheckpointType,
    /// `gloo` or `nccl` (default: by device).
    pub backend: Option<String>,
    /// Bucket size of the NO_SHARD gradient all-reduce, in MB.
    pub bucket_cap_mb: f64,
    /// Seconds any collective may wait before the run fails naming the rank and operation.
    pub timeout_s: u64,
}

impl Default for ParallelConfig {
    fn default() -> Self {
        ParallelConfig {
            strategy: ShardingStrategy::NoShard,
            checkpoint_type: CheckpointType::FullStateDict,
            backend: None,
            bucket_cap_mb: 25.0,
            timeout_s: 1800,
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model_name_or_path: PathBuf::new(),
            adapter_name_or_path: None,
            tokenizer_name_or_path: None,
            train_from_scratch: false,
            resize_vocab: false,
            additional_target: Vec::new(),
            stage: Stage::Sft,
            finetuning_type: FinetuningType::Lora,
            num_freeze_layers: None,
            lora_rank: 8,
            lora_alpha: 16.0,
            lora_dropout: 0.0,
            lora_target: vec!["q_proj".into(), "v_proj".into()],
            quantization_bit: None,
            quantization_type: QuantizationType::Nf4,
            double_quantization: true,
            dataset: Vec::new(),
            eval_dataset: Vec::new(),
            dataset_dir: PathBuf::from("datasets"),
            template: "default".into(),
            cutoff_len: 1024,
            packing: false,
            val_size: 0.0,
            max_samples: None,
            per_device_train_batch_size: 4,
            per_device_eval_batch_size: 8,
            gradient_accumulation_steps: 1,
            learning_rate: 5e-5,
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            num_train_epochs: 3.0,
            max_steps: None,
            lr_scheduler_type: SchedulerType::Linear,
            gamma: 0.85,
            warmup_ratio: 0.0,
            warmup_steps: None,
            max_grad_norm: 1.0,
            bf16: false,
            fp16: false,
            pure_bf16: false,
            gradient_checkpointing: false,
            max_nonfinite_steps: 5,
            logging_steps: 10,
            eval_steps: 0,
            eval_on_start: false,
            save_steps: 500,
            save_total_limit: None,
            save_optimizer: true,
            output_dir: PathBuf::new(),
            overwrite_output_dir: false,
            resume_from_checkpoint: None,
            plot_loss: false,
            seed: 42,
            device: DeviceSpec::Auto,
            num_threads: None,
            parallel: ParallelConfig::default(),
        }
    }
}

/// The seven Llama projections (`lora_target = "all"`).
pub const ALL_PROJECTIONS: [&str; 7] = crate::model_shape::PROJECTIONS;

impl TrainConfig {
    /// Checks ranges and combinations; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        let req = |ok: bool, msg: &str| if ok { Ok(()) } else { Err(msg.to_string()) };
        req(
            !self.model_name_or_path.as_os_str().is_empty(),
            "`model_name_or_path` is required",
        )?;
        req(!self.dataset.is_empty(), "`dataset` is required")?;
        req(
            !self.output_dir.as_os_str().is_empty(),
            "`output_dir` is required",
        )?;
        req(
            self.per_device_train_batch_size > 0 && self.per_device_eval_batch_size > 0,
            "batch sizes must be > 0",
        )?;
        req(
            self.gradient_accumulation_steps > 0,
            "`gradient_accumulation_steps` must be > 0",
        )?;
        req(self.cutoff_len > 1, "`cutoff_len` must be > 1")?;
        req(
            self.learning_rate >= 0.0 && self.learning_rate.is_finite(),
            "`learning_rate` must be >= 0",
        )?;
        req(
            (0.0..1.0).contains(&self.adam_beta1) && (0.0..1.0).contains(&self.adam_beta2),
            "`adam_beta1`/`adam_beta2` must be in [0, 1)",
        )?;
        req(
            (0.0..=1.0).contains(&self.warmup_ratio),
            "`warmup_ratio` must be in [0, 1]",
        )?;
        req(
            self.max_steps.is_some() || self.num_train_epochs > 0.0,
            "`num_train_epochs` must be > 0 (or set `max_steps`)",
        )?;
        req(
            [self.bf16, self.fp16, self.pure_bf16]
                .iter()
                .filter(|b| **b)
                .count()
                <= 1,
            "choose at most one of `bf16`, `fp16`, `pure_bf16`",
        )?;
        req(self.val_size >= 0.0, "`val_size` must be >= 0")?;
        req(
            self.max_nonfinite_steps > 0,
            "`max_nonfinite_steps` must be > 0",
        )?;
        if self.finetuning_type == FinetuningType::Lora {
            req(self.lora_rank > 0, "`lora_rank` must be > 0")?;
            req(
                (0.0..1.0).contains(&self.lora_dropout),
                "`lora_dropout` must be in [0, 1)",
            )?;
            for t in &self.lora_target {
                req(
                    t == "all" || ALL_PROJECTIONS.contains(&t.as_str()),
                    &format!(
                        "`lora_target`: unknown module `{t}` (expected `all` or some of {})",
                        ALL_PROJECTIONS.join(", ")
                    ),
                )?;
            }
        }
        if self.finetuning_type == FinetuningType::Freeze {
            req(
                self.num_freeze_layers.is_some(),
                "`num_freeze_layers` is required with finetuning_type = \"freeze\"",
            )?;
        }
        req(
            self.parallel.bucket_cap_mb > 0.0 && self.parallel.timeout_s > 0,
            "`parallel.bucket_cap_mb` and `parallel.timeout_s` must be > 0",
        )?;
        if let Some(b) = &self.parallel.backend {
            req(
                matches!(b.as_str(), "gloo" | "nccl"),
                &format!("`parallel.backend`: unknown backend `{b}` (expected gloo or nccl)"),
            )?;
        }
        if let Some(bits) = self.quantization_bit {
            req(
                bits == 4 || bits == 8,
                &format!("`quantization_bit` = {bits}: expected 4 or 8"),
            )?;
            req(
                self.finetuning_type == FinetuningType::Lora,
                "`quantization_bit` (QLoRA) needs finetuning_type = \"lora\": quantized weights cannot be trained",
            )?;
        }
        if let Some(r) = &self.resume_from_checkpoint {
            req(!r.is_empty(), "`resume_from_checkpoint` must not be empty")?;
        }
        Ok(())
    }

    /// `lora_target` with `all` expanded, in the canonical projection order.
    pub fn lora_modules(&self) -> Vec<String> {
        if self.lora_target.iter().any(|t| t == "all") {
            return ALL_PROJECTIONS.iter().map(|s| s.to_string()).collect();
        }
        ALL_PROJECTIONS
            .iter()
            .filter(|p| self.lora_target.iter().any(|t| t == *p))
            .map(|s| s.to_string())
            .collect()
    }

    /// The dtype frozen weights are held in (compute dtype): bf16/fp16 when mixed precision is on.
    pub fn compute_dtype(&self) -> DType {
        if self.bf16 || self.pure_bf16 {
            DType::BF16
        } else if self.fp16 {
            DType::F16
        } else {
            DType::F32
        }
    }
}

/// Accepts `"a,b"` or `["a", "b"]`.
fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let items = match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    };
    Ok(items
        .iter()
        .flat_map(|s| s.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_with_overrides;
    use std::path::Path;

    const MIN: &str = "model_name_or_path = \"m\"\ndataset = \"a, b\"\noutput_dir = \"out\"\n";

    #[test]
    fn defaults_lists_and_overrides() {
        let c: TrainConfig = parse_with_overrides(
            Path::new("t.toml"),
            MIN,
            &["lora_target=all".into(), "max_steps=7".into()],
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.dataset, vec!["a", "b"]);
        assert_eq!(c.lora_modules().len(), 7);
        assert_eq!(c.max_steps, Some(7));
        assert_eq!(c.learning_rate, 5e-5);
        let c: TrainConfig = parse_with_overrides(
            Path::new("t.toml"),
            &format!("{MIN}lora_target = [\"v_proj\", \"q_proj\"]\nstage = \"pt\""),
            &[],
        )
        .unwrap();
        assert_eq!(c.lora_modules(), vec!["q_proj", "v_proj"]);
        assert_eq!(c.stage, Stage::Pt);
        // The resolved config round-trips through TOML.
        let text = crate::config::to_toml(&c).unwrap();
        let back: TrainConfig = parse_with_overrides(Path::new("r.toml"), &text, &[]).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_reported() {
        let err = parse_with_overrides::<TrainConfig>(
            Path::new("configs/x.toml"),
            &format!("{MIN}per_device_train_batchsize = 2"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("did you mean `per_device_train_batch_size`?"),
            "{err}"
        );
        let bad: TrainConfig = parse_with_overrides(
            Path::new("t.toml"),
            &format!("{MIN}fp16 = true\nbf16 = true"),
            &[],
        )
        .unwrap();
        assert!(bad.validate().unwrap_err().contains("at most one"));
        let bad: TrainConfig = parse_with_overrides(
            Path::new("t.toml"),
            &format!("{MIN}finetuning_type = \"freeze\""),
            &[],
        )
        .unwrap();
        assert!(bad.validate().unwrap_err().contains("num_freeze_layers"));
        let bad: TrainConfig = parse_with_overrides(
            Path::new("t.toml"),
            &format!("{MIN}lora_target = \"qproj\""),
            &[],
        )
        .unwrap();
        assert!(bad.validate().unwrap_err().contains("qproj"));
        let par: TrainConfig = parse_with_overrides(
            Path::new("t.toml"),
            &format!("{MIN}fsdp_activation_checkpointing = true\n[parallel]\nsharding_strategy = \"zero3\"\ncheckpoint_type = \"SHARDED_STATE_DICT\""),
            &["parallel.timeout_s=60".into()],
        )
        .unwrap();
        assert!(par.gradient_checkpointing);
        assert_eq!(par.parallel.strategy, ShardingStrategy::FullShard);
        assert_eq!(
            par.parallel.checkpoint_type,
            CheckpointType::ShardedStateDict
        );
        assert_eq!(par.parallel.timeout_s, 60);
        let err = parse_with_overrides::<TrainConfig>(
            Path::new("t.toml"),
            &format!("{MIN}[parallel]\nstrategy = \"FULL_SHARD\"\ncheckpoint_tipe = \"x\""),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("did you mean `checkpoint_type`?"), "{err}");
        let q: TrainConfig = parse_with_overrides(
            Path::new("t.toml"),
            &format!("{MIN}quantization_bit = 4\nquantization_type = \"fp4\"\ndouble_quantization = false"),
            &[],
        )
        .unwrap();
        q.validate().unwrap();
        assert_eq!(
            (
                q.quantization_bit,
                q.quantization_type,
                q.double_quantization
            ),
            (Some(4), QuantizationType::Fp4, false)
        );
        let bad: TrainConfig = parse_with_overrides(
            Path::new("t.toml"),
            &format!("{MIN}quantization_bit = 3"),
            &[],
        )
        .unwrap();
        assert!(bad.validate().unwrap_err().contains("expected 4 or 8"));
        let bad: TrainConfig = parse_with_overrides(
            Path::new("t.toml"),
            &format!("{MIN}quantization_bit = 8\nfinetuning_type = \"full\""),
            &[],
        )
        .unwrap();
        assert!(bad.validate().unwrap_err().contains("finetuning_type"));
        let err = parse_with_overrides::<TrainConfig>(
            Path::new("t.toml"),
            &format!("{MIN}quantisation_bit = 4"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("did you mean `quantization_bit`?"), "{err}");
        let missing: TrainConfig =
            parse_with_overrides(Path::new("t.toml"), "dataset = \"a\"", &[]).unwrap();
        assert!(missing
            .validate()
            .unwrap_err()
            .contains("model_name_or_path"));
    }
}
