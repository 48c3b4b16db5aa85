//! Expert routers of a top-k mixture (ModuleFormer, spec A.2, C.2, C.4, C.5).
//!
//! Forward: logits from the normalised token vectors (linear `ℓ = x Wᵀ`, or the MLP
//! `ℓ = GELU_exact(x W1ᵀ + b1) W2ᵀ`), softmax over **all** experts, top-k (ties to the lower
//! index), gates = the probabilities (not renormalised by default; renormalised over the
//! chosen k as an option).
//!
//! Backward of the gates (C.2): with `a_e = dy·f_e(x)` for the chosen experts (0 for the
//! others), `dℓ_j = p_j (a_j − Σ_e p_e a_e)` for every expert j (unchosen ones too, through
//! the softmax normaliser); renormalised: `dℓ_j = ĝ_j (a_j − Σ_S ĝ_e a_e)` for j in S only.
//!
//! Auxiliary losses per router call over its N tokens (C.4, C.5): the mutual-information
//! load-balancing loss `L_MI = H(e|x) − H(e)` and the load-concentration loss
//! `L_LC = H(e)`, where `p̄ = mean_n P_n`, `H(e) = −Σ p̄_e log(p̄_e + 1e-8)`,
//! `H(e|x) = −mean_n Σ_e P_ne log P_ne`. Gradients are exact (the ε included).

use super::activation::activation_backward;
use super::linear::{linear_backward, linear_forward};
use modula_core::kernels::expert_ffn::Activation;
use modula_core::kernels::KernelError;

/// ε inside `log p̄` of the marginal entropy (as in the released code).
pub const MARGINAL_EPS: f32 = 1e-8;

/// Router weights of one mixture.
#[derive(Clone, Copy, Debug)]
pub enum RouterWeights<'a> {
    /// `w: [E, d]`.
    Linear {
        /// `[E, d]`
        w: &'a [f32],
    },
    /// `w1: [G, d]`, `b1: [G]`, `w2: [E, G]`.
    Mlp {
        /// `[G, d]`
        w1: &'a [f32],
        /// `[G]`
        b1: &'a [f32],
        /// `[E, G]`
        w2: &'a [f32],
    },
}

/// What the router forward keeps for its backward (MLP: the hidden pre-activation and
/// activation `[n, G]`).
#[derive(Clone, Debug, Default)]
pub struct RouterSaved {
    /// `[n, G]` pre-activation (MLP only).
    pub u: Vec<f32>,
    /// `[n, G]` GELU(u) (MLP only).
    pub h: Vec<f32>,
}

/// Router logits `[n, e]` for `x: [n, d]`.
pub fn router_forward(
    w: RouterWeights<'_>,
    x: &[f32],
    n: usize,
    d: usize,
    e: usize,
    logits: &mut [f32],
) -> Result<RouterSaved, KernelError> {
    match w {
        RouterWeights::Linear { w } => {
            linear_forward(x, n, w, None, e, d, logits)?;
            Ok(RouterSaved::default())
        }
        RouterWeights::Mlp { w1, b1, w2 } => {
            let g = b1.len();
            let mut u = vec![0f32; n * g];
            linear_forward(x, n, w1, Some(b1), g, d, &mut u)?;
            let mut h = u.clone();
            super::activation::activation_forward(Activation::Gelu, &mut h);
            linear_forward(&h, n, w2, None, e, g, logits)?;
            Ok(RouterSaved { u, h })
        }
    }
}

/// Router gradients (same variant as the weights).
#[derive(Debug)]
pub enum RouterGrads<'a> {
    /// `dw: [E, d]`.
    Linear {
        /// `[E, d]`
        dw: &'a mut [f32],
    },
    /// `dw1: [G, d]`, `db1: [G]`, `dw2: [E, G]`.
    Mlp {
        /// `[G, d]`
        dw1: &'a mut [f32],
        /// `[G]`
        db1: &'a mut [f32],
        /// `[E, G]`
        dw2: &'a mut [f32],
    },
}

/// Backward of [`router_forward`] from `dlogits: [n, e]`, accumulating into the weight
/// gradients and `dx: [n, d]`.
#[allow(clippy::too_many_arguments)]
pub fn router_backward(
    w: RouterWeights<'_>,
    grads: RouterGrads<'_>,
    saved: &RouterSaved,
    x: &[f32],
    n: usize,
    d: usize,
    e: usize,
    dlogits: &[f32],
    dx: &mut [f32],
) -> Result<(), KernelError> {
    match (w, grads) {
        (RouterWeights::Linear { w }, RouterGrads::Linear { dw }) => {
            linear_backward(dlogits, x, w, n, e, d, Some(dx), dw, None)
        }
        (RouterWeights::Mlp { w1, b1, w2 }, RouterGrads::Mlp { dw1, db1, dw2 }) => {
            let g = b1.len();
            let mut dh = vec![0f32; n * g];
            linear_backward(dlogits, &saved.h, w2, n, e, g, Some(&mut dh), dw2, None)?;
            let mut du = vec![0f32; n * g];
            activation_backward(Activation::Gelu, &dh, &saved.u, &mut du);
            linear_backward(&du, x, w1, n, g, d, Some(dx), dw1, Some(db1))
        }
        _ => Err(KernelError {
            kernel: "router_backward",
            what: "gradient variant (same as the weights)",
            expected: 0,
            got: 1,
        }),
    }
}

/// Gate backward (C.2) for one token: `probs: [E]`, chosen `sel: [k]`, `a: [k]` =
/// `dy·f_e(x)` per chosen slot; writes (overwrites) `dlogits: [E]`.
pub fn gate_backward(
    probs: &[f32],
    sel: &[u32],
    a: &[f32],
    renormalize: bool,
    dlogits: &mut [f32],
) {
    dlogits.fill(0.0);
    if renormalize {
        let sum: f32 = sel.iter().map(|&e| probs[e as usize]).sum();
        if sum <= 0.0 {
            return;
        }
        let mean: f32 = sel
            .iter()
            .zip(a)
            .map(|(&e, &av)| probs[e as usize] / sum * av)
            .sum();
        for (&e, &av) in sel.iter().zip(a) {
            dlogits[e as usize] = probs[e as usize] / sum * (av - mean);
        }
    } else {
        let mean: f32 = sel
            .iter()
            .zip(a)
            .map(|(&e, &av)| probs[e as usize] * av)
            .sum();
        for (g, &p) in dlogits.iter_mut().zip(probs) {
            *g = -p * mean;
        }
        for (&e, &av) in sel.iter().zip(a) {
            dlogits[e as usize] += probs[e as usize] * av;
        }
    }
}

/// Entropies of one router call: `marginal = H(e)` (of the mean probabilities) and
/// `conditional = H(e|x)` (mean per-token entropy), in nats.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RouterEntropy {
    /// `H(e) = −Σ p̄ log(p̄ + ε)`.
    pub marginal: f64,
    /// `H(e|x)`.
    pub conditional: f64,
}

/// The entropies of `probs: [n, e]`, and the mean probabilities `p̄`.
pub fn router_entropy(probs: &[f32], n: usize, e: usize) -> (RouterEntropy, Vec<f64>) {
    let mut mean = vec![0f64; e];
    let mut cond = 0f64;
    for row in probs.chunks_exact(e).take(n) {
        for (m, &p) in mean.iter_mut().zip(row) {
            *m += f64::from(p);
            if p > 0.0 {
                cond -= f64::from(p) * f64::from(p).ln();
            }
        }
    }
    let inv = 1.0 / n.max(1) as f64;
    mean.iter_mut().for_each(|m| *m *= inv);
    let marginal = -mean
        .iter()
        .map(|&m| m * (m + f64::from(MARGINAL_EPS)).ln())
        .sum::<f64>();
    (
        RouterEntropy {
            marginal,
            conditional: cond * inv,
        },
        mean,
    )
}

/// The auxiliary loss `mi·(H(e|x) − H(e)) + lc·H(e)` of one router call and its gradient,
/// `scale·∂/∂ℓ`, **added** to `dlogits: [n, e]`. `probs: [n, e]` are the softmax
/// probabilities of the logits. Returns the loss value and the entropies.
pub fn aux_loss(
    probs: &[f32],
    n: usize,
    e: usize,
    mi: f32,
    lc: f32,
    scale: f32,
    dlogits: &mut [f32],
) -> (f64, RouterEntropy) {
    let (ent, mean) = router_entropy(probs, n, e);
    let (mi, lc) = (f64::from(mi), f64::from(lc));
    let value = mi * (ent.conditional - ent.marginal) + lc * ent.marginal;
    if (mi == 0.0 && lc == 0.0) || n == 0 {
        return (value, ent);
    }
    let eps = f64::from(MARGINAL_EPS);
    // ∂H(e)/∂p̄_e = c_e
    let c: Vec<f64> = mean
        .iter()
        .map(|&m| -(m + eps).ln() - m / (m + eps))
        .collect();
    let coef_marg = lc - mi; // weight of H(e)
    let inv = 1.0 / n as f64;
    let s = f64::from(scale);
    for (row, drow) in probs
        .chunks_exact(e)
        .zip(dlogits.chunks_exact_mut(e))
        .take(n)
    {
        // ∂H(e)/∂ℓ_j = (P_j/N)(c_j − Σ P c);  ∂H(e|x)/∂ℓ_j = −(P_j/N)(log P_j + H_n)
        let pc: f64 = row.iter().zip(&c).map(|(&p, &cv)| f64::from(p) * cv).sum();
        let hn: f64 = -row
            .iter()
            .filter(|&&p| p > 0.0)
            .map(|&p| f64::from(p) * f64::from(p).ln())
            .sum::<f64>();
        for ((g, &p), &cv) in drow.iter_mut().zip(row).zip(&c) {
            let p64 = f64::from(p);
            if p64 <= 0.0 {
                continue;
            }
            let dmarg = p64 * inv * (cv - pc);
            let dcond = -p64 * inv * (p64.ln() + hn);
            *g += (s * (coef_marg * dmarg + mi * dcond)) as f32;
        }
    }
    (value, ent)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::gradcheck::{check_grad, weighted_sum, GradCheck};
    use crate::layers::rand_vec;
    use modula_core::kernels::elementwise::softmax_scalar;
    use modula_core::kernels::routing::top_k;

    fn softmax_rows(l: &[f32], e: usize) -> Vec<f32> {
        let mut p = l.to_vec();
        p.chunks_exact_mut(e).for_each(softmax_scalar);
        p
    }

    #[test]
    fn aux_gradients_match_finite_differences() {
        let (n, e) = (7, 5);
        let mut l = rand_vec(1, n * e);
        l.iter_mut().for_each(|v| *v *= 3.0);
        for &(mi, lc) in &[(1.0f32, 0.0f32), (0.0, 1.0), (0.3, 0.7)] {
            let p = softmax_rows(&l, e);
            let mut g = vec![0f32; n * e];
            aux_loss(&p, n, e, mi, lc, 1.0, &mut g);
            let f = |l: &[f32]| {
                let p = softmax_rows(l, e);
                aux_loss(&p, n, e, mi, lc, 1.0, &mut vec![0f32; n * e]).0
            };
            let cfg = GradCheck {
                eps: 1e-2,
                tol: 2e-3,
                floor: 1e-3,
            };
            check_grad("aux", &mut l, &g, f, cfg).unwrap();
        }
    }

    #[test]
    fn mi_loss_bounds() {
        let e = 4;
        // uniform router: H(e) = H(e|x) = ln E  →  L_MI = 0
        let p = vec![0.25f32; 3 * e];
        let (v, ent) = aux_loss(&p, 3, e, 1.0, 0.0, 1.0, &mut vec![0f32; 3 * e]);
        assert!(v.abs() < 1e-6 && (ent.marginal - 4f64.ln()).abs() < 1e-6);
        // one-hot, balanced: L_MI = −ln E
        let mut p = vec![0f32; e * e];
        (0..e).for_each(|i| p[i * e + i] = 1.0);
        let (v, _) = aux_loss(&p, e, e, 1.0, 0.0, 1.0, &mut vec![0f32; e * e]);
        assert!((v + 4f64.ln()).abs() < 1e-6, "{v}");
    }

    #[test]
    fn gate_gradients_match_finite_differences() {
        // y = Σ_S g_e f_e with fixed f_e; loss = Σ r·y. Selection is held fixed (the
        // perturbation is small enough not to change the top-k here).
        let (e, k, dim) = (6, 2, 3);
        let mut l = rand_vec(3, e);
        l.iter_mut().for_each(|v| *v *= 2.0);
        let f = rand_vec(4, e * dim);
        let r = rand_vec(5, dim);
        for renorm in [false, true] {
            let p = softmax_rows(&l, e);
            let (mut sel, mut val) = (vec![0u32; k], vec![0f32; k]);
            top_k(&p, k, &mut sel, &mut val).unwrap();
            let a: Vec<f32> = sel
                .iter()
                .map(|&s| weighted_sum(&r, &f[s as usize * dim..(s as usize + 1) * dim]) as f32)
                .collect();
            let mut g = vec![0f32; e];
            gate_backward(&p, &sel, &a, renorm, &mut g);
            let sel0 = sel.clone();
            let loss = |l: &[f32]| {
                let p = softmax_rows(l, e);
                let sum: f32 = sel0.iter().map(|&s| p[s as usize]).sum();
                let mut y = vec![0f32; dim];
                for &s in &sel0 {
                    let gate = if renorm {
                        p[s as usize] / sum
                    } else {
                        p[s as usize]
                    };
                    for c in 0..dim {
                        y[c] += gate * f[s as usize * dim + c];
                    }
                }
                weighted_sum(&r, &y)
            };
            let cfg = GradCheck {
                eps: 1e-2,
                tol: 2e-3,
                floor: 1e-2,
            };
            check_grad("gate", &mut l, &g, loss, cfg).unwrap();
        }
    }

    #[test]
    fn mlp_router_gradients_match_finite_differences() {
        let (n, d, g, e) = (5, 4, 6, 3);
        let mut x = rand_vec(1, n * d);
        let mut w1 = rand_vec(2, g * d);
        let mut b1 = rand_vec(3, g);
        let mut w2 = rand_vec(4, e * g);
        let r = rand_vec(5, n * e);
        let mut l = vec![0f32; n * e];
        let w = RouterWeights::Mlp {
            w1: &w1,
            b1: &b1,
            w2: &w2,
        };
        let saved = router_forward(w, &x, n, d, e, &mut l).unwrap();
        let (mut dx, mut dw1, mut db1, mut dw2) = (
            vec![0f32; n * d],
            vec![0f32; g * d],
            vec![0f32; g],
            vec![0f32; e * g],
        );
        router_backward(
            w,
            RouterGrads::Mlp {
                dw1: &mut dw1,
                db1: &mut db1,
                dw2: &mut dw2,
            },
            &saved,
            &x,
            n,
            d,
            e,
            &r,
            &mut dx,
        )
        .unwrap();
        let f = |x: &[f32], w1: &[f32], b1: &[f32], w2: &[f32]| {
            let mut l = vec![0f32; n * e];
            router_forward(RouterWeights::Mlp { w1, b1, w2 }, x, n, d, e, &mut l).unwrap();
            weighted_sum(&r, &l)
        };
        let cfg = GradCheck {
            tol: 2e-3,
            ..GradCheck::default()
        };
        let (x0, w10, b10, w20) = (x.clone(), w1.clone(), b1.clone(), w2.clone());
        check_grad("router dx", &mut x, &dx, |v| f(v, &w10, &b10, &w20), cfg).unwrap();
        check_grad("router dw1", &mut w1, &dw1, |v| f(&x0, v, &b10, &w20), cfg).unwrap();
        check_grad("router db1", &mut b1, &db1, |v| f(&x0, &w10, v, &w20), cfg).unwrap();
        check_grad("router dw2", &mut w2, &dw2, |v| f(&x0, &w10, &b10, v), cfg).unwrap();
    }
}
