//! Reading a PyTorch `torch.save` checkpoint (the zip format of torch ≥ 1.6) without Python or tch.
//!
//! The zip holds `<archive>/data.pkl` (a pickle whose tensors are `torch._utils._rebuild_tensor_v2` calls on
//! persistent storage ids `('storage', torch.FloatStorage, key, location, numel)`) and the raw little-endian
//! storages as `<archive>/data/<key>`. tch 0.24 cannot load these (its loaders take TorchScript archives),
//! so a small pickle machine handles the opcodes `torch.save` emits (protocols 2–4) and materializes each
//! tensor (offset, size, stride) into a dense [`RawTensor`]. Only plain (nested) dicts of tensors and
//! scalars are understood; anything else reads as an opaque value.

use crate::convert::{ConvertError, RawTensor};
use safetensors::Dtype;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

#[derive(Debug, Clone)]
enum Val {
    None,
    Int(i64),
    Str(String),
    Tuple(Vec<Val>),
    List(Vec<Val>),
    Dict(Vec<(Val, Val)>),
    Global(String, String),
    Storage {
        dtype: Dtype,
        key: String,
    },
    Tensor {
        dtype: Dtype,
        key: String,
        offset: usize,
        size: Vec<usize>,
        stride: Vec<usize>,
    },
    Opaque,
    Mark,
}

fn storage_dtype(name: &str) -> Option<Dtype> {
    Some(match name {
        "FloatStorage" => Dtype::F32,
        "HalfStorage" => Dtype::F16,
        "BFloat16Storage" => Dtype::BF16,
        "DoubleStorage" => Dtype::F64,
        "LongStorage" => Dtype::I64,
        "IntStorage" => Dtype::I32,
        "ByteStorage" => Dtype::U8,
        "BoolStorage" => Dtype::BOOL,
        _ => return None,
    })
}

fn usizes(v: &Val) -> Option<Vec<usize>> {
    match v {
        Val::Tuple(xs) | Val::List(xs) => xs
            .iter()
            .map(|x| match x {
                Val::Int(i) => usize::try_from(*i).ok(),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

struct Machine<'a> {
    path: &'a Path,
    b: &'a [u8],
    pos: usize,
    stack: Vec<Val>,
    memo: BTreeMap<u32, Val>,
}

impl Machine<'_> {
    fn err(&self, msg: impl Into<String>) -> ConvertError {
        ConvertError::format(
            self.path,
            format!("data.pkl at byte {}: {}", self.pos, msg.into()),
        )
    }
    fn take(&mut self, n: usize) -> Result<&[u8], ConvertError> {
        let s = self
            .b
            .get(self.pos..self.pos + n)
            .ok_or_else(|| self.err("truncated"))?;
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, ConvertError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, ConvertError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn line(&mut self) -> Result<String, ConvertError> {
        let end = self.b[self.pos..]
            .iter()
            .position(|c| *c == b'\n')
            .ok_or_else(|| self.err("unterminated line"))?;
        let s = String::from_utf8_lossy(&self.b[self.pos..self.pos + end]).into_owned();
        self.pos += end + 1;
        Ok(s)
    }
    fn string(&mut self, n: usize) -> Result<Val, ConvertError> {
        let s = String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| self.err("string is not UTF-8"))?;
        Ok(Val::Str(s))
    }
    fn pop(&mut self) -> Result<Val, ConvertError> {
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }
    fn pop_mark(&mut self) -> Result<Vec<Val>, ConvertError> {
        let at = self
            .stack
            .iter()
            .rposition(|v| matches!(v, Val::Mark))
            .ok_or_else(|| self.err("no MARK"))?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }
    fn top(&mut self) -> Result<&mut Val, ConvertError> {
        let pos = self.pos;
        self.stack.last_mut().ok_or_else(|| {
            ConvertError::format(self.path, format!("data.pkl at byte {pos}: empty stack"))
        })
    }

    fn reduce(&self, func: Val, args: Val) -> Val {
        let Val::Global(module, name) = &func else {
            return Val::Opaque;
        };
        let args = match args {
            Val::Tuple(a) => a,
            _ => return Val::Opaque,
        };
        match (module.as_str(), name.as_str()) {
            ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
                let (
                    Some(Val::Storage { dtype, key }),
                    Some(Val::Int(offset)),
                    Some(size),
                    Some(stride),
                ) = (
                    args.first(),
                    args.get(1),
                    args.get(2).and_then(usizes),
                    args.get(3).and_then(usizes),
                )
                else {
                    return Val::Opaque;
                };
                Val::Tensor {
                    dtype: *dtype,
                    key: key.clone(),
                    offset: *offset as usize,
                    size,
                    stride,
                }
            }
            ("torch._utils", "_rebuild_parameter") => {
                args.into_iter().next().unwrap_or(Val::Opaque)
            }
            ("collections", "OrderedDict") => Val::Dict(Vec::new()),
            _ => Val::Opaque,
        }
    }

    fn run(mut self) -> Result<Val, ConvertError> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?;
                }
                0x95 => {
                    self.take(8)?;
                }
                b'.' => return self.pop(),
                b'}' => self.stack.push(Val::Dict(Vec::new())),
                b']' => self.stack.push(Val::List(Vec::new())),
                b')' => self.stack.push(Val::Tuple(Vec::new())),
                b'(' => self.stack.push(Val::Mark),
                b'N' => self.stack.push(Val::None),
                0x88 | 0x89 => self.stack.push(Val::Opaque),
                b'J' => {
                    let v = self.u32()? as i32 as i64;
                    self.stack.push(Val::Int(v))
                }
                b'K' => {
                    let v = self.u8()? as i64;
                    self.stack.push(Val::Int(v))
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.take(2)?.try_into().expect("2")) as i64;
                    self.stack.push(Val::Int(v))
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let bytes = self.take(n)?.to_vec();
                    if n > 8 {
                        return Err(self.err("LONG1 wider than 64 bits"));
                    }
                    let mut v: i64 = 0;
                    for (i, b) in bytes.iter().enumerate() {
                        v |= (*b as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && bytes[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.stack.push(Val::Int(v))
                }
                b'G' => {
                    self.take(8)?;
                    self.stack.push(Val::Opaque)
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let s = self.string(n)?;
                    self.stack.push(s)
                }
                0x8c | b'U' => {
                    let n = self.u8()? as usize;
                    let s = self.string(n)?;
                    self.stack.push(s)
                }
                b'T' => {
                    let n = self.u32()? as usize;
                    let s = self.string(n)?;
                    self.stack.push(s)
                }
                b'C' | b'B' => {
                    let n = if op == b'C' {
                        self.u8()? as usize
                    } else {
                        self.u32()? as usize
                    };
                    self.take(n)?;
                    self.stack.push(Val::Opaque)
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Val::Global(module, name))
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Val::Str(m), Val::Str(n)) => self.stack.push(Val::Global(m, n)),
                        _ => return Err(self.err("STACK_GLOBAL without strings")),
                    }
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(k, v);
                }
                b'r' => {
                    let k = self.u32()?;
                    let v = self.top()?.clone();
                    self.memo.insert(k, v);
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(k, v);
                }
                b'h' | b'j' => {
                    let k = if op == b'h' {
                        self.u8()? as u32
                    } else {
                        self.u32()?
                    };
                    let v = self
                        .memo
                        .get(&k)
                        .cloned()
                        .ok_or_else(|| self.err(format!("memo {k} unset")))?;
                    self.stack.push(v)
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Val::Tuple(items))
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(self.err("stack underflow in TUPLEn"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Val::Tuple(items))
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = match pid {
                        Val::Tuple(t) if t.len() >= 3 => match (&t[1], &t[2]) {
                            (Val::Global(_, cls), Val::Str(key)) => {
                                let dtype = storage_dtype(cls).ok_or_else(|| {
                                    self.err(format!("storage type {cls} is unsupported"))
                                })?;
                                Val::Storage {
                                    dtype,
                                    key: key.clone(),
                                }
                            }
                            _ => Val::Opaque,
                        },
                        _ => Val::Opaque,
                    };
                    self.stack.push(v)
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let v = self.reduce(func, args);
                    self.stack.push(v)
                }
                0x81 => {
                    let _args = self.pop()?;
                    let _cls = self.pop()?;
                    self.stack.push(Val::Opaque)
                }
                b'b' => {
                    self.pop()?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    if let Val::Dict(d) = self.top()? {
                        d.push((k, v))
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if let Val::Dict(d) = self.top()? {
                        let mut it = items.into_iter();
                        while let (Some(k), Some(v)) = (it.next(), it.next()) {
                            d.push((k, v));
                        }
                    }
                }
                b'a' => {
                    let v = self.pop()?;
                    if let Val::List(l) = self.top()? {
                        l.push(v)
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    if let Val::List(l) = self.top()? {
                        l.extend(items)
                    }
                }
                other => return Err(self.err(format!("unsupported pickle opcode 0x{other:02x}"))),
            }
        }
    }
}

/// Gathers a strided view of `storage` (elements of `esize` bytes) into dense row-major bytes.
fn gather(
    storage: &[u8],
    esize: usize,
    offset: usize,
    size: &[usize],
    stride: &[usize],
) -> Option<Vec<u8>> {
    let numel: usize = size.iter().product();
    let mut out = Vec::with_capacity(numel * esize);
    let contiguous = {
        let mut expect = 1;
        size.iter().zip(stride).rev().all(|(s, st)| {
            let ok = *s == 1 || *st == expect;
            expect *= s;
            ok
        })
    };
    if contiguous {
        return storage
            .get(offset * esize..(offset + numel) * esize)
            .map(<[u8]>::to_vec);
    }
    let mut idx = vec![0usize; size.len()];
    for _ in 0..numel {
        let e = offset + idx.iter().zip(stride).map(|(i, s)| i * s).sum::<usize>();
        out.extend_from_slice(storage.get(e * esize..(e + 1) * esize)?);
        for d in (0..size.len()).rev() {
            idx[d] += 1;
            if idx[d] < size[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Some(out)
}

/// Reads every tensor of a `torch.save`d (possibly nested) dict, keyed by its dotted path.
pub fn load_torch_state_dict(path: &Path) -> Result<BTreeMap<String, RawTensor>, ConvertError> {
    let file = std::fs::File::open(path).map_err(|e| ConvertError::io(path, e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| {
        ConvertError::format(
            path,
            format!("not a torch zip checkpoint (legacy torch.save format?): {e}"),
        )
    })?;
    let pkl_name = zip
        .file_names()
        .find(|n| n.ends_with("data.pkl"))
        .map(str::to_string)
        .ok_or_else(|| ConvertError::format(path, "no data.pkl inside the zip"))?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    let mut read_entry = |name: &str| -> Result<Vec<u8>, ConvertError> {
        let mut f = zip
            .by_name(name)
            .map_err(|e| ConvertError::format(path, format!("entry {name}: {e}")))?;
        let mut buf = Vec::with_capacity(f.size() as usize);
        f.read_to_end(&mut buf)
            .map_err(|e| ConvertError::io(path, e))?;
        Ok(buf)
    };
    let pkl = read_entry(&pkl_name)?;
    let root = Machine {
        path,
        b: &pkl,
        pos: 0,
        stack: Vec::new(),
        memo: BTreeMap::new(),
    }
    .run()?;
    let mut flat = Vec::new();
    flatten(String::new(), root, &mut flat);
    let mut storages: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (name, v) in flat {
        let Val::Tensor {
            dtype,
            key,
            offset,
            size,
            stride,
        } = v
        else {
            continue;
        };
        if !storages.contains_key(&key) {
            let bytes = read_entry(&format!("{prefix}data/{key}"))?;
            storages.insert(key.clone(), bytes);
        }
        let data = gather(&storages[&key], dtype.bitsize() / 8, offset, &size, &stride)
            .ok_or_else(|| {
                ConvertError::tensor(
                    &name,
                    format!("view outside storage {key} of {}", path.display()),
                )
            })?;
        let t = RawTensor::new(dtype, size, data).map_err(|m| ConvertError::tensor(&name, m))?;
        out.insert(name, t);
    }
    Ok(out)
}

fn flatten(prefix: String, v: Val, out: &mut Vec<(String, Val)>) {
    match v {
        Val::Dict(items) => {
            for (k, v) in items {
                let k = match k {
                    Val::Str(s) => s,
                    Val::Int(i) => i.to_string(),
                    _ => continue,
                };
                let name = if prefix.is_empty() {
                    k
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(name, v, out);
            }
        }
        t @ Val::Tensor { .. } => out.push((prefix, t)),
        Val::None | Val::Int(_) | Val::Str(_) | Val::Tuple(_) | Val::List(_) => {}
        Val::Global(..) | Val::Storage { .. } | Val::Opaque | Val::Mark => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_strided_transpose() {
        // storage 0..6 as 2x3, viewed transposed (3x2, stride [1, 3])
        let st: Vec<u8> = (0u8..6).collect();
        assert_eq!(
            gather(&st, 1, 0, &[3, 2], &[1, 3]).unwrap(),
            vec![0, 3, 1, 4, 2, 5]
        );
        assert_eq!(
            gather(&st, 1, 2, &[2, 2], &[2, 1]).unwrap(),
            vec![2, 3, 4, 5]
        );
        assert!(gather(&st, 1, 4, &[2, 2], &[2, 1]).is_none());
    }
}
