//! LayerNorm over the last dimension, per row: `y = (x − μ)·rstd·γ + β`.

use modula_core::kernels::elementwise::layer_norm;
use modula_core::kernels::{par, KernelError};

/// Rows per parallel task: at least this many elements each.
const MIN_ELEMS: usize = 1 << 14;

/// Forward for `m` rows of `d`. Saves `mean[m]` and `rstd[m]` for the backward.
/// `x, y: [m, d]`, `gamma, beta: [d]`. Rows are spread over the kernel threads (each row
/// by one task: bit-identical for any thread count).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward(
    x: &[f32],
    m: usize,
    d: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    y: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
) -> Result<(), KernelError> {
    if m == 0 || d == 0 {
        return Ok(());
    }
    let mut stats = vec![(0f32, 0f32); m];
    let rows = par::chunk_for(m, 1, MIN_ELEMS.div_ceil(d));
    let failed = std::sync::Mutex::new(None);
    par::for_each_chunk_pair_mut(&mut y[..m * d], rows * d, &mut stats, rows, |ci, yc, st| {
        let r0 = ci * rows;
        for (i, (yr, s)) in yc.chunks_exact_mut(d).zip(st.iter_mut()).enumerate() {
            let xr = &x[(r0 + i) * d..(r0 + i + 1) * d];
            match layer_norm(xr, Some(gamma), Some(beta), eps, yr) {
                Ok(v) => *s = v,
                Err(e) => {
                    let mut f = failed.lock().unwrap_or_else(|p| p.into_inner());
                    f.get_or_insert(e);
                }
            }
        }
    });
    if let Some(e) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    for (i, (mu, rs)) in stats.into_iter().enumerate() {
        mean[i] = mu;
        rstd[i] = rs;
    }
    Ok(())
}

/// Backward, accumulating into `dx: [m, d]`, `dgamma, dbeta: [d]`:
/// with `x̂ = (x − μ)·rstd` and `g = dy·γ`,
/// `dx = rstd·(g − mean(g) − x̂·mean(g·x̂))`, `dγ += Σ dy·x̂`, `dβ += Σ dy`.
/// `dx` rows are spread over the kernel threads; `dγ`, `dβ` are summed in row order
/// (bit-identical for any thread count).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    dy: &[f32],
    x: &[f32],
    m: usize,
    d: usize,
    gamma: &[f32],
    mean: &[f32],
    rstd: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    if m == 0 || d == 0 {
        return;
    }
    let rows = par::chunk_for(m, 1, MIN_ELEMS.div_ceil(d));
    par::for_each_chunk_mut(&mut dx[..m * d], rows * d, |ci, dxc| {
        let r0 = ci * rows;
        for (ii, dxr) in dxc.chunks_exact_mut(d).enumerate() {
            let i = r0 + ii;
            let (xr, dyr) = (&x[i * d..(i + 1) * d], &dy[i * d..(i + 1) * d]);
            let (mu, rs) = (mean[i], rstd[i]);
            let mut mg = 0f32;
            let mut mgx = 0f32;
            for j in 0..d {
                let xh = (xr[j] - mu) * rs;
                let g = dyr[j] * gamma[j];
                mg += g;
                mgx += g * xh;
            }
            mg /= d as f32;
            mgx /= d as f32;
            for j in 0..d {
                let xh = (xr[j] - mu) * rs;
                dxr[j] += rs * (dyr[j] * gamma[j] - mg - xh * mgx);
            }
        }
    });
    for i in 0..m {
        let (xr, dyr) = (&x[i * d..(i + 1) * d], &dy[i * d..(i + 1) * d]);
        let (mu, rs) = (mean[i], rstd[i]);
        for j in 0..d {
            dgamma[j] += dyr[j] * ((xr[j] - mu) * rs);
            dbeta[j] += dyr[j];
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::gradcheck::{check_grad, weighted_sum, GradCheck};
    use crate::layers::rand_vec;

    #[test]
    fn gradients_match_finite_differences() {
        let (m, d) = (4, 11);
        let mut x: Vec<f32> = rand_vec(1, m * d).iter().map(|v| 2.0 * v + 0.3).collect();
        let mut g = rand_vec(2, d);
        let mut b = rand_vec(3, d);
        let r = rand_vec(4, m * d);
        let f = |x: &[f32], g: &[f32], b: &[f32]| {
            let (mut y, mut mu, mut rs) = (vec![0f32; m * d], vec![0f32; m], vec![0f32; m]);
            layernorm_forward(x, m, d, g, b, 1e-5, &mut y, &mut mu, &mut rs).unwrap();
            weighted_sum(&r, &y)
        };
        let (mut y, mut mu, mut rs) = (vec![0f32; m * d], vec![0f32; m], vec![0f32; m]);
        layernorm_forward(&x, m, d, &g, &b, 1e-5, &mut y, &mut mu, &mut rs).unwrap();
        let (mut dx, mut dg, mut db) = (vec![0f32; m * d], vec![0f32; d], vec![0f32; d]);
        layernorm_backward(&r, &x, m, d, &g, &mu, &rs, &mut dx, &mut dg, &mut db);
        // LayerNorm is more curved than a linear map: ε = 1e-2 truncation error ~1e-3.
        let cfg = GradCheck {
            eps: 5e-3,
            tol: 5e-3,
            ..GradCheck::default()
        };
        let (x0, g0, b0) = (x.clone(), g.clone(), b.clone());
        check_grad("layernorm dx", &mut x, &dx, |x| f(x, &g0, &b0), cfg).unwrap();
        check_grad("layernorm dgamma", &mut g, &dg, |g| f(&x0, g, &b0), cfg).unwrap();
        check_grad("layernorm dbeta", &mut b, &db, |b| f(&x0, &g0, b), cfg).unwrap();
    }
}
