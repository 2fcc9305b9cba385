//! Calibration samples for GPTQ: `nsamples` windows of `seq_len` tokens from a dataset, as lit-llama's
//! `get_c4`/`get_wikitext2` loaders. The dataset is a name in a `dataset_info.json` registry (its records'
//! text: every turn of alpaca/sharegpt records, or the text of plain-text records) or a text/JSON file. The
//! texts are joined with blank lines, tokenized once (BOS first), and cut into consecutive windows; the
//! windows are then drawn in a seeded random order. When the dataset has fewer tokens than asked, `seq_len`
//! shrinks to the whole text and `nsamples` to the number of whole windows (said in a warning).

use crate::error::QuantError;
use ferrotune_data::{
    convert, source_from_file, DatasetSource, RecordReader, Registry, Stage, TextEncoder,
};
use std::path::Path;
use tch::Tensor;

/// What to draw.
#[derive(Debug, Clone, PartialEq)]
pub struct CalibConfig {
    /// Wanted number of windows (lit-llama: 128).
    pub nsamples: usize,
    /// Tokens per window (lit-llama: 2048).
    pub seq_len: usize,
    pub seed: u64,
}

impl Default for CalibConfig {
    fn default() -> Self {
        CalibConfig {
            nsamples: 128,
            seq_len: 2048,
            seed: 0,
        }
    }
}

/// Resolves `name`: an existing file path is read as a dataset file; otherwise a name in `registry`
/// (a `dataset_info.json` or the directory holding it).
pub fn resolve_dataset(name: &str, registry: &Path) -> Result<DatasetSource, QuantError> {
    let data_err =
        |e: ferrotune_data::DataError| QuantError::Spec(format!("calibration dataset: {e}"));
    let p = Path::new(name);
    if p.is_file() {
        return source_from_file(p).map_err(data_err);
    }
    let reg = Registry::load(registry).map_err(data_err)?;
    let mut v = reg.resolve(name).map_err(data_err)?;
    Ok(v.remove(0))
}

/// Every text of a dataset's records, in file order (all turns of a conversation joined by newlines).
pub fn dataset_texts(src: &DatasetSource) -> Result<Vec<String>, QuantError> {
    let data_err =
        |e: ferrotune_data::DataError| QuantError::Spec(format!("calibration dataset: {e}"));
    let mut out = vec![];
    for file in &src.files {
        let reader = RecordReader::open(file).map_err(data_err)?;
        for rec in reader {
            let rec = rec.map_err(data_err)?;
            let v = rec.parse(file).map_err(data_err)?;
            let ex = convert(&v, &src.attr, Stage::Pt, file, rec.index).map_err(data_err)?;
            let mut parts: Vec<&str> = ex.system.as_deref().into_iter().collect();
            for m in &ex.messages {
                parts.push(&m.content);
                if let Some(i) = &m.input {
                    parts.push(i);
                }
            }
            let text = parts.join("\n");
            if !text.trim().is_empty() {
                out.push(text);
            }
        }
    }
    Ok(out)
}

/// Tokenizes `texts` and returns the sample windows `[n, len]` (i64 ids).
pub fn calibration_samples(
    texts: &[String],
    enc: &dyn TextEncoder,
    cfg: &CalibConfig,
) -> Result<Tensor, QuantError> {
    let joined = texts.join("\n\n");
    let mut ids: Vec<i64> = enc.bos_id().map(i64::from).into_iter().collect();
    ids.extend(
        enc.encode(&joined)
            .map_err(|e| QuantError::Spec(format!("calibration text: tokenizer: {e}")))?
            .into_iter()
            .map(i64::from),
    );
    if ids.len() < 2 || cfg.nsamples == 0 || cfg.seq_len < 2 {
        return Err(QuantError::Spec(format!(
            "calibration: {} tokens of text for {} samples of {} tokens",
            ids.len(),
            cfg.nsamples,
            cfg.seq_len
        )));
    }
    let len = cfg.seq_len.min(ids.len());
    let windows = ids.len() / len;
    let n = cfg.nsamples.min(windows);
    if len < cfg.seq_len || n < cfg.nsamples {
        tracing::warn!(
            "calibration text has {} tokens: using {n} samples of {len} tokens (asked {} of {})",
            ids.len(),
            cfg.nsamples,
            cfg.seq_len
        );
    }
    let mut order: Vec<usize> = (0..windows).collect();
    let mut state = cfg.seed ^ 0x9E37_79B9_7F4A_7C15;
    for i in (1..order.len()).rev() {
        let r = splitmix(&mut state);
        order.swap(i, (r % (i as u64 + 1)) as usize);
    }
    let mut flat = Vec::with_capacity(n * len);
    for &w in &order[..n] {
        flat.extend_from_slice(&ids[w * len..(w + 1) * len]);
    }
    Ok(Tensor::from_slice(&flat).view([n as i64, len as i64]))
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
