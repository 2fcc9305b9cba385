//! `ferrotune-train`: the fine-tuning recipes.
//!
//! SFT and continued pre-training with LoRA / QLoRA / full / freeze, optimizers and learning-rate schedules,
//! sharding strategies over `ferrotune-dist`, atomic checkpoints with exact resume, metrics and plots. Each
//! recipe's loop is one explicit file, readable top to bottom.

pub mod scheduler;

pub use scheduler::{LrSchedule, SchedulerType};
