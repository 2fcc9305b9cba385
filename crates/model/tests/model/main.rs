//! ferrotune-model's tests against transformers / PEFT, in one binary so the oracle checkpoints
//! (tests/oracle/model_make.py) are generated once.

mod common;
mod fused_ce;
mod lora_peft;
mod parity;
mod training;
