//! Parameters, gradients and optimiser moments as four flat buffers carved by one size
//! table (the llm.c pattern): a tensor is a name, a shape and an offset; a checkpoint is one
//! write per buffer; the optimiser is one loop.

use modula_core::Error;
use std::ops::Range;

/// One named tensor in the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    /// Name (as written to the model file).
    pub name: String,
    /// Row-major shape.
    pub shape: Vec<usize>,
    /// Elements `range` of the flat buffers.
    pub range: Range<usize>,
    /// Whether decoupled weight decay applies (not for norms and biases, by convention).
    pub decay: bool,
}

/// Flat buffers for all trainable tensors.
#[derive(Clone, Debug, Default)]
pub struct ParamStore {
    specs: Vec<ParamSpec>,
    /// Parameter values.
    pub values: Vec<f32>,
    /// Gradients (accumulated by the backward passes).
    pub grads: Vec<f32>,
    /// Adam first moments.
    pub m: Vec<f32>,
    /// Adam second moments.
    pub v: Vec<f32>,
    /// When set: the only element ranges that train (sorted, disjoint); every other
    /// parameter is frozen — its gradient is zeroed before clipping and the optimiser
    /// (weight decay included) leaves it untouched. `None`: everything trains.
    pub trainable: Option<Vec<Range<usize>>>,
}

/// Builds a [`ParamStore`]'s size table.
#[derive(Clone, Debug, Default)]
pub struct ParamTable {
    specs: Vec<ParamSpec>,
    len: usize,
}

impl ParamTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a tensor; returns its index. Names must be unique.
    pub fn add(&mut self, name: &str, shape: &[usize], decay: bool) -> Result<usize, Error> {
        if self.specs.iter().any(|s| s.name == name) {
            return Err(Error::input(format!(
                "parameter '{name}' is declared twice"
            )));
        }
        let n = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| {
                Error::input(format!("parameter '{name}': shape {shape:?} overflows"))
            })?;
        let range = self.len..self.len + n;
        self.len += n;
        self.specs.push(ParamSpec {
            name: name.to_string(),
            shape: shape.to_vec(),
            range,
            decay,
        });
        Ok(self.specs.len() - 1)
    }

    /// The tensors declared so far.
    pub fn specs(&self) -> &[ParamSpec] {
        &self.specs
    }

    /// Add every tensor of a description's table (`prefix` before each name); weight
    /// decay on matrices and tables, not on vectors (norms, biases). Returns their indices.
    pub fn add_tensors(
        &mut self,
        tensors: &[modula_core::arch::TensorSpec],
        prefix: &str,
    ) -> Result<Vec<usize>, Error> {
        tensors
            .iter()
            .map(|t| {
                let decay = t.layout != modula_core::arch::Layout::Vector;
                self.add(&format!("{prefix}{}", t.name), &t.shape, decay)
            })
            .collect()
    }

    /// Elements declared so far (nothing is allocated before [`ParamTable::build`]).
    pub fn elements(&self) -> usize {
        self.len
    }

    /// Allocate the four buffers (zeros).
    pub fn build(self) -> ParamStore {
        let n = self.len;
        ParamStore {
            specs: self.specs,
            values: vec![0.0; n],
            grads: vec![0.0; n],
            m: vec![0.0; n],
            v: vec![0.0; n],
            trainable: None,
        }
    }
}

impl ParamStore {
    /// The size table.
    pub fn specs(&self) -> &[ParamSpec] {
        &self.specs
    }
    /// Total number of parameters.
    pub fn len(&self) -> usize {
        self.values.len()
    }
    /// True when there are no parameters.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
    /// Index of a tensor by name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.specs.iter().position(|s| s.name == name)
    }
    /// Values of tensor `i`.
    pub fn value(&self, i: usize) -> &[f32] {
        &self.values[self.specs[i].range.clone()]
    }
    /// Mutable values of tensor `i`.
    pub fn value_mut(&mut self, i: usize) -> &mut [f32] {
        let r = self.specs[i].range.clone();
        &mut self.values[r]
    }
    /// Gradient of tensor `i`.
    pub fn grad(&self, i: usize) -> &[f32] {
        &self.grads[self.specs[i].range.clone()]
    }
    /// Mutable gradient of tensor `i`.
    pub fn grad_mut(&mut self, i: usize) -> &mut [f32] {
        let r = self.specs[i].range.clone();
        &mut self.grads[r]
    }
    /// Values of tensor `v` and the gradient of tensor `g` at once (the buffers are separate,
    /// so a backward pass can read weights while accumulating gradients, without copying).
    pub fn value_grad(&mut self, v: usize, g: usize) -> (&[f32], &mut [f32]) {
        let (rv, rg) = (self.specs[v].range.clone(), self.specs[g].range.clone());
        (&self.values[rv], &mut self.grads[rg])
    }

    /// Zero all gradients.
    pub fn zero_grads(&mut self) {
        self.grads.fill(0.0);
    }

    /// Train only these element ranges (sorted and merged here); see
    /// [`ParamStore::trainable`].
    pub fn set_trainable(&mut self, mut ranges: Vec<Range<usize>>) {
        ranges.retain(|r| r.start < r.end);
        ranges.sort_by_key(|r| r.start);
        let mut merged: Vec<Range<usize>> = Vec::new();
        for r in ranges {
            match merged.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        self.trainable = Some(merged);
    }

    /// The trainable part of element range `r`.
    pub fn trainable_in(&self, r: Range<usize>) -> Vec<Range<usize>> {
        match &self.trainable {
            None => vec![r],
            Some(t) => t
                .iter()
                .map(|x| x.start.max(r.start)..x.end.min(r.end))
                .filter(|x| x.start < x.end)
                .collect(),
        }
    }

    /// Zero the gradients of frozen parameters.
    pub fn mask_frozen_grads(&mut self) {
        if let Some(t) = &self.trainable {
            let n = self.grads.len();
            let mut at = 0;
            for r in t {
                self.grads[at.min(n)..r.start.min(n)].fill(0.0);
                at = r.end;
            }
            self.grads[at.min(n)..].fill(0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_carves_contiguous_ranges() {
        let mut t = ParamTable::new();
        assert_eq!(t.add("w", &[3, 4], true), Ok(0));
        assert_eq!(t.add("b", &[4], false), Ok(1));
        assert!(t.add("w", &[1], true).is_err());
        assert!(t.add("huge", &[usize::MAX, 2], true).is_err());
        let mut p = t.build();
        assert_eq!(p.len(), 16);
        assert_eq!(p.specs()[1].range, 12..16);
        p.value_mut(1).fill(2.0);
        assert_eq!(&p.values[12..], &[2.0; 4]);
        assert_eq!(p.index_of("b"), Some(1));
    }
}
