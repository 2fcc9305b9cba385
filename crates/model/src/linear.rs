//! Projection layers: a base weight (dense, or any [`LinearKernel`] such as a quantized one) plus optional bias,
//! LoRA adapters by name, and the shared adapter selection that picks which adapter is active — for the
//! whole batch or per batch row (one request per row with its own adapter).

use crate::lora::LoraAdapter;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tch::{Kind, Tensor};

/// A base matmul that is not a plain dense weight (the quant crate's NF4 / int8 layers implement this).
pub trait LinearKernel: std::fmt::Debug + Send {
    /// `x @ Wᵀ` (no bias), returned in `x`'s dtype.
    fn matmul(&self, x: &Tensor) -> Tensor;
    /// The dense weight [out, in] in `kind` (dequantized), for merging and export.
    fn dense_weight(&self, kind: Kind) -> Tensor;
    /// (out_features, in_features).
    fn shape(&self) -> (i64, i64);
    /// The concrete kernel for downcasting (the quant crate finds its kernels' tensors through it when saving).
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
}

/// The base weight of a projection.
#[derive(Debug)]
pub enum BaseWeight {
    /// A [out, in] tensor, exactly as in the checkpoint.
    Dense(Tensor),
    /// Anything else that can multiply (quantized weights).
    Kernel(Box<dyn LinearKernel>),
}

impl BaseWeight {
    pub fn matmul(&self, x: &Tensor) -> Tensor {
        match self {
            BaseWeight::Dense(w) => x.matmul(&w.tr()),
            BaseWeight::Kernel(k) => k.matmul(x),
        }
    }
    /// (out_features, in_features).
    pub fn shape(&self) -> (i64, i64) {
        match self {
            BaseWeight::Dense(w) => (w.size()[0], w.size()[1]),
            BaseWeight::Kernel(k) => k.shape(),
        }
    }
    /// The dense tensor, if this is a dense weight.
    pub fn dense(&self) -> Option<&Tensor> {
        match self {
            BaseWeight::Dense(w) => Some(w),
            BaseWeight::Kernel(_) => None,
        }
    }
}

/// Which adapter a forward uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum AdapterSelection {
    /// The base model only.
    #[default]
    None,
    /// One adapter for every row.
    Single(String),
    /// One entry per batch row: that row's adapter, or `None` for the base model.
    PerRow(Vec<Option<String>>),
}

#[derive(Debug, Default)]
struct StateInner {
    selection: AdapterSelection,
    training: bool,
}

/// State shared by every layer of one model: the adapter selection and the train/eval flag (LoRA dropout).
#[derive(Debug, Clone, Default)]
pub struct AdapterState(Arc<Mutex<StateInner>>);

impl AdapterState {
    pub fn selection(&self) -> AdapterSelection {
        self.0
            .lock()
            .expect("adapter state poisoned")
            .selection
            .clone()
    }
    pub fn set_selection(&self, s: AdapterSelection) {
        self.0.lock().expect("adapter state poisoned").selection = s;
    }
    pub fn training(&self) -> bool {
        self.0.lock().expect("adapter state poisoned").training
    }
    pub fn set_training(&self, t: bool) {
        self.0.lock().expect("adapter state poisoned").training = t;
    }
}

/// Runs `f(name, rows_of_x)` for each group of rows sharing an adapter and reassembles the rows in order.
pub(crate) fn per_row(
    x: &Tensor,
    rows: &[Option<String>],
    f: impl Fn(Option<&str>, &Tensor) -> Tensor,
) -> Tensor {
    assert_eq!(
        x.size()[0],
        rows.len() as i64,
        "per-row adapter selection has {} entries for a batch of {}",
        rows.len(),
        x.size()[0]
    );
    let mut groups: BTreeMap<Option<&str>, Vec<i64>> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        groups.entry(r.as_deref()).or_default().push(i as i64);
    }
    if groups.len() == 1 {
        let name = *groups.keys().next().expect("one group");
        return f(name, x);
    }
    let mut out: Option<Tensor> = None;
    for (name, idx) in groups {
        let idx = Tensor::from_slice(&idx).to_device(x.device());
        let y = f(name, &x.index_select(0, &idx));
        let o = out.get_or_insert_with(|| {
            let mut sz = y.size();
            sz[0] = rows.len() as i64;
            Tensor::zeros(sz, (y.kind(), y.device()))
        });
        *o = o.index_copy(0, &idx, &y);
    }
    out.expect("at least one row")
}

/// A projection: `y = x Wᵀ + b (+ LoRA of the active adapter)`. Field names follow the checkpoint keys.
#[derive(Debug)]
pub struct Linear {
    pub weight: BaseWeight,
    pub bias: Option<Tensor>,
    /// LoRA adapters by adapter name.
    pub lora: BTreeMap<String, LoraAdapter>,
    /// `modules_to_save` replacements of the whole weight, by adapter name (lm_head after vocab extension).
    pub modules_to_save: BTreeMap<String, Tensor>,
    /// Adapters currently merged into the dense base weight.
    pub merged: Vec<String>,
    pub(crate) state: AdapterState,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>, state: AdapterState) -> Self {
        Linear {
            weight: BaseWeight::Dense(weight),
            bias,
            lora: BTreeMap::new(),
            modules_to_save: BTreeMap::new(),
            merged: vec![],
            state,
        }
    }

    /// Declares `<vs>.weight` [out,in] (and `.bias`) uninitialised in the var store (filled by the loader).
    pub fn load(
        vs: &tch::nn::Path,
        in_f: i64,
        out_f: i64,
        bias: bool,
        state: AdapterState,
    ) -> Self {
        let opts = (vs.kind(), vs.device());
        let w = vs.add("weight", Tensor::empty([out_f, in_f], opts), false);
        let b = bias.then(|| vs.add("bias", Tensor::empty([out_f], opts), false));
        Linear::new(w, b, state)
    }

    /// The forward with one adapter (or none) for all rows of `x`.
    pub fn forward_with(&self, x: &Tensor, adapter: Option<&str>) -> Tensor {
        let replaced = adapter.and_then(|a| self.modules_to_save.get(a));
        let mut y = match replaced {
            Some(w) => x.matmul(&w.tr()),
            None => self.weight.matmul(x),
        };
        if let Some(b) = &self.bias {
            y += b;
        }
        match adapter.and_then(|a| {
            self.lora
                .get(a)
                .filter(|_| !self.merged.iter().any(|m| m == a))
        }) {
            Some(l) => {
                let kind = y.kind();
                let d = l.delta(x, self.state.training());
                (y.to_kind(d.kind()) + d).to_kind(kind)
            }
            None => y,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        match self.state.selection() {
            AdapterSelection::None => self.forward_with(x, None),
            AdapterSelection::Single(a) => self.forward_with(x, Some(&a)),
            AdapterSelection::PerRow(rows) => per_row(x, &rows, |a, xs| self.forward_with(xs, a)),
        }
    }

    /// Adds (`sign` = 1) or removes (−1) `scaling · B A` of adapter `name` to the dense base weight.
    pub(crate) fn merge_delta(&mut self, name: &str, sign: f64) -> Result<(), String> {
        let l = self
            .lora
            .get(name)
            .ok_or_else(|| format!("no adapter `{name}`"))?;
        let BaseWeight::Dense(w) = &self.weight else {
            return Err("cannot merge into a non-dense (quantized) base weight".into());
        };
        let _g = tch::no_grad_guard();
        let delta = l.delta_weight().to_kind(Kind::Float) * sign;
        let mut w = w.shallow_clone();
        let merged = (w.to_kind(Kind::Float) + delta).to_kind(w.kind());
        w.copy_(&merged);
        Ok(())
    }
}
