//! Stick-breaking attention (ModuleFormer) for one head over a whole causal sequence.
//!
//! Forward: the engine's kernel (`kernels::attention::stick_breaking`, no truncation), so
//! trainer and engine compute the same numbers. For query `i`, walking `j = i, i−1, …, 0`:
//! `z_ij = q_i·k_j·scale`, `A_ij = exp(z_ij − Σ_{l=j..i} softplus(z_il))`,
//! `o_i = Σ_j A_ij v_j` (the current token included, mass not renormalised).
//!
//! Backward (spec C.1), recomputing `z` and `A` (O(T²·dh) time; `[T, T]` scratch for the
//! duration of the call, nothing stored between forward and backward) with five matrix
//! products — `Z = QKᵀ`, `dA = dO Vᵀ`, `dQ = dZ K`, `dK = dZᵀ Q`, `dV = Aᵀ dO` — and one
//! O(T²) row pass in between: `dA_ij = do_i·v_j`, `dv_j += A_ij do_i`,
//! `G_ij = A_ij dA_ij`, `C_il = Σ_{j≤l} G_ij` (inclusive prefix from the oldest key),
//! `dz_il = G_il − σ(z_il)·C_il`, `dq_i += scale Σ_l dz_il k_l`, `dk_l += scale dz_il q_i`.

use crate::compute::{linear, matmul_rows, matmul_tn_acc};
use modula_core::kernels::attention::{softplus, stick_breaking};
use modula_core::kernels::linear::MatRef;
use modula_core::kernels::KernelError;

/// Forward. `q, k, v, out: [t, dh]`.
pub fn stickbreak_forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    t: usize,
    dh: usize,
    scale: f32,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let mut scratch = vec![0f32; 128];
    stick_breaking(q, t, k, v, t, dh, scale, None, out, None, &mut scratch)
}

/// Backward, accumulating into `dq, dk, dv: [t, dh]`; `dout: [t, dh]`.
#[allow(clippy::too_many_arguments)]
pub fn stickbreak_backward(
    dout: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    t: usize,
    dh: usize,
    scale: f32,
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) -> Result<(), KernelError> {
    let n = t * dh;
    for (what, len) in [
        ("dout", dout.len()),
        ("q", q.len()),
        ("k", k.len()),
        ("v", v.len()),
        ("dq", dq.len()),
        ("dk", dk.len()),
        ("dv", dv.len()),
    ] {
        if len < n {
            return Err(KernelError {
                kernel: "stickbreak_backward",
                what,
                expected: n,
                got: len,
            });
        }
    }
    let (dout, q, k, v) = (&dout[..n], &q[..n], &k[..n], &v[..n]);
    let (dq, dk, dv) = (&mut dq[..n], &mut dk[..n], &mut dv[..n]);
    // Z = Q Kᵀ and dA = dO Vᵀ as matrix products ([t, t]; only j ≤ i is used)
    let (mut z, mut da) = (vec![0f32; t * t], vec![0f32; t * t]);
    linear(q, dh, t, &MatRef::f32(k, t, dh)?, None, &mut z, t)?;
    linear(dout, dh, t, &MatRef::f32(v, t, dh)?, None, &mut da, t)?;
    // per row: A (walking back from the current token), then dZ in place of dA
    let mut a = vec![0f32; t * t];
    for i in 0..t {
        let (zr, ar, dr) = (
            &mut z[i * t..(i + 1) * t],
            &mut a[i * t..(i + 1) * t],
            &mut da[i * t..(i + 1) * t],
        );
        let mut s = 0f32;
        for j in (0..=i).rev() {
            zr[j] *= scale;
            s += softplus(zr[j]);
            ar[j] = (zr[j] - s).exp();
        }
        // G_ij = A_ij dA_ij; C_il = Σ_{j≤l} G_ij; dz_il = (G_il − β_il C_il)·scale
        let mut c = 0f32;
        for l in 0..=i {
            let g = ar[l] * dr[l];
            c += g;
            let beta = 1.0 / (1.0 + (-zr[l]).exp());
            dr[l] = (g - beta * c) * scale;
        }
        dr[i + 1..].fill(0.0);
    }
    // dQ += dZ K, dK += dZᵀ Q, dV += Aᵀ dO
    matmul_rows(&da, t, t, &MatRef::f32(k, t, dh)?, dq, dh, true)?;
    matmul_tn_acc(&da, q, t, t, dh, dk)?;
    matmul_tn_acc(&a, dout, t, t, dh, dv)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::gradcheck::{check_grad, weighted_sum, GradCheck};
    use crate::layers::rand_vec;

    /// The product formula `A_ij = σ(z_ij) Π_{l=j+1..i}(1 − σ(z_il))`, in f64.
    fn brute(q: &[f32], k: &[f32], v: &[f32], t: usize, dh: usize, scale: f32) -> Vec<f64> {
        let mut out = vec![0f64; t * dh];
        let sig = |z: f64| 1.0 / (1.0 + (-z).exp());
        for i in 0..t {
            let z: Vec<f64> = (0..=i)
                .map(|j| {
                    (0..dh)
                        .map(|c| f64::from(q[i * dh + c]) * f64::from(k[j * dh + c]))
                        .sum::<f64>()
                        * f64::from(scale)
                })
                .collect();
            for j in 0..=i {
                let mut w = sig(z[j]);
                for zl in &z[j + 1..=i] {
                    w *= 1.0 - sig(*zl);
                }
                for c in 0..dh {
                    out[i * dh + c] += w * f64::from(v[j * dh + c]);
                }
            }
        }
        out
    }

    #[test]
    fn forward_matches_the_product_formula() {
        for &(t, dh) in &[(1, 3), (7, 5), (70, 9)] {
            let (q, k, v) = (
                rand_vec(1, t * dh),
                rand_vec(2, t * dh),
                rand_vec(3, t * dh),
            );
            let mut o = vec![0f32; t * dh];
            stickbreak_forward(&q, &k, &v, t, dh, 1.3, &mut o).unwrap();
            for (a, b) in o.iter().zip(brute(&q, &k, &v, t, dh, 1.3)) {
                assert!((f64::from(*a) - b).abs() < 1e-5, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        for &(t, dh) in &[(1, 2), (6, 3), (9, 4), (20, 3)] {
            let (mut q, mut k, mut v) = (
                rand_vec(4, t * dh),
                rand_vec(5, t * dh),
                rand_vec(6, t * dh),
            );
            // larger logits so the sticks are far from ½
            q.iter_mut().for_each(|x| *x *= 2.0);
            let r = rand_vec(7, t * dh);
            let scale = 0.9;
            let (mut dq, mut dk, mut dv) =
                (vec![0f32; t * dh], vec![0f32; t * dh], vec![0f32; t * dh]);
            stickbreak_backward(&r, &q, &k, &v, t, dh, scale, &mut dq, &mut dk, &mut dv).unwrap();
            let f = |q: &[f32], k: &[f32], v: &[f32]| {
                let mut o = vec![0f32; t * dh];
                stickbreak_forward(q, k, v, t, dh, scale, &mut o).unwrap();
                weighted_sum(&r, &o)
            };
            let cfg = GradCheck {
                tol: 2e-3,
                ..GradCheck::default()
            };
            let (q0, k0, v0) = (q.clone(), k.clone(), v.clone());
            check_grad("stickbreak dq", &mut q, &dq, |q| f(q, &k0, &v0), cfg).unwrap();
            check_grad("stickbreak dk", &mut k, &dk, |k| f(&q0, k, &v0), cfg).unwrap();
            check_grad("stickbreak dv", &mut v, &dv, |v| f(&q0, &k0, v), cfg).unwrap();
            // one wrong element is caught
            let mut bad = dk.clone();
            bad[t * dh - 1] += 0.05;
            assert!(check_grad("bad dk", &mut k, &bad, |k| f(&q0, k, &v0), cfg).is_err());
        }
    }
}
