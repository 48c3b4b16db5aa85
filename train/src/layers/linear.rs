//! Fully connected layer `y = x Wᵀ + b`, `W: [n, k]` (out, in).

use crate::compute::{linear, matmul_rows, matmul_tn_acc};
use modula_core::kernels::linear::MatRef;
use modula_core::kernels::KernelError;

/// Forward. `x: [m, k]`, `w: [n, k]`, `b: [n]` or none, `y: [m, n]` (overwritten).
pub fn linear_forward(
    x: &[f32],
    m: usize,
    w: &[f32],
    b: Option<&[f32]>,
    n: usize,
    k: usize,
    y: &mut [f32],
) -> Result<(), KernelError> {
    linear(x, k, m, &MatRef::f32(w, n, k)?, b, y, n)
}

/// Backward, accumulating: `dx += dy W`, `dw += dyᵀ x`, `db += Σ_rows dy`.
/// `dy: [m, n]`, `x: [m, k]`, `w: [n, k]`; `dx: [m, k]` (optional: not needed for the
/// first layer), `dw: [n, k]`, `db: [n]` (optional).
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    m: usize,
    n: usize,
    k: usize,
    dx: Option<&mut [f32]>,
    dw: &mut [f32],
    db: Option<&mut [f32]>,
) -> Result<(), KernelError> {
    if let Some(dx) = dx {
        matmul_rows(dy, n, m, &MatRef::f32(w, n, k)?, dx, k, true)?;
    }
    matmul_tn_acc(dy, x, m, n, k, dw)?;
    if let Some(db) = db {
        for row in dy.chunks_exact(n.max(1)).take(m) {
            for (g, v) in db.iter_mut().zip(row) {
                *g += v;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::gradcheck::{check_grad, weighted_sum, GradCheck};
    use crate::layers::rand_vec;

    #[test]
    fn gradients_match_finite_differences() {
        // m = 20 > 16 also exercises the matrixmultiply path of the forward.
        for &(m, n, k) in &[(3, 5, 7), (20, 9, 13), (1, 33, 17)] {
            let mut x = rand_vec(1, m * k);
            let mut w = rand_vec(2, n * k);
            let mut b = rand_vec(3, n);
            let r = rand_vec(4, m * n);
            let (mut dx, mut dw, mut db) = (vec![0f32; m * k], vec![0f32; n * k], vec![0f32; n]);
            linear_backward(&r, &x, &w, m, n, k, Some(&mut dx), &mut dw, Some(&mut db)).unwrap();
            let f = |x: &[f32], w: &[f32], b: &[f32]| {
                let mut y = vec![0f32; m * n];
                linear_forward(x, m, w, Some(b), n, k, &mut y).unwrap();
                weighted_sum(&r, &y)
            };
            let cfg = GradCheck {
                tol: 1e-3,
                ..GradCheck::default()
            };
            let (w0, b0, x0) = (w.clone(), b.clone(), x.clone());
            check_grad("linear dx", &mut x, &dx, |x| f(x, &w0, &b0), cfg).unwrap();
            check_grad("linear dw", &mut w, &dw, |w| f(&x0, w, &b0), cfg).unwrap();
            check_grad("linear db", &mut b, &db, |b| f(&x0, &w0, b), cfg).unwrap();
        }
    }
}
