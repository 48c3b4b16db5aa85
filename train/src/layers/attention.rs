//! Softmax self-attention for one head over a whole sequence (training has no KV cache):
//! `S = Q Kᵀ·scale` (causal or full), `P = softmax(S)`, `O = P V`.
//!
//! The forward is the engine's own row loop (`kernels::attention::attend_rows`, also behind
//! `causal_attention`), so the numbers are identical (tested); it
//! keeps `P` (`[T, T]`, zero where masked) for the backward, which is five matrix
//! products: `dV = Pᵀ dO`, `dP = dO Vᵀ`, `dS = P ⊙ (dP − rowsum(P ⊙ dP))·scale`,
//! `dQ = dS K`, `dK = dSᵀ Q` (masked entries have `P = 0`, so `dS = 0` there).

use crate::compute::{linear, matmul_rows, matmul_tn_acc};
use modula_core::kernels::attention::attend_rows;
use modula_core::kernels::isa;
use modula_core::kernels::linear::MatRef;
use modula_core::kernels::KernelError;

/// Forward. `q, k, v, out: [t, dh]`, `probs: [t, t]` (row `i` written for the positions it
/// attends to — `j ≤ i` when `causal` — and zero elsewhere).
#[allow(clippy::too_many_arguments)]
pub fn attention_forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    t: usize,
    dh: usize,
    scale: f32,
    causal: bool,
    out: &mut [f32],
    probs: &mut [f32],
) -> Result<(), KernelError> {
    probs.fill(0.0);
    attend_rows(
        isa::active(),
        q,
        t,
        k,
        v,
        t,
        dh,
        scale,
        causal,
        out,
        probs,
        t,
    )
}

/// Backward, accumulating into `dq, dk, dv: [t, dh]`. `dout: [t, dh]`, `probs` from the
/// forward (either mask).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dout: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    probs: &[f32],
    t: usize,
    dh: usize,
    scale: f32,
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) -> Result<(), KernelError> {
    // dV += Pᵀ dO
    matmul_tn_acc(probs, dout, t, t, dh, dv)?;
    // dP = dO Vᵀ
    let mut ds = vec![0f32; t * t];
    linear(dout, dh, t, &MatRef::f32(v, t, dh)?, None, &mut ds, t)?;
    // dS = P ⊙ (dP − Σ_j P dP)·scale
    for (p, row) in probs.chunks_exact(t).zip(ds.chunks_exact_mut(t)) {
        let dot: f32 = p.iter().zip(row.iter()).map(|(a, b)| a * b).sum();
        for (g, &pj) in row.iter_mut().zip(p) {
            *g = pj * (*g - dot) * scale;
        }
    }
    // dQ += dS K; dK += dSᵀ Q
    matmul_rows(&ds, t, t, &MatRef::f32(k, t, dh)?, dq, dh, true)?;
    matmul_tn_acc(&ds, q, t, t, dh, dk)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::gradcheck::{check_grad, weighted_sum, GradCheck};
    use crate::layers::rand_vec;
    use modula_core::kernels::attention::causal_attention;

    #[test]
    fn forward_is_the_engine_kernel_and_gradients_match() {
        // t = 19 > 16 also takes the many-row (matrixmultiply) paths of the backward.
        for (t, dh, causal) in [(9, 6, true), (9, 6, false), (19, 5, true), (19, 5, false)] {
            let scale = 1.0 / (dh as f32).sqrt();
            let (mut q, mut k, mut v) = (
                rand_vec(1, t * dh),
                rand_vec(2, t * dh),
                rand_vec(3, t * dh),
            );
            let r = rand_vec(4, t * dh);
            let (mut out, mut probs) = (vec![0f32; t * dh], vec![0f32; t * t]);
            attention_forward(&q, &k, &v, t, dh, scale, causal, &mut out, &mut probs).unwrap();
            if causal {
                let mut engine = vec![0f32; t * dh];
                causal_attention(&q, t, &k, &v, t, dh, scale, &mut engine, &mut vec![0f32; t])
                    .unwrap();
                assert!(out == engine, "trainer and engine forwards differ");
            }
            let (mut dq, mut dk, mut dv) =
                (vec![0f32; t * dh], vec![0f32; t * dh], vec![0f32; t * dh]);
            attention_backward(
                &r, &q, &k, &v, &probs, t, dh, scale, &mut dq, &mut dk, &mut dv,
            )
            .unwrap();
            let f = |q: &[f32], k: &[f32], v: &[f32]| {
                let (mut o, mut p) = (vec![0f32; t * dh], vec![0f32; t * t]);
                attention_forward(q, k, v, t, dh, scale, causal, &mut o, &mut p).unwrap();
                weighted_sum(&r, &o)
            };
            let cfg = GradCheck {
                tol: 2e-3,
                ..GradCheck::default()
            };
            let (q0, k0, v0) = (q.clone(), k.clone(), v.clone());
            check_grad("attention dq", &mut q, &dq, |q| f(q, &k0, &v0), cfg).unwrap();
            check_grad("attention dk", &mut k, &dk, |k| f(&q0, k, &v0), cfg).unwrap();
            check_grad("attention dv", &mut v, &dv, |v| f(&q0, &k0, v), cfg).unwrap();
        }
    }
}
