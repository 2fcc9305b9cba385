//! llama2.c checkpoint (`.bin`, legacy export) → HF Llama directory.
//!
//! The file is a header of 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
//! a negative vocab_size means the classifier is not tied to the embedding) followed by fp32 tensors in
//! llama2.c's export order: embedding, all attention norms, all wq, wk, wv, wo, all ffn norms, all w1, w2,
//! w3, the final norm, the RoPE cos/sin tables (skipped), then the classifier when untied. Every matrix is
//! PyTorch's `[out, in]`; q/k rows are permuted from llama2.c's interleaved rotary pairs to HF's halves.
//! The vocabulary comes from `--tokenizer`: llama2.c's `tokenizer.bin` (converted to a SentencePiece
//! model) or a SentencePiece `tokenizer.model` (copied).

use crate::convert::{write_hf_dir, ConvertError, ExtraFile, LlamaDims, RawTensor};
use crate::convert_vocab::{read_llama2c_tokenizer, tokenizer_files};
use std::collections::BTreeMap;
use std::path::Path;

/// The 7-int32 header of a legacy llama2.c checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Llama2cHeader {
    pub dim: usize,
    pub hidden_dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub vocab_size: usize,
    pub seq_len: usize,
    pub shared_classifier: bool,
}

const HEADER_BYTES: usize = 28;
const MAGIC_V1: i32 = 0x616b_3432;

impl Llama2cHeader {
    fn parse(path: &Path, b: &[u8]) -> Result<Self, ConvertError> {
        let ints: Vec<i32> = b
            .get(..HEADER_BYTES)
            .ok_or_else(|| ConvertError::format(path, "shorter than the 28-byte llama2.c header"))?
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        if ints[0] == MAGIC_V1 {
            return Err(ConvertError::format(
                path,
                format!("llama2.c export version {} (magic ak42) is not supported; export with the legacy version 0", ints[1]),
            ));
        }
        let pos = |i: usize, what: &str| {
            usize::try_from(ints[i])
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(|| {
                    ConvertError::format(path, format!("header field {what} = {}", ints[i]))
                })
        };
        let h = Llama2cHeader {
            dim: pos(0, "dim")?,
            hidden_dim: pos(1, "hidden_dim")?,
            n_layers: pos(2, "n_layers")?,
            n_heads: pos(3, "n_heads")?,
            n_kv_heads: pos(4, "n_kv_heads")?,
            vocab_size: ints[5].unsigned_abs() as usize,
            seq_len: pos(6, "seq_len")?,
            shared_classifier: ints[5] > 0,
        };
        if !h.dim.is_multiple_of(h.n_heads)
            || !h.n_heads.is_multiple_of(h.n_kv_heads)
            || h.vocab_size == 0
        {
            return Err(ConvertError::format(
                path,
                format!("inconsistent header {h:?}"),
            ));
        }
        Ok(h)
    }

    pub fn dims(&self) -> LlamaDims {
        LlamaDims {
            hidden_size: self.dim,
            intermediate_size: self.hidden_dim,
            num_hidden_layers: self.n_layers,
            num_attention_heads: self.n_heads,
            num_key_value_heads: self.n_kv_heads,
            vocab_size: self.vocab_size,
            max_position_embeddings: self.seq_len,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            tie_word_embeddings: self.shared_classifier,
            bos_token_id: 1,
            eos_token_id: 2,
        }
    }
}

/// Sequential reader of fp32 tensors from the checkpoint body.
struct Cursor<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    off: usize,
}

impl Cursor<'_> {
    fn take(&mut self, what: &str, shape: Vec<usize>) -> Result<RawTensor, ConvertError> {
        let n = shape
            .iter()
            .try_fold(4usize, |acc, d| acc.checked_mul(*d))
            .unwrap_or(usize::MAX);
        let data = self
            .bytes
            .get(self.off..self.off.saturating_add(n))
            .ok_or_else(|| {
                ConvertError::format(
                    self.path,
                    format!(
                        "ends inside {what} (needs {n} bytes at offset {}, file has {})",
                        self.off,
                        self.bytes.len()
                    ),
                )
            })?;
        self.off += n;
        Ok(RawTensor::new(safetensors::Dtype::F32, shape, data.to_vec()).expect("length checked"))
    }
}

/// Reads a legacy llama2.c checkpoint into HF-named tensors (q/k already permuted for HF rotary).
pub fn read_llama2c(
    path: &Path,
) -> Result<(Llama2cHeader, BTreeMap<String, RawTensor>), ConvertError> {
    let bytes = std::fs::read(path).map_err(|e| ConvertError::io(path, e))?;
    let h = Llama2cHeader::parse(path, &bytes)?;
    let head_dim = h.dim / h.n_heads;
    let kv_dim = h.n_kv_heads * head_dim;
    let mut c = Cursor {
        path,
        bytes: &bytes,
        off: HEADER_BYTES,
    };
    let mut t = BTreeMap::new();
    let layer = |l: usize, s: &str| format!("model.layers.{l}.{s}.weight");
    t.insert(
        "model.embed_tokens.weight".to_string(),
        c.take("token_embedding_table", vec![h.vocab_size, h.dim])?,
    );
    let per_layer: [(&str, &str, [usize; 2]); 9] = [
        ("rms_att_weight", "input_layernorm", [h.dim, 0]),
        ("wq", "self_attn.q_proj", [h.dim, h.dim]),
        ("wk", "self_attn.k_proj", [kv_dim, h.dim]),
        ("wv", "self_attn.v_proj", [kv_dim, h.dim]),
        ("wo", "self_attn.o_proj", [h.dim, h.dim]),
        ("rms_ffn_weight", "post_attention_layernorm", [h.dim, 0]),
        ("w1", "mlp.gate_proj", [h.hidden_dim, h.dim]),
        ("w2", "mlp.down_proj", [h.dim, h.hidden_dim]),
        ("w3", "mlp.up_proj", [h.hidden_dim, h.dim]),
    ];
    for (src, dst, shape) in per_layer {
        let shape: Vec<usize> = shape.into_iter().filter(|d| *d > 0).collect();
        for l in 0..h.n_layers {
            let w = c.take(&format!("{src}[{l}]"), shape.clone())?;
            let name = layer(l, dst);
            let w = match src {
                "wq" => w.permute_rotary_to_hf(&name, h.n_heads)?,
                "wk" => w.permute_rotary_to_hf(&name, h.n_kv_heads)?,
                _ => w,
            };
            t.insert(name, w);
        }
    }
    t.insert(
        "model.norm.weight".into(),
        c.take("rms_final_weight", vec![h.dim])?,
    );
    c.take("freq_cis_real", vec![h.seq_len, head_dim / 2])?;
    c.take("freq_cis_imag", vec![h.seq_len, head_dim / 2])?;
    if !h.shared_classifier {
        t.insert(
            "lm_head.weight".into(),
            c.take("wcls", vec![h.vocab_size, h.dim])?,
        );
    }
    if c.off != bytes.len() {
        return Err(ConvertError::format(
            path,
            format!(
                "{} bytes left after the last tensor: header {h:?} does not match the file",
                bytes.len() - c.off
            ),
        ));
    }
    Ok((h, t))
}

/// The tokenizer files for `--tokenizer`: a `.model` file is copied, anything else is read as llama2.c's
/// `tokenizer.bin` for `vocab_size` tokens.
pub fn tokenizer_from_path(path: &Path, vocab_size: usize) -> Result<Vec<ExtraFile>, ConvertError> {
    if path.extension().is_some_and(|e| e == "model") {
        let bytes = std::fs::read(path).map_err(|e| ConvertError::io(path, e))?;
        return Ok(tokenizer_files(bytes, "<s>", "</s>", "<unk>"));
    }
    Ok(read_llama2c_tokenizer(path, vocab_size)?.hf_files())
}

/// `ferrotune convert --from llama2c`: writes the HF directory `out`.
pub fn convert_llama2c(
    input: &Path,
    tokenizer: Option<&Path>,
    out: &Path,
) -> Result<LlamaDims, ConvertError> {
    let (h, tensors) = read_llama2c(input)?;
    let extra = match tokenizer {
        Some(p) => tokenizer_from_path(p, h.vocab_size)?,
        None => {
            tracing::warn!("no --tokenizer given: the output directory has no tokenizer files");
            Vec::new()
        }
    };
    let dims = h.dims();
    write_hf_dir(out, &dims, &tensors, &extra)?;
    Ok(dims)
}
