//! Random access to the tensors of a safetensors checkpoint directory by name, and to any element range of
//! one, without loading the rest: [`CheckpointIndex`] memory-maps every weight file once, indexes the
//! headers, and copies out exactly the bytes asked for (then drops those pages from the process with
//! `MADV_DONTNEED`, as the streaming loader does). A sharded trainer builds each rank's chunk of a flat
//! parameter straight from the files this way, so no rank ever holds the whole model.

use crate::error::ModelError;
use crate::pretrained::checkpoint_files;
use crate::safetensors_io::{kind_of_st, read_header};
use memmap2::{Mmap, UncheckedAdvice};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Where one tensor lives.
#[derive(Debug, Clone)]
struct Entry {
    file: usize,
    kind: Kind,
    shape: Vec<i64>,
    /// Absolute byte offset of the first element in the mapping.
    start: usize,
}

/// The tensors of a checkpoint directory (safetensors files only), mapped and indexed by name
/// (`module.` prefixes stripped, as [`crate::pretrained::load_weights`] does).
#[derive(Debug)]
pub struct CheckpointIndex {
    maps: Vec<(PathBuf, Mmap)>,
    entries: HashMap<String, Entry>,
}

impl CheckpointIndex {
    /// Indexes `dir`'s weight files; `Ok(None)` when they are not all safetensors (`pytorch_model*.bin`
    /// has no random access: load it whole instead).
    pub fn open(dir: &Path) -> Result<Option<Self>, ModelError> {
        let files = checkpoint_files(dir)?;
        if files
            .iter()
            .any(|f| f.extension().is_none_or(|e| e != "safetensors"))
        {
            return Ok(None);
        }
        let mut maps = Vec::with_capacity(files.len());
        let mut entries = HashMap::new();
        for (i, path) in files.into_iter().enumerate() {
            let file = std::fs::File::open(&path).map_err(|e| ModelError::io(&path, e))?;
            // SAFETY: the file is opened read-only and not expected to change while it is mapped.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(&path, e))?;
            let (header, data) = read_header(&path, &map)?;
            for h in header {
                let kind = kind_of_st(&h.dtype).ok_or_else(|| {
                    ModelError::ckpt(
                        &path,
                        format!("`{}`: unsupported dtype {}", h.name, h.dtype),
                    )
                })?;
                let numel: i64 = h.shape.iter().product();
                if numel as usize * kind.elt_size_in_bytes() != h.offsets[1] - h.offsets[0] {
                    return Err(ModelError::ckpt(
                        &path,
                        format!("`{}`: shape {:?} does not match its bytes", h.name, h.shape),
                    ));
                }
                let name = h
                    .name
                    .strip_prefix("module.")
                    .unwrap_or(&h.name)
                    .to_string();
                entries.insert(
                    name,
                    Entry {
                        file: i,
                        kind,
                        shape: h.shape,
                        start: data + h.offsets[0],
                    },
                );
            }
            maps.push((path, map));
        }
        Ok(Some(CheckpointIndex { maps, entries }))
    }

    /// Whether the checkpoint has tensor `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The stored shape of `name`.
    pub fn shape(&self, name: &str) -> Option<&[i64]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// Elements `[start, start + len)` of tensor `name` in row-major order, copied into a new flat CPU
    /// tensor of `kind`.
    pub fn read_range(
        &self,
        name: &str,
        start: i64,
        len: i64,
        kind: Kind,
    ) -> Result<Tensor, ModelError> {
        let mut out = Tensor::empty([len], (kind, Device::Cpu));
        self.read_range_into(name, start, &mut out)?;
        Ok(out)
    }

    /// Elements `[start, start + dst.numel())` of tensor `name` (row-major) copied into `dst` (any dtype
    /// and device; converted on the way), with no intermediate copy.
    pub fn read_range_into(
        &self,
        name: &str,
        start: i64,
        dst: &mut Tensor,
    ) -> Result<(), ModelError> {
        let len = dst.numel() as i64;
        let e = self.entries.get(name).ok_or_else(|| {
            ModelError::ckpt(
                self.maps.first().map_or_else(PathBuf::new, |m| m.0.clone()),
                format!("no tensor `{name}`"),
            )
        })?;
        let (path, map) = &self.maps[e.file];
        let numel: i64 = e.shape.iter().product();
        if start < 0 || start + len > numel {
            return Err(ModelError::ckpt(
                path,
                format!("`{name}`: elements {start}..{} of {numel}", start + len),
            ));
        }
        let size = e.kind.elt_size_in_bytes();
        let from = e.start + start as usize * size;
        let to = from + len as usize * size;
        let bytes = &map[from..to];
        // SAFETY: `bytes` holds exactly `len` elements of `e.kind` inside the mapping, which outlives the
        // view; the view is copied into `dst` before it is dropped.
        let view =
            unsafe { Tensor::f_from_blob(bytes.as_ptr(), &[len], &[], e.kind, Device::Cpu) }?;
        tch::no_grad(|| dst.reshape([len]).copy_(&view));
        drop(view);
        let page = 4096;
        let aligned = from / page * page;
        // SAFETY: read-only file mapping; dropping the pages only makes later reads fault them back in.
        let _ =
            unsafe { map.unchecked_advise_range(UncheckedAdvice::DontNeed, aligned, to - aligned) };
        Ok(())
    }
}
