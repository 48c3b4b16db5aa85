//! Mixture-of-experts FFN: each expert runs on the tokens routed to it with one matrix
//! product per projection (gather → `x·Wupᵀ` → activation → `h·Wdown_t` → gated
//! scatter-add). The dense FFN is the one-expert, gate-1 special case.
//!
//! Weights per expert: `up: [H, d]` (rows = hidden units) and `down_t: [H, d]` (the down
//! projection stored transposed), so a nested hidden width `h < H` is the first `h` rows of
//! both (see [`Expert::prefix`]). ModuleFormer's experts have no biases; an expert cut out
//! of a dense FFN (EMoE, [`contiguous_experts`]) keeps its slice of the first layer's bias
//! ([`Expert::with_bias`]).
//!
//! Determinism: outputs are accumulated expert by expert, pairs in token order within an
//! expert ([`Dispatch`] is a stable sort), so the sum order is fixed.

use super::elementwise::{gelu_tanh_with, gelu_with, relu2_with, silu_with};
use super::isa::{self, Isa};
use super::linear::{linear_with, matmul_rows_with, MatRef};
use super::par;
use super::routing::Dispatch;
use super::{exactly, KernelError};
use alloc::vec::Vec;

/// The expert activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// Exact (erf) GELU.
    Gelu,
    /// Tanh GELU (`gelu_new`, ModuleFormer).
    GeluTanh,
    /// SiLU.
    Silu,
    /// Squared ReLU.
    Relu2,
}

impl Activation {
    /// Apply in place at the active SIMD level.
    pub fn apply(self, x: &mut [f32]) {
        self.apply_with(super::isa::active(), x)
    }

    /// Apply in place.
    pub fn apply_with(self, isa: Isa, x: &mut [f32]) {
        match self {
            Activation::Gelu => gelu_with(isa, x),
            Activation::GeluTanh => gelu_tanh_with(isa, x),
            Activation::Silu => silu_with(isa, x),
            Activation::Relu2 => relu2_with(isa, x),
        }
    }
}

/// One expert's weights.
#[derive(Clone, Copy, Debug)]
pub struct Expert<'a> {
    /// `[H, d]`
    pub up: MatRef<'a>,
    /// `[H, d]` (down projection, transposed)
    pub down_t: MatRef<'a>,
    /// `[H]` bias of the first projection, if any.
    pub up_bias: Option<&'a [f32]>,
}

impl<'a> Expert<'a> {
    /// Check that the two projections agree (`up` and `down_t` both `[H, d]`).
    pub fn new(up: MatRef<'a>, down_t: MatRef<'a>) -> Result<Self, KernelError> {
        exactly("Expert", "down_t rows (H)", up.rows(), down_t.rows())?;
        exactly("Expert", "down_t cols (d)", up.cols(), down_t.cols())?;
        Ok(Expert {
            up,
            down_t,
            up_bias: None,
        })
    }

    /// The same expert with a bias `[H]` on its first projection.
    pub fn with_bias(self, bias: &'a [f32]) -> Result<Self, KernelError> {
        exactly("Expert", "up bias length (H)", self.up.rows(), bias.len())?;
        Ok(Expert {
            up_bias: Some(bias),
            ..self
        })
    }

    /// The nested expert with the first `hidden` units (no copy).
    pub fn prefix(&self, hidden: usize) -> Result<Self, KernelError> {
        Ok(Expert {
            up: self.up.prefix(hidden, self.up.cols())?,
            down_t: self.down_t.prefix(hidden, self.down_t.cols())?,
            up_bias: self.up_bias.map(|b| &b[..hidden.min(b.len())]),
        })
    }

    /// Hidden width H.
    pub fn hidden(&self) -> usize {
        self.up.rows()
    }
}

/// The `n` experts of a dense FFN whose hidden units were permuted into contiguous blocks
/// (EMoE): expert `e` is rows `e·H/n..(e+1)·H/n` of `up`, `down_t` and `up_bias` — views,
/// no copy.
pub fn contiguous_experts<'a>(
    up: MatRef<'a>,
    up_bias: Option<&'a [f32]>,
    down_t: MatRef<'a>,
    n: usize,
) -> Result<Vec<Expert<'a>>, KernelError> {
    let h = up.rows();
    if n == 0 || !h.is_multiple_of(n) {
        return Err(KernelError {
            kernel: "contiguous_experts",
            what: "experts dividing the hidden width",
            expected: n.max(1),
            got: h,
        });
    }
    Expert::new(up, down_t)?;
    if let Some(b) = up_bias {
        exactly("contiguous_experts", "up bias length (H)", h, b.len())?;
    }
    let m = h / n;
    (0..n)
        .map(|e| {
            let ex = Expert::new(up.row_block(e * m, m), down_t.row_block(e * m, m))?;
            match up_bias {
                Some(b) => ex.with_bias(&b[e * m..(e + 1) * m]),
                None => Ok(ex),
            }
        })
        .collect()
}

/// Reusable buffers: after the first call of a given size, no further allocation.
#[derive(Debug, Default, Clone)]
pub struct FfnScratch {
    xg: Vec<f32>,
    h: Vec<f32>,
    yg: Vec<f32>,
}

fn grow(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// Dense FFN: `y = act(x Wupᵀ) Wdown` for `x: [n, d]`, `y: [n, d]` (overwritten).
pub fn dense_ffn(
    x: &[f32],
    n: usize,
    e: &Expert<'_>,
    act: Activation,
    y: &mut [f32],
    scratch: &mut FfnScratch,
) -> Result<(), KernelError> {
    dense_ffn_with(isa::active(), x, n, e, act, y, scratch)
}

/// [`dense_ffn`] with an explicit SIMD level.
pub fn dense_ffn_with(
    isa: Isa,
    x: &[f32],
    n: usize,
    e: &Expert<'_>,
    act: Activation,
    y: &mut [f32],
    scratch: &mut FfnScratch,
) -> Result<(), KernelError> {
    let (d, hdim) = (e.up.cols(), e.hidden());
    exactly("dense_ffn", "x length (n*d)", n * d, x.len())?;
    exactly("dense_ffn", "y length (n*d)", n * d, y.len())?;
    let h = grow(&mut scratch.h, n * hdim);
    linear_with(isa, x, d, n, &e.up, e.up_bias, h, hdim)?;
    act.apply_with(isa, h);
    matmul_rows_with(isa, h, hdim, n, &e.down_t, y, d, false)
}

/// MoE FFN over a batch: `y[t] = Σ_s gate[t,s] · FFN_{expert[t,s]}(x[t])` for `x: [n, d]`,
/// `experts`/`gates: [n, k]` (from [`super::routing::route`]); `y: [n, d]` overwritten.
#[allow(clippy::too_many_arguments)]
pub fn moe_ffn(
    x: &[f32],
    n: usize,
    experts: &[Expert<'_>],
    chosen: &[u32],
    gates: &[f32],
    act: Activation,
    y: &mut [f32],
    scratch: &mut FfnScratch,
) -> Result<(), KernelError> {
    moe_ffn_with(isa::active(), x, n, experts, chosen, gates, act, y, scratch)
}

/// [`moe_ffn`] with an explicit SIMD level.
#[allow(clippy::too_many_arguments)]
pub fn moe_ffn_with(
    isa: Isa,
    x: &[f32],
    n: usize,
    experts: &[Expert<'_>],
    chosen: &[u32],
    gates: &[f32],
    act: Activation,
    y: &mut [f32],
    scratch: &mut FfnScratch,
) -> Result<(), KernelError> {
    let Some(first) = experts.first() else {
        return Err(KernelError {
            kernel: "moe_ffn",
            what: "expert count (> 0)",
            expected: 1,
            got: 0,
        });
    };
    let d = first.up.cols();
    for e in experts {
        exactly("moe_ffn", "every expert's width d", d, e.up.cols())?;
        exactly(
            "moe_ffn",
            "every expert's down_t width d",
            d,
            e.down_t.cols(),
        )?;
        exactly(
            "moe_ffn",
            "every expert's down_t rows (H)",
            e.up.rows(),
            e.down_t.rows(),
        )?;
    }
    exactly("moe_ffn", "x length (n*d)", n * d, x.len())?;
    exactly("moe_ffn", "y length (n*d)", n * d, y.len())?;
    exactly(
        "moe_ffn",
        "gates length (= chosen length)",
        chosen.len(),
        gates.len(),
    )?;
    let k = chosen.len().checked_div(n).unwrap_or(0);
    exactly("moe_ffn", "chosen length (n*k)", n * k, chosen.len())?;
    y.fill(0.0);
    if n == 0 {
        return Ok(());
    }
    let dispatch = Dispatch::new(chosen, experts.len())?;
    // One expert on its gathered tokens: rows of `yg` follow `dispatch.pairs(ei)`.
    let run = |ei: usize,
               xg: &mut Vec<f32>,
               h: &mut Vec<f32>,
               yg: &mut Vec<f32>|
     -> Result<(), KernelError> {
        let (e, pairs) = (&experts[ei], dispatch.pairs(ei));
        let (m, hdim) = (pairs.len(), e.hidden());
        let xg = grow(xg, m * d);
        for (r, &p) in pairs.iter().enumerate() {
            let t = p as usize / k;
            xg[r * d..(r + 1) * d].copy_from_slice(&x[t * d..(t + 1) * d]);
        }
        let h = grow(h, m * hdim);
        linear_with(isa, xg, d, m, &e.up, e.up_bias, h, hdim)?;
        act.apply_with(isa, h);
        matmul_rows_with(isa, h, hdim, m, &e.down_t, grow(yg, m * d), d, false)
    };
    let scatter = |ei: usize, yg: &[f32], y: &mut [f32]| {
        for (r, &p) in dispatch.pairs(ei).iter().enumerate() {
            let (t, g) = (p as usize / k, gates[p as usize]);
            for (yv, v) in y[t * d..(t + 1) * d]
                .iter_mut()
                .zip(&yg[r * d..(r + 1) * d])
            {
                *yv += g * v;
            }
        }
    };
    if par::threads() > 1 && n * k >= 64 && experts.len() > 1 {
        // Experts in parallel (each with its own buffers), then the scatter-add in expert
        // order on this thread: the same sums in the same order as the sequential path.
        let mut outs: Vec<Result<Vec<f32>, KernelError>> =
            (0..experts.len()).map(|_| Ok(Vec::new())).collect();
        par::for_each_chunk_mut(&mut outs, 1, |ei, slot| {
            let (mut xg, mut h, mut yg) = (Vec::new(), Vec::new(), Vec::new());
            slot[0] = run(ei, &mut xg, &mut h, &mut yg).map(|()| yg);
        });
        for (ei, out) in outs.into_iter().enumerate() {
            scatter(ei, &out?, y);
        }
    } else {
        for ei in 0..experts.len() {
            if dispatch.pairs(ei).is_empty() {
                continue;
            }
            run(ei, &mut scratch.xg, &mut scratch.h, &mut scratch.yg)?;
            scatter(ei, &scratch.yg, y);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::kernels::elementwise::gelu_tanh1;
    use crate::kernels::isa::available;
    use crate::kernels::routing::route;
    use crate::kernels::testutil::{assert_close, rand_vec};
    use alloc::vec;
    use alloc::vec::Vec;

    #[test]
    fn contiguous_experts_are_the_masked_dense_ffn() {
        // EMoE: a dense FFN with bias split into 4 blocks; top-2 blocks per token with gate
        // 1 equals the dense FFN with the other blocks' hidden units zeroed.
        let (n, d, hdim, ne, k) = (5, 8, 16, 4, 2);
        let (x, up, down, b1) = (
            rand_vec(1, n * d),
            rand_vec(2, hdim * d),
            rand_vec(3, hdim * d),
            rand_vec(4, hdim),
        );
        let upm = MatRef::f32(&up, hdim, d).unwrap();
        let downm = MatRef::f32(&down, hdim, d).unwrap();
        let experts = contiguous_experts(upm, Some(&b1), downm, ne).unwrap();
        assert_eq!(experts.len(), 4);
        let chosen: Vec<u32> = (0..n)
            .flat_map(|t| [(t % 4) as u32, ((t + 2) % 4) as u32])
            .collect();
        let gates = vec![1f32; n * k];
        let mut y = vec![0f32; n * d];
        moe_ffn(
            &x,
            n,
            &experts,
            &chosen,
            &gates,
            Activation::Gelu,
            &mut y,
            &mut FfnScratch::default(),
        )
        .unwrap();
        let m = hdim / ne;
        for t in 0..n {
            let mut hid: Vec<f32> = (0..hdim)
                .map(|j| {
                    let pre: f32 =
                        (0..d).map(|i| x[t * d + i] * up[j * d + i]).sum::<f32>() + b1[j];
                    crate::kernels::elementwise::gelu1(pre)
                })
                .collect();
            for (j, hv) in hid.iter_mut().enumerate() {
                if !chosen[t * k..(t + 1) * k].contains(&((j / m) as u32)) {
                    *hv = 0.0;
                }
            }
            for o in 0..d {
                let want: f32 = (0..hdim).map(|j| hid[j] * down[j * d + o]).sum();
                assert!(
                    (y[t * d + o] - want).abs() < 1e-4,
                    "{t} {o}: {} vs {want}",
                    y[t * d + o]
                );
            }
        }
        assert!(contiguous_experts(upm, Some(&b1), downm, 3).is_err());
        assert!(contiguous_experts(upm, Some(&b1[..3]), downm, 4).is_err());
    }

    /// Direct definition, token by token.
    fn naive(
        x: &[f32],
        n: usize,
        d: usize,
        ups: &[Vec<f32>],
        downs: &[Vec<f32>],
        h: usize,
        chosen: &[u32],
        gates: &[f32],
        k: usize,
    ) -> Vec<f32> {
        let mut y = vec![0f32; n * d];
        for t in 0..n {
            for s in 0..k {
                let e = chosen[t * k + s] as usize;
                let hid: Vec<f32> = (0..h)
                    .map(|j| gelu_tanh1((0..d).map(|i| x[t * d + i] * ups[e][j * d + i]).sum()))
                    .collect();
                for o in 0..d {
                    y[t * d + o] += gates[t * k + s]
                        * (0..h).map(|j| hid[j] * downs[e][j * d + o]).sum::<f32>();
                }
            }
        }
        y
    }

    #[test]
    fn moe_matches_definition_and_dense_is_one_expert() {
        let (n, d, h, ne, k) = (37, 20, 24, 5, 2);
        let x = rand_vec(1, n * d);
        let ups: Vec<Vec<f32>> = (0..ne).map(|e| rand_vec(10 + e as u64, h * d)).collect();
        let downs: Vec<Vec<f32>> = (0..ne).map(|e| rand_vec(20 + e as u64, h * d)).collect();
        let experts: Vec<Expert<'_>> = (0..ne)
            .map(|e| {
                Expert::new(
                    MatRef::f32(&ups[e], h, d).unwrap(),
                    MatRef::f32(&downs[e], h, d).unwrap(),
                )
                .unwrap()
            })
            .collect();
        let r = route(rand_vec(3, n * ne), n, ne, k, false).unwrap();
        let want = naive(&x, n, d, &ups, &downs, h, &r.experts, &r.gates, k);
        for isa in available() {
            let mut y = vec![0f32; n * d];
            let mut s = FfnScratch::default();
            moe_ffn_with(
                isa,
                &x,
                n,
                &experts,
                &r.experts,
                &r.gates,
                Activation::GeluTanh,
                &mut y,
                &mut s,
            )
            .unwrap();
            assert_close(isa.name(), &y, &want, |_| 1e-4);
            // the dense FFN is the single-expert, gate-1 case
            let mut yd = vec![0f32; n * d];
            dense_ffn_with(
                isa,
                &x,
                n,
                &experts[0],
                Activation::GeluTanh,
                &mut yd,
                &mut s,
            )
            .unwrap();
            let mut y1 = vec![0f32; n * d];
            moe_ffn_with(
                isa,
                &x,
                n,
                &experts[..1],
                &vec![0; n],
                &vec![1.0; n],
                Activation::GeluTanh,
                &mut y1,
                &mut s,
            )
            .unwrap();
            assert_close("dense vs 1 expert", &yd, &y1, |_| 1e-5);
        }
        // nested hidden width: prefix of rows of both projections
        let e = experts[1].prefix(8).unwrap();
        assert_eq!(e.hidden(), 8);
        assert!(experts[1].prefix(25).is_err());
    }

    #[test]
    fn moe_does_not_depend_on_thread_count() {
        let (n, d, h, ne, k) = (70, 16, 24, 4, 2);
        let x = rand_vec(5, n * d);
        let ws: Vec<Vec<f32>> = (0..2 * ne)
            .map(|e| rand_vec(40 + e as u64, h * d))
            .collect();
        let experts: Vec<Expert<'_>> = (0..ne)
            .map(|e| {
                Expert::new(
                    MatRef::f32(&ws[2 * e], h, d).unwrap(),
                    MatRef::f32(&ws[2 * e + 1], h, d).unwrap(),
                )
                .unwrap()
            })
            .collect();
        let r = route(rand_vec(6, n * ne), n, ne, k, true).unwrap();
        let mut outs = Vec::new();
        for t in [1, 2, 4] {
            crate::kernels::par::set_threads(t);
            let mut y = vec![0f32; n * d];
            moe_ffn(
                &x,
                n,
                &experts,
                &r.experts,
                &r.gates,
                Activation::Silu,
                &mut y,
                &mut FfnScratch::default(),
            )
            .unwrap();
            outs.push(y);
        }
        crate::kernels::par::set_threads(0);
        assert!(outs.windows(2).all(|p| p[0] == p[1]));
    }

    #[test]
    fn bad_shapes_are_errors() {
        let w = vec![0f32; 16];
        let e = Expert::new(
            MatRef::f32(&w, 4, 4).unwrap(),
            MatRef::f32(&w, 4, 4).unwrap(),
        )
        .unwrap();
        let mut y = vec![0f32; 8];
        let mut s = FfnScratch::default();
        assert!(moe_ffn(
            &[0.0; 8],
            2,
            &[e],
            &[0, 1],
            &[1.0, 1.0],
            Activation::Silu,
            &mut y,
            &mut s
        )
        .is_err());
        assert!(moe_ffn(
            &[0.0; 8],
            2,
            &[],
            &[0, 0],
            &[1.0, 1.0],
            Activation::Silu,
            &mut y,
            &mut s
        )
        .is_err());
        assert!(moe_ffn(
            &[0.0; 7],
            2,
            &[e],
            &[0, 0],
            &[1.0, 1.0],
            Activation::Silu,
            &mut y,
            &mut s
        )
        .is_err());
        assert!(Expert::new(
            MatRef::f32(&w, 4, 4).unwrap(),
            MatRef::f32(&w, 2, 4).unwrap()
        )
        .is_err());
    }
}
