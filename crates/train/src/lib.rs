//! `ferrotune-train`: the fine-tuning recipes.
//!
//! SFT and continued pre-training with LoRA / full / freeze, AdamW and learning-rate schedules, atomic
//! checkpoints with exact resume, metrics and plots. The recipe's loop is one explicit file
//! ([`finetune`]), readable top to bottom; the other modules are the pieces it uses.

pub mod batches;
pub mod checkpoint;
pub mod data;
pub mod dist_finetune;
pub mod engine;
pub mod error;
pub mod eval;
pub mod finetune;
pub mod flat;
pub mod fsdp;
pub mod gpu_memory;
pub mod interrupt;
pub mod loss_scale;
pub mod metrics;
pub mod model_setup;
pub mod optim;
pub mod parallel;
pub mod plot;
pub mod progress;
pub mod qlora;
pub mod scheduler;
pub mod sharded_ckpt;

pub use batches::{HostBatch, Sample};
pub use error::TrainError;
pub use finetune::{run, RunSummary, TrainData};
pub use loss_scale::LossScaler;
pub use optim::{clip_grad_norm, AdamW, AdamWConfig};
pub use scheduler::{LrSchedule, SchedulerType};
