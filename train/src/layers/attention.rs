//! Causal softmax self-attention for one head over a whole sequence (training has no KV
//! cache): `S = Q Kᵀ·scale` (causal), `P = softmax(S)`, `O = P V`.
//!
//! The forward issues the same kernel calls, in the same order, as the engine's
//! `kernels::attention::causal_attention`, so the numbers are identical (tested); it also
//! keeps `P` (`[T, T]`, row `i` valid up to `i`) for the backward:
//! `dV = Pᵀ dO`, `dP = dO Vᵀ`, `dS = P ⊙ (dP − rowsum(P ⊙ dP))`, `dQ = dS K·scale`,
//! `dK = dSᵀ Q·scale`.

use modula_core::kernels::elementwise::softmax;
use modula_core::kernels::linear::{linear, matmul_rows, MatRef};
use modula_core::kernels::KernelError;

/// Forward. `q, k, v, out: [t, dh]`, `probs: [t, t]` (written for `j ≤ i`, zero above).
#[allow(clippy::too_many_arguments)]
pub fn causal_attention_forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    t: usize,
    dh: usize,
    scale: f32,
    out: &mut [f32],
    probs: &mut [f32],
) -> Result<(), KernelError> {
    probs.fill(0.0);
    for i in 0..t {
        let n = i + 1;
        let s = &mut probs[i * t..i * t + n];
        linear(
            &q[i * dh..(i + 1) * dh],
            dh,
            1,
            &MatRef::f32(&k[..n * dh], n, dh)?,
            None,
            s,
            n,
        )?;
        s.iter_mut().for_each(|x| *x *= scale);
        softmax(s);
        matmul_rows(
            s,
            n,
            1,
            &MatRef::f32(&v[..n * dh], n, dh)?,
            &mut out[i * dh..(i + 1) * dh],
            dh,
            false,
        )?;
    }
    Ok(())
}

/// Backward, accumulating into `dq, dk, dv: [t, dh]`. `dout: [t, dh]`, `probs` from the
/// forward.
#[allow(clippy::too_many_arguments)]
pub fn causal_attention_backward(
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
) {
    let mut ds = vec![0f32; t];
    for i in 0..t {
        let p = &probs[i * t..i * t + i + 1];
        let d_o = &dout[i * dh..(i + 1) * dh];
        // dP[i, j] = dO[i]·V[j]; Σ_j P dP
        let mut dot = 0f32;
        for (j, dsj) in ds.iter_mut().enumerate().take(i + 1) {
            let dp: f32 = d_o
                .iter()
                .zip(&v[j * dh..(j + 1) * dh])
                .map(|(a, b)| a * b)
                .sum();
            *dsj = dp;
            dot += p[j] * dp;
        }
        for j in 0..=i {
            // dV[j] += P[i, j] dO[i]
            for (g, &x) in dv[j * dh..(j + 1) * dh].iter_mut().zip(d_o) {
                *g += p[j] * x;
            }
            let dsj = p[j] * (ds[j] - dot) * scale;
            for c in 0..dh {
                dq[i * dh + c] += dsj * k[j * dh + c];
                dk[j * dh + c] += dsj * q[i * dh + c];
            }
        }
    }
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
        let (t, dh) = (9, 6);
        let scale = 1.0 / (dh as f32).sqrt();
        let (mut q, mut k, mut v) = (
            rand_vec(1, t * dh),
            rand_vec(2, t * dh),
            rand_vec(3, t * dh),
        );
        let r = rand_vec(4, t * dh);
        let (mut out, mut probs) = (vec![0f32; t * dh], vec![0f32; t * t]);
        causal_attention_forward(&q, &k, &v, t, dh, scale, &mut out, &mut probs).unwrap();
        let mut engine = vec![0f32; t * dh];
        causal_attention(&q, t, &k, &v, t, dh, scale, &mut engine, &mut vec![0f32; t]).unwrap();
        assert!(out == engine, "trainer and engine forwards differ");

        let (mut dq, mut dk, mut dv) = (vec![0f32; t * dh], vec![0f32; t * dh], vec![0f32; t * dh]);
        causal_attention_backward(
            &r, &q, &k, &v, &probs, t, dh, scale, &mut dq, &mut dk, &mut dv,
        );
        let f = |q: &[f32], k: &[f32], v: &[f32]| {
            let (mut o, mut p) = (vec![0f32; t * dh], vec![0f32; t * t]);
            causal_attention_forward(q, k, v, t, dh, scale, &mut o, &mut p).unwrap();
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
