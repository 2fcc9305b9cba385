//! llama.cpp GGUF (v2/v3) → HF Llama directory.
//!
//! Parses the file itself: magic `GGUF`, version, tensor and metadata counts, the metadata key/values
//! (typed, arrays included), the tensor infos (name, dims innermost-first, ggml type, offset), and reads
//! F32/F16/BF16 tensor data at `general.alignment` (default 32) past the infos. llama.cpp's converter stores
//! q/k rows permuted for its rotary (`reshape(n_head, 2, hd/2, in).swapaxes(1, 2)`), i.e. Meta's interleaved
//! layout; that is undone here exactly (the KV head count for k). The embedded SentencePiece-style
//! vocabulary (`tokenizer.ggml.tokens/scores/token_type`) is written as `tokenizer.model`.
//! An `output.weight` byte-identical to `token_embd.weight` is treated as a tied classifier.

use crate::convert::{write_hf_dir, ConvertError, HfTensors, LlamaDims, RawTensor};
use crate::convert_vocab::{infer_kind, Vocab, VocabEntry};
use safetensors::Dtype;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// A GGUF metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    Int(i64),
    Uint(u64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<GgufValue>),
}

impl GgufValue {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::Uint(v) => Some(v),
            GgufValue::Int(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::Float(v) => Some(v),
            GgufValue::Uint(v) => Some(v as f64),
            GgufValue::Int(v) => Some(v as f64),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// One tensor's entry in the GGUF tensor table.
#[derive(Debug, Clone)]
pub struct GgufTensorInfo {
    pub name: String,
    /// Row-major shape (GGUF's dims reversed).
    pub shape: Vec<usize>,
    pub ggml_type: u32,
    pub offset: u64,
}

/// A parsed GGUF file held in memory.
#[derive(Debug)]
pub struct GgufFile {
    pub version: u32,
    pub metadata: BTreeMap<String, GgufValue>,
    pub tensors: Vec<GgufTensorInfo>,
    data_start: usize,
    bytes: Vec<u8>,
}

struct Reader<'a> {
    path: &'a Path,
    b: &'a [u8],
    off: usize,
}

impl Reader<'_> {
    fn bytes(&mut self, n: usize) -> Result<&[u8], ConvertError> {
        let s = self
            .off
            .checked_add(n)
            .and_then(|end| self.b.get(self.off..end));
        let s = s.ok_or_else(|| {
            ConvertError::format(self.path, format!("truncated at byte {}", self.off))
        })?;
        self.off += n;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, ConvertError> {
        Ok(u32::from_le_bytes(
            self.bytes(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, ConvertError> {
        Ok(u64::from_le_bytes(
            self.bytes(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn len(&mut self) -> Result<usize, ConvertError> {
        let v = self.u64()?;
        usize::try_from(v)
            .ok()
            .filter(|n| *n <= self.b.len())
            .ok_or_else(|| {
                ConvertError::format(
                    self.path,
                    format!("implausible length {v} at byte {}", self.off),
                )
            })
    }
    fn string(&mut self) -> Result<String, ConvertError> {
        let n = self.len()?;
        let at = self.off;
        String::from_utf8(self.bytes(n)?.to_vec()).map_err(|_| {
            ConvertError::format(self.path, format!("string at byte {at} is not UTF-8"))
        })
    }
    fn value(&mut self, ty: u32) -> Result<GgufValue, ConvertError> {
        use GgufValue::*;
        Ok(match ty {
            0 => Uint(self.bytes(1)?[0] as u64),
            1 => Int(self.bytes(1)?[0] as i8 as i64),
            2 => Uint(u16::from_le_bytes(self.bytes(2)?.try_into().expect("2")) as u64),
            3 => Int(i16::from_le_bytes(self.bytes(2)?.try_into().expect("2")) as i64),
            4 => Uint(self.u32()? as u64),
            5 => Int(self.u32()? as i32 as i64),
            // Shortest decimal of the f32, so 1e-5 stored as f32 reads back as 1e-5.
            6 => Float(
                f32::from_bits(self.u32()?)
                    .to_string()
                    .parse()
                    .unwrap_or(f64::NAN),
            ),
            7 => Bool(self.bytes(1)?[0] != 0),
            8 => Str(self.string()?),
            9 => {
                let inner = self.u32()?;
                let n = self.len()?;
                let mut items = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    items.push(self.value(inner)?);
                }
                Array(items)
            }
            10 => Uint(self.u64()?),
            11 => Int(self.u64()? as i64),
            12 => Float(f64::from_bits(self.u64()?)),
            t => {
                return Err(ConvertError::format(
                    self.path,
                    format!("unknown metadata value type {t} at byte {}", self.off),
                ))
            }
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self, ConvertError> {
        let bytes = std::fs::read(path).map_err(|e| ConvertError::io(path, e))?;
        let mut r = Reader {
            path,
            b: &bytes,
            off: 0,
        };
        if r.bytes(4)? != b"GGUF" {
            return Err(ConvertError::format(
                path,
                "not a GGUF file (no GGUF magic)",
            ));
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(ConvertError::format(
                path,
                format!("GGUF version {version} (supported: 2, 3)"),
            ));
        }
        let n_tensors = r.len()?;
        let n_kv = r.len()?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string()?;
            let ty = r.u32()?;
            metadata.insert(key, r.value(ty)?);
        }
        let mut tensors = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = r.string()?;
            let nd = r.u32()? as usize;
            let mut shape = Vec::with_capacity(nd);
            for _ in 0..nd {
                shape.push(r.len()?);
            }
            shape.reverse();
            let ggml_type = r.u32()?;
            let offset = r.u64()?;
            tensors.push(GgufTensorInfo {
                name,
                shape,
                ggml_type,
                offset,
            });
        }
        let align = metadata
            .get("general.alignment")
            .and_then(GgufValue::as_u64)
            .unwrap_or(32) as usize;
        let data_start = r.off.div_ceil(align.max(1)) * align.max(1);
        Ok(GgufFile {
            version,
            metadata,
            tensors,
            data_start,
            bytes,
        })
    }

    /// A tensor's data as a dense F32/F16/BF16 tensor.
    pub fn tensor(&self, info: &GgufTensorInfo) -> Result<RawTensor, ConvertError> {
        let dtype = match info.ggml_type {
            0 => Dtype::F32,
            1 => Dtype::F16,
            30 => Dtype::BF16,
            t => {
                return Err(ConvertError::tensor(
                    &info.name,
                    format!(
                        "ggml type {t} is quantized or unsupported (only F32, F16, BF16 convert)"
                    ),
                ))
            }
        };
        let range = info
            .shape
            .iter()
            .try_fold(dtype.bitsize() / 8, |acc, d| acc.checked_mul(*d))
            .and_then(|n| {
                let start = self
                    .data_start
                    .checked_add(usize::try_from(info.offset).ok()?)?;
                Some(start..start.checked_add(n)?)
            });
        let data = range.and_then(|r| self.bytes.get(r)).ok_or_else(|| {
            ConvertError::tensor(&info.name, "data runs past the end of the file")
        })?;
        Ok(RawTensor::new(dtype, info.shape.clone(), data.to_vec()).expect("length computed"))
    }

    fn meta(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    fn meta_usize(&self, path: &Path, key: &str) -> Result<usize, ConvertError> {
        self.meta(key)
            .and_then(GgufValue::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| {
                ConvertError::format(path, format!("metadata {key} is missing or not an integer"))
            })
    }

    /// The embedded SentencePiece-style vocabulary (`tokenizer.ggml.model = llama`).
    pub fn vocab(&self, path: &Path) -> Result<Option<Vocab>, ConvertError> {
        let Some(GgufValue::Array(tokens)) = self.meta("tokenizer.ggml.tokens") else {
            return Ok(None);
        };
        let model = self
            .meta("tokenizer.ggml.model")
            .and_then(GgufValue::as_str)
            .unwrap_or("llama");
        if model != "llama" {
            return Err(ConvertError::format(
                path,
                format!("tokenizer.ggml.model = {model}: only SentencePiece (llama) vocabularies convert"),
            ));
        }
        let arr = |k: &str| match self.meta(k) {
            Some(GgufValue::Array(a)) => Some(a.clone()),
            _ => None,
        };
        let scores = arr("tokenizer.ggml.scores");
        let types = arr("tokenizer.ggml.token_type");
        let id = |k: &str, d: i32| {
            self.meta(k)
                .and_then(GgufValue::as_u64)
                .map(|v| v as i32)
                .unwrap_or(d)
        };
        let (unk, bos, eos) = (
            id("tokenizer.ggml.unknown_token_id", 0),
            id("tokenizer.ggml.bos_token_id", 1),
            id("tokenizer.ggml.eos_token_id", 2),
        );
        let mut entries = Vec::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            let piece = t
                .as_str()
                .ok_or_else(|| {
                    ConvertError::format(
                        path,
                        format!("tokenizer.ggml.tokens[{i}] is not a string"),
                    )
                })?
                .to_string();
            let score = scores
                .as_ref()
                .and_then(|s| s.get(i))
                .and_then(GgufValue::as_f64)
                .unwrap_or(0.0) as f32;
            let kind = types
                .as_ref()
                .and_then(|s| s.get(i))
                .and_then(GgufValue::as_u64)
                .map(|v| v as i32)
                .unwrap_or_else(|| infer_kind(i, &piece, unk as usize, bos as usize, eos as usize));
            entries.push(VocabEntry { piece, score, kind });
        }
        Ok(Some(Vocab {
            entries,
            unk_id: unk,
            bos_id: bos,
            eos_id: eos,
            pad_id: id("tokenizer.ggml.padding_token_id", -1),
        }))
    }
}

fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let sub = match part {
        "attn_norm.weight" => "input_layernorm",
        "attn_q.weight" => "self_attn.q_proj",
        "attn_k.weight" => "self_attn.k_proj",
        "attn_v.weight" => "self_attn.v_proj",
        "attn_output.weight" => "self_attn.o_proj",
        "ffn_norm.weight" => "post_attention_layernorm",
        "ffn_gate.weight" => "mlp.gate_proj",
        "ffn_up.weight" => "mlp.up_proj",
        "ffn_down.weight" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{sub}.weight"))
}

/// Reads a GGUF Llama into HF-named tensors and dims, plus its vocabulary when embedded.
pub fn read_gguf(path: &Path) -> Result<(LlamaDims, HfTensors, Option<Vocab>), ConvertError> {
    let g = GgufFile::open(path)?;
    let arch = g
        .meta("general.architecture")
        .and_then(GgufValue::as_str)
        .unwrap_or("llama");
    if arch != "llama" {
        return Err(ConvertError::format(
            path,
            format!("general.architecture = {arch}; only llama converts"),
        ));
    }
    let n_heads = g.meta_usize(path, "llama.attention.head_count")?;
    let n_kv = g
        .meta_usize(path, "llama.attention.head_count_kv")
        .unwrap_or(n_heads);
    let mut tensors = BTreeMap::new();
    let mut by_gguf: HashMap<&str, RawTensor> = HashMap::new();
    for info in &g.tensors {
        let Some(name) = hf_name(&info.name) else {
            tracing::debug!(tensor = %info.name, "skipping GGUF tensor without an HF counterpart");
            continue;
        };
        let t = g.tensor(info)?;
        let t = if name.ends_with("q_proj.weight") {
            t.permute_rotary_to_hf(&name, n_heads)?
        } else if name.ends_with("k_proj.weight") {
            t.permute_rotary_to_hf(&name, n_kv)?
        } else {
            t
        };
        if matches!(info.name.as_str(), "token_embd.weight" | "output.weight") {
            by_gguf.insert(info.name.as_str(), t.clone());
        }
        tensors.insert(name, t);
    }
    let embed = by_gguf
        .get("token_embd.weight")
        .ok_or_else(|| ConvertError::format(path, "no token_embd.weight tensor"))?;
    let tied = by_gguf.get("output.weight").is_none_or(|o| o == embed);
    if tied {
        tensors.remove("lm_head.weight");
    }
    let dims = LlamaDims {
        hidden_size: g.meta_usize(path, "llama.embedding_length")?,
        intermediate_size: g.meta_usize(path, "llama.feed_forward_length")?,
        num_hidden_layers: g.meta_usize(path, "llama.block_count")?,
        num_attention_heads: n_heads,
        num_key_value_heads: n_kv,
        vocab_size: embed.shape[0],
        max_position_embeddings: g.meta_usize(path, "llama.context_length").unwrap_or(2048),
        rms_norm_eps: g
            .meta("llama.attention.layer_norm_rms_epsilon")
            .and_then(GgufValue::as_f64)
            .unwrap_or(1e-5),
        rope_theta: g
            .meta("llama.rope.freq_base")
            .and_then(GgufValue::as_f64)
            .unwrap_or(10000.0),
        tie_word_embeddings: tied,
        bos_token_id: g
            .meta("tokenizer.ggml.bos_token_id")
            .and_then(GgufValue::as_u64)
            .unwrap_or(1) as u32,
        eos_token_id: g
            .meta("tokenizer.ggml.eos_token_id")
            .and_then(GgufValue::as_u64)
            .unwrap_or(2) as u32,
    };
    let vocab = g.vocab(path)?;
    Ok((dims, tensors, vocab))
}

/// `ferrotune convert --from gguf`: writes the HF directory `out` (with the embedded vocabulary as a tokenizer).
pub fn convert_gguf(input: &Path, out: &Path) -> Result<LlamaDims, ConvertError> {
    let (dims, tensors, vocab) = read_gguf(input)?;
    let extra = match vocab {
        Some(v) => v.hf_files(),
        None => {
            tracing::warn!(file = %input.display(), "GGUF has no embedded vocabulary: no tokenizer written");
            Vec::new()
        }
    };
    write_hf_dir(out, &dims, &tensors, &extra)?;
    Ok(dims)
}
