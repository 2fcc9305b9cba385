//! `ferrotune-data`: from dataset files to batches of token ids, without libtorch.
//!
//! Reads alpaca / sharegpt / OpenAI-messages / preference / plain-text datasets (streamed, JSON or JSONL) and
//! LLaMA-Factory `dataset_info.json` registries, renders chat templates, tokenizes with label masks
//! (-100 on everything that is not trained), packs samples, caches the result on disk and serves batches.
