//! Expert routing: router logits (linear, ModuleFormer's 2-layer MLP, EMoE's avg-k gate
//! which is a linear router whose rows are cluster means), softmax over all experts, top-k
//! with deterministic tie-breaking, and the dispatch bookkeeping that groups a batch's
//! (token, slot) pairs by expert for one matrix product per expert.
//!
//! Per-token work is O(E) and small; it stays scalar. The permutation is a counting sort:
//! O(N·k + E), stable (within an expert, pairs keep token order), so results do not depend
//! on thread count or sort implementation.

use super::elementwise::{gelu_with, softmax_with};
use super::isa::{self, Isa};
use super::linear::{linear, linear_row, linear_with, MatRef, QuantizedRow};
use super::{exactly, need, KernelError};
use alloc::vec;
use alloc::vec::Vec;

/// How router logits are computed from a (normalised) token vector.
#[derive(Clone, Copy, Debug)]
pub enum Router<'a> {
    /// `ℓ = x Wᵀ`, `W: [E, d]` (no bias). EMoE's avg-k gate is this with `W` = cluster means.
    Linear {
        /// `[E, d]`
        w: MatRef<'a>,
    },
    /// ModuleFormer's MLP router: `ℓ = GELU_exact(x W1ᵀ + b1) W2ᵀ`, `W1: [G, d]`,
    /// `b1: [G]`, `W2: [E, G]` (no bias).
    Mlp {
        /// `[G, d]`
        w1: MatRef<'a>,
        /// `[G]`
        b1: &'a [f32],
        /// `[E, G]`
        w2: MatRef<'a>,
    },
}

impl Router<'_> {
    /// Number of experts E.
    pub fn experts(&self) -> usize {
        match self {
            Router::Linear { w } => w.rows(),
            Router::Mlp { w2, .. } => w2.rows(),
        }
    }

    /// Input width d.
    pub fn input_dim(&self) -> usize {
        match self {
            Router::Linear { w } => w.cols(),
            Router::Mlp { w1, .. } => w1.cols(),
        }
    }

    /// Scratch floats [`Router::logits`] needs for `n` tokens.
    pub fn scratch_len(&self, n: usize) -> usize {
        match self {
            Router::Linear { .. } => 0,
            Router::Mlp { w1, .. } => n * w1.rows(),
        }
    }

    /// Logits `[n, E]` for tokens `x: [n, d]` into `out`; `scratch` must hold
    /// [`Router::scratch_len`] floats (none for the linear router).
    pub fn logits(
        &self,
        x: &[f32],
        n: usize,
        scratch: &mut [f32],
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        self.logits_with(isa::active(), x, n, scratch, out)
    }

    /// [`Router::logits`] of one row `x` that `xq` holds quantised
    /// ([`QuantizedRow::set`]`(x)`): the same logits, without quantising `x` again for the
    /// first layer (see [`linear_row`]).
    pub fn logits_row(
        &self,
        x: &[f32],
        xq: &QuantizedRow,
        scratch: &mut [f32],
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        let (d, e) = (self.input_dim(), self.experts());
        exactly("router", "input length (d)", d, x.len())?;
        need("router", "output length", e, out.len())?;
        match *self {
            Router::Linear { w } => linear_row(x, xq, &w, None, &mut out[..e]),
            Router::Mlp { w1, b1, w2 } => {
                exactly("router", "MLP second layer input (G)", w1.rows(), w2.cols())?;
                let g = w1.rows();
                need("router", "scratch length", g, scratch.len())?;
                let h = &mut scratch[..g];
                linear_row(x, xq, &w1, Some(b1), h)?;
                gelu_with(isa::active(), h);
                linear(h, g, 1, &w2, None, out, e)
            }
        }
    }

    /// [`Router::logits`] with an explicit SIMD level.
    pub fn logits_with(
        &self,
        isa: Isa,
        x: &[f32],
        n: usize,
        scratch: &mut [f32],
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        let (d, e) = (self.input_dim(), self.experts());
        match *self {
            Router::Linear { w } => linear_with(isa, x, d, n, &w, None, out, e),
            Router::Mlp { w1, b1, w2 } => {
                exactly("router", "MLP second layer input (G)", w1.rows(), w2.cols())?;
                let g = w1.rows();
                need("router", "scratch length", n * g, scratch.len())?;
                let h = &mut scratch[..n * g];
                linear_with(isa, x, d, n, &w1, Some(b1), h, g)?;
                gelu_with(isa, h);
                linear_with(isa, h, g, n, &w2, None, out, e)
            }
        }
    }
}

/// The top `k` entries of one row: indices by decreasing value, ties broken towards the
/// lower index (deterministic). NaN ranks below every number. O(E·k).
pub fn top_k(row: &[f32], k: usize, idx: &mut [u32], val: &mut [f32]) -> Result<(), KernelError> {
    need("top_k", "row length (>= k)", k, row.len())?;
    exactly("top_k", "index output length", k, idx.len())?;
    exactly("top_k", "value output length", k, val.len())?;
    let better = |a: f32, ia: usize, b: f32, ib: usize| -> bool {
        match (a.is_nan(), b.is_nan()) {
            (false, true) => true,
            (true, false) => false,
            (true, true) => ia < ib,
            _ => a > b || (a == b && ia < ib),
        }
    };
    for s in 0..k {
        let mut best = usize::MAX;
        for (e, &v) in row.iter().enumerate() {
            if idx[..s].iter().any(|&c| c as usize == e) {
                continue;
            }
            if best == usize::MAX || better(v, e, row[best], best) {
                best = e;
            }
        }
        idx[s] = best as u32;
        val[s] = row[best];
    }
    Ok(())
}

/// The routing decision for a batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Routing {
    /// Experts per token.
    pub k: usize,
    /// `[n, E]` softmax probabilities over all experts.
    pub probs: Vec<f32>,
    /// `[n, k]` chosen experts, by decreasing probability.
    pub experts: Vec<u32>,
    /// `[n, k]` gate values: the probabilities (ModuleFormer: not renormalised) or, with
    /// `renormalize`, the probabilities divided by their sum over the k chosen.
    pub gates: Vec<f32>,
}

/// Softmax the `[n, E]` logits (in place, they become the probabilities), pick the top k
/// per token and compute the gates.
pub fn route(
    logits: Vec<f32>,
    n: usize,
    e: usize,
    k: usize,
    renormalize: bool,
) -> Result<Routing, KernelError> {
    route_with(isa::active(), logits, n, e, k, renormalize)
}

/// [`route`] with an explicit SIMD level.
pub fn route_with(
    isa: Isa,
    mut logits: Vec<f32>,
    n: usize,
    e: usize,
    k: usize,
    renormalize: bool,
) -> Result<Routing, KernelError> {
    exactly("route", "logits length (n*E)", n * e, logits.len())?;
    need("route", "experts (>= k)", k, e)?;
    let mut experts = vec![0u32; n * k];
    let mut gates = vec![0f32; n * k];
    for t in 0..n {
        let row = &mut logits[t * e..(t + 1) * e];
        softmax_with(isa, row);
        top_k(
            row,
            k,
            &mut experts[t * k..(t + 1) * k],
            &mut gates[t * k..(t + 1) * k],
        )?;
        if renormalize {
            let g = &mut gates[t * k..(t + 1) * k];
            let s: f32 = g.iter().sum();
            if s > 0.0 {
                g.iter_mut().for_each(|v| *v /= s);
            }
        }
    }
    Ok(Routing {
        k,
        probs: logits,
        experts,
        gates,
    })
}

/// (token, slot) pairs grouped by expert.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dispatch {
    /// `[E]` pairs routed to each expert.
    pub counts: Vec<u32>,
    /// `[E + 1]` start of each expert's run in `order`.
    pub offsets: Vec<u32>,
    /// `[n·k]` pair indices (`token·k + slot`) sorted by expert, token order within one.
    pub order: Vec<u32>,
    /// `[n·k]` inverse: `inverse[pair]` = position of `pair` in `order`.
    pub inverse: Vec<u32>,
}

impl Dispatch {
    /// Group `experts` (`[n·k]`, each `< n_experts`) by expert (stable counting sort).
    pub fn new(experts: &[u32], n_experts: usize) -> Result<Dispatch, KernelError> {
        let mut counts = vec![0u32; n_experts];
        for &x in experts {
            need(
                "Dispatch",
                "expert count (> expert id)",
                x as usize + 1,
                n_experts,
            )?;
            counts[x as usize] += 1;
        }
        let mut offsets = vec![0u32; n_experts + 1];
        for i in 0..n_experts {
            offsets[i + 1] = offsets[i] + counts[i];
        }
        let mut next = offsets.clone();
        let mut order = vec![0u32; experts.len()];
        let mut inverse = vec![0u32; experts.len()];
        for (pair, &x) in experts.iter().enumerate() {
            let pos = next[x as usize];
            order[pos as usize] = pair as u32;
            inverse[pair] = pos;
            next[x as usize] += 1;
        }
        Ok(Dispatch {
            counts,
            offsets,
            order,
            inverse,
        })
    }

    /// The pairs routed to expert `e` (pair index = token·k + slot).
    pub fn pairs(&self, e: usize) -> &[u32] {
        let (a, b) = (self.offsets[e] as usize, self.offsets[e + 1] as usize);
        &self.order[a..b]
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::kernels::isa::available;
    use crate::kernels::testutil::rand_vec;
    use proptest::prelude::*;

    #[test]
    fn top_k_is_deterministic_on_ties_and_nan() {
        let row = [0.5, 0.9, 0.9, f32::NAN, 0.1, 0.9];
        let (mut i, mut v) = ([0u32; 4], [0f32; 4]);
        top_k(&row, 4, &mut i, &mut v).unwrap();
        assert_eq!(i, [1, 2, 5, 0]);
        let (mut i, mut v) = ([0u32; 6], [0f32; 6]);
        top_k(&row, 6, &mut i, &mut v).unwrap();
        assert_eq!(i, [1, 2, 5, 0, 4, 3]);
        assert!(top_k(&row, 7, &mut [0; 7], &mut [0.0; 7]).is_err());
    }

    proptest! {
        #[test]
        fn routing_and_dispatch_invariants(n in 0usize..40, e in 1usize..12, kk in 1usize..4, seed in any::<u64>(), renorm in any::<bool>()) {
            let k = kk.min(e);
            let logits = rand_vec(seed, n * e);
            for isa in available() {
                let r = route_with(isa, logits.clone(), n, e, k, renorm).unwrap();
                for t in 0..n {
                    let p = &r.probs[t * e..(t + 1) * e];
                    prop_assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5);
                    let ex = &r.experts[t * k..(t + 1) * k];
                    let g = &r.gates[t * k..(t + 1) * k];
                    // chosen experts are distinct and no unchosen one beats the last chosen
                    for a in 0..k { for b in a + 1..k { prop_assert!(ex[a] != ex[b]); } }
                    let kth = p[ex[k - 1] as usize];
                    for (j, &pj) in p.iter().enumerate() {
                        if !ex.contains(&(j as u32)) { prop_assert!(pj <= kth); }
                    }
                    if renorm {
                        prop_assert!((g.iter().sum::<f32>() - 1.0).abs() < 1e-5);
                    } else {
                        for s in 0..k { prop_assert_eq!(g[s], p[ex[s] as usize]); }
                    }
                }
                let d = Dispatch::new(&r.experts, e).unwrap();
                prop_assert_eq!(d.counts.iter().sum::<u32>() as usize, n * k);
                for x in 0..e {
                    let pairs = d.pairs(x);
                    prop_assert!(pairs.windows(2).all(|w| w[0] < w[1]), "stable order");
                    for &p in pairs { prop_assert_eq!(r.experts[p as usize] as usize, x); }
                }
                for (pair, &pos) in d.inverse.iter().enumerate() {
                    prop_assert_eq!(d.order[pos as usize] as usize, pair);
                }
            }
        }
    }

    #[test]
    fn mlp_router_matches_composition() {
        let (n, d, g, e) = (5, 12, 7, 4);
        let x = rand_vec(1, n * d);
        let w1 = rand_vec(2, g * d);
        let b1 = rand_vec(3, g);
        let w2 = rand_vec(4, e * g);
        let r = Router::Mlp {
            w1: MatRef::f32(&w1, g, d).unwrap(),
            b1: &b1,
            w2: MatRef::f32(&w2, e, g).unwrap(),
        };
        let mut scratch = vec![0f32; r.scratch_len(n)];
        let mut out = vec![0f32; n * e];
        r.logits(&x, n, &mut scratch, &mut out).unwrap();
        for t in 0..n {
            let h: Vec<f32> = (0..g)
                .map(|j| {
                    let u: f32 = (0..d).map(|i| x[t * d + i] * w1[j * d + i]).sum::<f32>() + b1[j];
                    crate::kernels::elementwise::gelu1(u)
                })
                .collect();
            for o in 0..e {
                let want: f32 = (0..g).map(|j| h[j] * w2[o * g + j]).sum();
                assert!(
                    (out[t * e + o] - want).abs() < 1e-4,
                    "{} vs {want}",
                    out[t * e + o]
                );
            }
        }
        assert!(
            r.logits(&x, n, &mut [], &mut out).is_err(),
            "missing scratch is an error"
        );
        assert!(
            Dispatch::new(&[0, 5], 3).is_err(),
            "expert id out of range is an error"
        );
    }
}
