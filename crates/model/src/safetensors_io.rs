//! safetensors read and write without whole-file copies.
//!
//! Reading memory-maps the file and hands each tensor to the caller as a zero-copy CPU view; after the
//! caller has copied it (to its dtype and device) the pages are dropped from the process (`MADV_DONTNEED`), so
//! the peak resident memory stays near one copy of the weights. Writing streams tensor by tensor into a
//! temporary file renamed into place.

use crate::error::ModelError;
use memmap2::{Mmap, UncheckedAdvice};
use serde_json::{Map, Value};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// The tch kind of a safetensors dtype name (`F32`, `BF16`, ...).
pub fn kind_of_st(s: &str) -> Option<Kind> {
    Some(match s {
        "F32" => Kind::Float,
        "F16" => Kind::Half,
        "BF16" => Kind::BFloat16,
        "F64" => Kind::Double,
        "I64" => Kind::Int64,
        "I32" => Kind::Int,
        "I16" => Kind::Int16,
        "I8" => Kind::Int8,
        "U8" => Kind::Uint8,
        "BOOL" => Kind::Bool,
        _ => return None,
    })
}

fn st_of_kind(k: Kind) -> Option<&'static str> {
    Some(match k {
        Kind::Float => "F32",
        Kind::Half => "F16",
        Kind::BFloat16 => "BF16",
        Kind::Double => "F64",
        Kind::Int64 => "I64",
        Kind::Int => "I32",
        Kind::Int16 => "I16",
        Kind::Int8 => "I8",
        Kind::Uint8 => "U8",
        Kind::Bool => "BOOL",
        _ => return None,
    })
}

/// One tensor of a safetensors header.
#[derive(Debug, Clone)]
pub struct HeaderEntry {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<i64>,
    /// [start, end) relative to the data section.
    pub offsets: [usize; 2],
}

/// The entries of a safetensors header (in file order) and the offset of the data section.
pub fn read_header(path: &Path, bytes: &[u8]) -> Result<(Vec<HeaderEntry>, usize), ModelError> {
    let bad = |m: &str| ModelError::ckpt(path, format!("not a safetensors file: {m}"));
    if bytes.len() < 8 {
        return Err(bad("shorter than 8 bytes"));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header = bytes
        .get(8..8 + n)
        .ok_or_else(|| bad("header runs past the end"))?;
    let v: Map<String, Value> = serde_json::from_slice(header).map_err(|e| ModelError::Json {
        path: path.into(),
        source: e,
    })?;
    let mut out = vec![];
    for (name, info) in v {
        if name == "__metadata__" {
            continue;
        }
        let dtype = info["dtype"].as_str().unwrap_or_default().to_string();
        let shape: Vec<i64> = info["shape"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_i64).collect())
            .unwrap_or_default();
        let off = info["data_offsets"]
            .as_array()
            .ok_or_else(|| bad(&format!("`{name}` has no data_offsets")))?;
        let s = off.first().and_then(Value::as_u64).unwrap_or(0) as usize;
        let e = off.get(1).and_then(Value::as_u64).unwrap_or(0) as usize;
        if 8 + n + e > bytes.len() || s > e {
            return Err(bad(&format!("`{name}` lies outside the file")));
        }
        out.push(HeaderEntry {
            name,
            dtype,
            shape,
            offsets: [s, e],
        });
    }
    out.sort_by_key(|t| t.offsets[0]);
    Ok((out, 8 + n))
}

/// Calls `f(name, view)` for every tensor of `path` in file order; `view` borrows the mapped file (CPU) and
/// must be copied before `f` returns.
pub fn read_safetensors(
    path: &Path,
    mut f: impl FnMut(&str, &Tensor) -> Result<(), ModelError>,
) -> Result<(), ModelError> {
    let file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    // SAFETY: the file is opened read-only and not expected to change while it is mapped.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
    let (entries, data) = read_header(path, &map)?;
    for HeaderEntry {
        name,
        dtype,
        shape,
        offsets: [s, e],
    } in entries
    {
        let kind = kind_of_st(&dtype).ok_or_else(|| {
            ModelError::ckpt(path, format!("`{name}`: unsupported dtype {dtype}"))
        })?;
        let numel: i64 = shape.iter().product();
        if (numel as usize) * kind.elt_size_in_bytes() != e - s {
            return Err(ModelError::ckpt(
                path,
                format!(
                    "`{name}`: shape {shape:?} does not match its {} bytes",
                    e - s
                ),
            ));
        }
        let ptr = map[data + s..].as_ptr();
        // SAFETY: the range [s, e) lies inside the mapping (checked in read_header) and has exactly
        // numel * elt_size bytes; the view does not outlive `map` (callers copy it before returning).
        let view = unsafe { Tensor::f_from_blob(ptr, &shape, &[], kind, Device::Cpu) }?;
        f(&name, &view)?;
        drop(view);
        let page = 4096;
        let start = (data + s) / page * page;
        // SAFETY: read-only file mapping; dropping the pages only makes later reads fault them back in.
        let _ = unsafe {
            map.unchecked_advise_range(UncheckedAdvice::DontNeed, start, data + e - start)
        };
    }
    Ok(())
}

/// Writes `tensors` as a safetensors file at `path` atomically, streaming one tensor at a time.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: &[(&str, &str)],
) -> Result<(), ModelError> {
    let mut header = Map::new();
    if !metadata.is_empty() {
        let m: Map<String, Value> = metadata
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(*v)))
            .collect();
        header.insert("__metadata__".into(), Value::Object(m));
    }
    let mut off = 0usize;
    for (name, t) in tensors {
        let dt = st_of_kind(t.kind())
            .ok_or_else(|| ModelError::tensor(name, format!("cannot store kind {:?}", t.kind())))?;
        let n = t.numel() * t.kind().elt_size_in_bytes();
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dt, "shape": t.size(), "data_offsets": [off, off + n]}),
        );
        off += n;
    }
    let mut h = serde_json::to_vec(&Value::Object(header)).expect("JSON");
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    ferrotune_core::write_atomic_with(path, |w| {
        w.write_all(&(h.len() as u64).to_le_bytes())?;
        w.write_all(&h)?;
        for (_, t) in tensors {
            let c = t.to_device(Device::Cpu).contiguous();
            let n = c.numel() * c.kind().elt_size_in_bytes();
            if n == 0 {
                continue;
            }
            // SAFETY: `c` is a contiguous CPU tensor of exactly `n` bytes that outlives the slice; written
            // straight from its storage, so no tensor-sized copy is ever allocated (the largest tensor, e.g.
            // the embeddings, would otherwise add its size to the writer's peak memory).
            let bytes = unsafe { std::slice::from_raw_parts(c.data_ptr() as *const u8, n) };
            w.write_all(bytes)?;
        }
        Ok(())
    })?;
    Ok(())
}
