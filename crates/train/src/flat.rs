//! Flat parameter layouts: the tensors of one sharding unit (a decoder layer, or the "root" of
//! embeddings + final norm + lm_head) laid end to end in one 1-D buffer, padded to a multiple of the
//! world size so that rank `r` owns the contiguous chunk `[r·chunk, (r+1)·chunk)` (FSDP's FlatParameter,
//! DeepSpeed's partitions).
//!
//! The model keeps its own tensor handles; a layout points them at views of a flat buffer
//! ([`FlatLayout::install`], `param.data = view`), or at an empty tensor ([`FlatLayout::free`]) while the
//! unit is sharded away. Autograd metadata (requires_grad) stays on the handles.

use ferrotune_model::{layer_index, CheckpointIndex};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// One tensor of a layout.
#[derive(Debug)]
pub struct FlatParam {
    pub name: String,
    /// The model's handle (shares its TensorImpl with the model).
    pub tensor: Tensor,
    pub shape: Vec<i64>,
    pub offset: i64,
    pub numel: i64,
}

/// The tensors of one unit with one dtype, trainable or frozen.
#[derive(Debug)]
pub struct FlatLayout {
    /// `layers.<i>` or `root`, plus `.frozen` for frozen tensors.
    pub key: String,
    pub params: Vec<FlatParam>,
    pub kind: Kind,
    pub device: Device,
    pub numel: i64,
    pub padded: i64,
    pub world: i64,
}

/// What a checkpoint records about a layout (the flat order of its tensors).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayoutMeta {
    pub key: String,
    pub kind: String,
    pub numel: i64,
    pub padded: i64,
    pub params: Vec<ParamMeta>,
}

/// One tensor's place in a flat layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamMeta {
    pub name: String,
    pub shape: Vec<i64>,
    pub offset: i64,
}

/// The sharding unit of a parameter key: its decoder layer, or `root`.
pub fn unit_of(name: &str) -> String {
    match layer_index(name) {
        Some(i) => format!("layers.{i}"),
        None => "root".into(),
    }
}

/// Groups `params` into layouts by unit (layers in order, then root); every unit's tensors must share a
/// dtype. `suffix` is appended to the key (`""` for trainable, `".frozen"` for frozen tensors).
pub fn build_layouts(
    params: Vec<(String, Tensor)>,
    world: usize,
    suffix: &str,
    device: Device,
) -> Result<Vec<FlatLayout>, String> {
    let mut units: Vec<(String, Vec<(String, Tensor)>)> = Vec::new();
    for (name, t) in params {
        let u = unit_of(&name);
        match units.iter_mut().find(|(k, _)| *k == u) {
            Some((_, v)) => v.push((name, t)),
            None => units.push((u, vec![(name, t)])),
        }
    }
    let order = |k: &str| {
        k.strip_prefix("layers.")
            .and_then(|i| i.parse::<usize>().ok())
            .unwrap_or(usize::MAX)
    };
    units.sort_by_key(|(k, _)| order(k));
    units
        .into_iter()
        .map(|(unit, ps)| FlatLayout::new(format!("{unit}{suffix}"), ps, world, device))
        .collect()
}

impl FlatLayout {
    fn new(
        key: String,
        ps: Vec<(String, Tensor)>,
        world: usize,
        device: Device,
    ) -> Result<Self, String> {
        let kind = ps[0].1.kind();
        let mut params = Vec::with_capacity(ps.len());
        let mut offset = 0;
        for (name, tensor) in ps {
            if tensor.kind() != kind {
                return Err(format!(
                    "unit `{key}`: `{name}` is {:?} but the unit's first tensor is {kind:?} (one dtype per unit)",
                    tensor.kind()
                ));
            }
            let numel = tensor.numel() as i64;
            params.push(FlatParam {
                name,
                shape: tensor.size(),
                tensor,
                offset,
                numel,
            });
            offset += numel;
        }
        let w = world as i64;
        Ok(FlatLayout {
            key,
            params,
            kind,
            device,
            numel: offset,
            padded: (offset + w - 1) / w * w,
            world: w,
        })
    }

    /// Elements per rank.
    pub fn chunk(&self) -> i64 {
        self.padded / self.world
    }

    /// The zero-padded flat of `parts` (one tensor per param, any shape of the right numel).
    pub fn flatten(&self, parts: &[Tensor]) -> Tensor {
        self.flatten_kind(parts, self.kind)
    }

    /// [`FlatLayout::flatten`] in dtype `kind` (fp32 masters and moments of a bf16 layout).
    pub fn flatten_kind(&self, parts: &[Tensor], kind: Kind) -> Tensor {
        let mut v: Vec<Tensor> = parts
            .iter()
            .map(|t| {
                t.detach()
                    .to_device(self.device)
                    .to_kind(kind)
                    .reshape([-1])
            })
            .collect();
        if self.padded > self.numel {
            v.push(Tensor::zeros(
                [self.padded - self.numel],
                (kind, self.device),
            ));
        }
        Tensor::cat(&v, 0)
    }

    /// The flat of the parameters' current values.
    pub fn flatten_values(&self) -> Tensor {
        let v: Vec<Tensor> = self.params.iter().map(|p| p.tensor.detach()).collect();
        self.flatten(&v)
    }

    /// The flat of the parameters' gradients (zeros where a gradient is undefined).
    pub fn flatten_grads(&self) -> Tensor {
        let v: Vec<Tensor> = self
            .params
            .iter()
            .map(|p| {
                let g = p.tensor.grad();
                if g.defined() {
                    g
                } else {
                    Tensor::zeros([p.numel], (self.kind, self.device))
                }
            })
            .collect();
        self.flatten(&v)
    }

    /// Rank `rank`'s chunk of the flat of the parameters' values, built without the full flat: the tensors
    /// `source` names are read (just the overlapping element range) from the checkpoint, the others taken
    /// from the model; zero padding at the end.
    pub fn chunk_from(
        &self,
        source: &CheckpointIndex,
        rank: usize,
    ) -> Result<Tensor, ferrotune_model::ModelError> {
        let (lo, hi) = (rank as i64 * self.chunk(), (rank as i64 + 1) * self.chunk());
        // Filled in place, part by part: no copy of the chunk beyond the chunk itself.
        let out = Tensor::zeros([hi - lo], (self.kind, self.device));
        for p in &self.params {
            let (a, b) = (lo.max(p.offset), hi.min(p.offset + p.numel));
            if a >= b {
                continue;
            }
            let mut dst = out.narrow(0, a - lo, b - a);
            if source.contains(&p.name) {
                source.read_range_into(&p.name, a - p.offset, &mut dst)?;
            } else {
                let src = p
                    .tensor
                    .detach()
                    .reshape([-1])
                    .narrow(0, a - p.offset, b - a);
                tch::no_grad(|| dst.copy_(&src));
            }
        }
        Ok(out)
    }

    /// Rank `rank`'s chunk of a full flat (a view).
    pub fn chunk_of(&self, full: &Tensor, rank: usize) -> Tensor {
        full.narrow(0, rank as i64 * self.chunk(), self.chunk())
    }

    /// Per-param views of a full flat, in layout order.
    pub fn views(&self, full: &Tensor) -> Vec<Tensor> {
        self.params
            .iter()
            .map(|p| full.narrow(0, p.offset, p.numel).view(p.shape.as_slice()))
            .collect()
    }

    /// Points every parameter at its view of `full` (no copy: updates to `full` are the parameters').
    pub fn install(&self, full: &Tensor) {
        tch::no_grad(|| {
            for (p, v) in self.params.iter().zip(self.views(full)) {
                let mut t = p.tensor.shallow_clone();
                t.set_data(&v);
            }
        });
    }

    /// Releases the parameters' storage (they become empty until the next [`FlatLayout::install`]).
    pub fn free(&self) {
        tch::no_grad(|| {
            for p in &self.params {
                let mut t = p.tensor.shallow_clone();
                t.set_data(&Tensor::empty([0], (self.kind, self.device)));
            }
        });
    }

    /// Drops every parameter's gradient values (zeroed in place, like the single-device recipe).
    pub fn zero_grads(&self) {
        for p in &self.params {
            let mut g = p.tensor.grad();
            if g.defined() {
                let _ = g.detach_();
                let _ = g.zero_();
            }
        }
    }

    /// The layout as recorded in a checkpoint.
    pub fn meta(&self) -> LayoutMeta {
        LayoutMeta {
            key: self.key.clone(),
            kind: format!("{:?}", self.kind),
            numel: self.numel,
            padded: self.padded,
            params: self
                .params
                .iter()
                .map(|p| ParamMeta {
                    name: p.name.clone(),
                    shape: p.shape.clone(),
                    offset: p.offset,
                })
                .collect(),
        }
    }

    /// Checks that a recorded layout has the same tensors in the same order.
    pub fn matches(&self, m: &LayoutMeta) -> Result<(), String> {
        let ours = self.meta();
        if ours.numel != m.numel || ours.params != m.params {
            return Err(format!(
                "unit `{}`: the checkpoint's flat layout ({} tensors, {} elements) differs from the model's ({} tensors, {} elements)",
                self.key,
                m.params.len(),
                m.numel,
                ours.params.len(),
                ours.numel
            ));
        }
        Ok(())
    }

    /// Bytes of one full flat of this layout.
    pub fn full_bytes(&self) -> u64 {
        self.padded as u64 * self.kind.elt_size_in_bytes() as u64
    }
}
