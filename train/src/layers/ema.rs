//! Multi-dimensional damped EMA (MEGA's SSM, SeqBoat's always-on path) for training:
//! forward scan keeping every state, and the adjoint (reverse) scan of spec A5.1.
//!
//! Per channel `j` and hidden unit `n` (raw parameters stored `[d][N]`, channel-major, as
//! MEGA/SeqBoat store them):
//!
//! ```text
//! p = σ(Δ̂), a = σ(Â), α = p·β, q = 1 − p·a, c = η/√N
//! h_t = α·x_t + q·h_{t−1},   y_t = Σ_n c·h_t
//! ```
//!
//! Bidirectional = a forward scan with the first `d` rows of the parameters plus a reverse
//! scan (from the last position down) with the next `d` rows; both include `s = t`. The
//! skip `ω ⊙ x` belongs to the layer. Untruncated (the recurrent form), which is what the
//! streaming engine computes; the official FFT form truncates the kernel at `T` (spec A2.2).

/// Derived coefficients of one direction, each `[d][N]`.
#[derive(Clone, Debug)]
pub struct EmaCoef {
    /// σ(Δ̂).
    pub p: Vec<f32>,
    /// σ(Â).
    pub a: Vec<f32>,
    /// p·β.
    pub alpha: Vec<f32>,
    /// 1 − p·a.
    pub q: Vec<f32>,
    /// η/√N.
    pub c: Vec<f32>,
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl EmaCoef {
    /// From raw `[d][N]` slices of one direction.
    pub fn new(n: usize, delta: &[f32], a_hat: &[f32], beta: &[f32], eta: &[f32]) -> Self {
        let s = 1.0 / (n as f32).sqrt();
        let p: Vec<f32> = delta.iter().map(|&v| sigmoid(v)).collect();
        let a: Vec<f32> = a_hat.iter().map(|&v| sigmoid(v)).collect();
        let alpha = p.iter().zip(beta).map(|(p, b)| p * b).collect();
        let q = p.iter().zip(&a).map(|(p, a)| 1.0 - p * a).collect();
        let c = eta.iter().map(|e| e * s).collect();
        EmaCoef { p, a, alpha, q, c }
    }
}

/// Gradients of one direction's derived coefficients, each `[d][N]`.
#[derive(Clone, Debug)]
pub struct EmaCoefGrad {
    /// ∂L/∂α.
    pub alpha: Vec<f32>,
    /// ∂L/∂q.
    pub q: Vec<f32>,
    /// ∂L/∂c.
    pub c: Vec<f32>,
}

impl EmaCoefGrad {
    /// Zeros for `d·N` coefficients.
    pub fn zeros(len: usize) -> Self {
        EmaCoefGrad {
            alpha: vec![0.0; len],
            q: vec![0.0; len],
            c: vec![0.0; len],
        }
    }

    /// Add another sequence's gradients.
    pub fn add(&mut self, o: &EmaCoefGrad) {
        for (a, b) in [
            (&mut self.alpha, &o.alpha),
            (&mut self.q, &o.q),
            (&mut self.c, &o.c),
        ] {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
    }

    /// Chain to the raw parameters, accumulating into `[d][N]` slices (spec A5.1):
    /// `∂p = β∂α − a∂q`, `∂a = −p∂q`, `∂β = p∂α`, `∂η = ∂c/√N`, then the sigmoids.
    #[allow(clippy::too_many_arguments)]
    pub fn to_raw(
        &self,
        coef: &EmaCoef,
        beta: &[f32],
        n: usize,
        d_delta: &mut [f32],
        d_ahat: &mut [f32],
        d_beta: &mut [f32],
        d_eta: &mut [f32],
    ) {
        let s = 1.0 / (n as f32).sqrt();
        for i in 0..self.alpha.len() {
            let (p, a) = (coef.p[i], coef.a[i]);
            let dp = beta[i] * self.alpha[i] - a * self.q[i];
            let da = -p * self.q[i];
            d_delta[i] += dp * p * (1.0 - p);
            d_ahat[i] += da * a * (1.0 - a);
            d_beta[i] += p * self.alpha[i];
            d_eta[i] += self.c[i] * s;
        }
    }
}

/// Position of step `i` of a scan over `t` positions.
fn at(i: usize, t: usize, rev: bool) -> usize {
    if rev {
        t - 1 - i
    } else {
        i
    }
}

/// One sequence's scan: `x: [t][d]`; writes every state into `hs: [t][d][N]` (indexed by
/// position) and adds `Σ_n c·h` to `y: [t][d]`.
#[allow(clippy::too_many_arguments)]
pub fn ema_scan_forward(
    x: &[f32],
    t: usize,
    d: usize,
    n: usize,
    coef: &EmaCoef,
    rev: bool,
    hs: &mut [f32],
    y: &mut [f32],
) {
    let dn = d * n;
    let mut h = vec![0f32; dn];
    for i in 0..t {
        let pos = at(i, t, rev);
        let xr = &x[pos * d..(pos + 1) * d];
        let yr = &mut y[pos * d..(pos + 1) * d];
        for j in 0..d {
            let hj = &mut h[j * n..(j + 1) * n];
            let r = j * n..(j + 1) * n;
            let (al, q, c) = (&coef.alpha[r.clone()], &coef.q[r.clone()], &coef.c[r]);
            let mut acc = 0f32;
            for k in 0..n {
                hj[k] = al[k] * xr[j] + q[k] * hj[k];
                acc += c[k] * hj[k];
            }
            yr[j] += acc;
        }
        hs[pos * dn..(pos + 1) * dn].copy_from_slice(&h);
    }
}

/// Adjoint of [`ema_scan_forward`] for one sequence: `gy: [t][d]` is ∂L/∂y (the EMA sum,
/// not the skip); adds ∂L/∂x into `dx: [t][d]` and the coefficient gradients into `g`.
/// `λ_t = c·ḡ_t + q·λ_{t+1}`; `∂q += λ_t h_{t−1}`, `∂α += λ_t x_t`, `∂c += ḡ_t h_t`,
/// `∂x_t += Σ_n α λ_t` (spec A5.1; "t+1" is the next step of the scan's direction).
#[allow(clippy::too_many_arguments)]
pub fn ema_scan_backward(
    x: &[f32],
    t: usize,
    d: usize,
    n: usize,
    coef: &EmaCoef,
    rev: bool,
    hs: &[f32],
    gy: &[f32],
    dx: &mut [f32],
    g: &mut EmaCoefGrad,
) {
    let dn = d * n;
    let mut lam = vec![0f32; dn];
    for i in (0..t).rev() {
        let pos = at(i, t, rev);
        let prev = (i > 0).then(|| at(i - 1, t, rev));
        let h = &hs[pos * dn..(pos + 1) * dn];
        let xr = &x[pos * d..(pos + 1) * d];
        let gr = &gy[pos * d..(pos + 1) * d];
        for j in 0..d {
            let mut dxj = 0f32;
            for k in 0..n {
                let idx = j * n + k;
                let l = coef.c[idx] * gr[j] + coef.q[idx] * lam[idx];
                lam[idx] = l;
                if let Some(pp) = prev {
                    g.q[idx] += l * hs[pp * dn + idx];
                }
                g.alpha[idx] += l * xr[j];
                g.c[idx] += gr[j] * h[idx];
                dxj += coef.alpha[idx] * l;
            }
            dx[pos * d + j] += dxj;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::gradcheck::{check_grad, weighted_sum, GradCheck};
    use crate::layers::rand_vec;

    fn raw(seed: u64, d: usize, n: usize) -> [Vec<f32>; 4] {
        [
            rand_vec(seed, d * n),
            rand_vec(seed + 1, d * n),
            rand_vec(seed + 2, d * n),
            rand_vec(seed + 3, d * n),
        ]
    }

    fn run(x: &[f32], t: usize, d: usize, n: usize, p: &[Vec<f32>; 4], rev: bool) -> Vec<f32> {
        let coef = EmaCoef::new(n, &p[0], &p[1], &p[2], &p[3]);
        let mut hs = vec![0.0; t * d * n];
        let mut y = vec![0.0; t * d];
        ema_scan_forward(x, t, d, n, &coef, rev, &mut hs, &mut y);
        y
    }

    #[test]
    fn scan_matches_the_convolution_kernel_and_core() {
        // y_t = Σ_{s≤t} K[t−s] x_s with K[ℓ] = Σ_n c α q^ℓ (f64), and the core SIMD scan.
        let (t, d, n) = (23, 5, 4);
        let p = raw(7, d, n);
        let x = rand_vec(9, t * d);
        let coef = EmaCoef::new(n, &p[0], &p[1], &p[2], &p[3]);
        for rev in [false, true] {
            let y = run(&x, t, d, n, &p, rev);
            for tt in 0..t {
                for j in 0..d {
                    let mut want = 0f64;
                    for s in 0..t {
                        let lag = if rev {
                            s as i64 - tt as i64
                        } else {
                            tt as i64 - s as i64
                        };
                        if lag < 0 {
                            continue;
                        }
                        for k in 0..n {
                            let i = j * n + k;
                            want += f64::from(coef.c[i])
                                * f64::from(coef.alpha[i])
                                * f64::from(coef.q[i]).powi(lag as i32)
                                * f64::from(x[s * d + j]);
                        }
                    }
                    let got = f64::from(y[tt * d + j]);
                    assert!(
                        (got - want).abs() < 1e-4,
                        "rev {rev} t {tt} j {j}: {got} {want}"
                    );
                }
            }
        }
        // the core kernel (n-major layout) gives the same causal scan
        let core = modula_core::kernels::ema::EmaCoefs::from_raw(d, n, &p[0], &p[1], &p[2], &p[3])
            .unwrap();
        let mut state = vec![0.0; core.state_len()];
        let mut yc = vec![0.0; t * d];
        modula_core::kernels::ema::ema_scan(&core, &x, t, &mut state, &mut yc).unwrap();
        let y = run(&x, t, d, n, &p, false);
        for (a, b) in y.iter().zip(&yc) {
            assert!((a - b).abs() < 1e-5, "{a} vs core {b}");
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let (t, d, n) = (9, 3, 4);
        let cfg = GradCheck {
            eps: 1e-3,
            tol: 2e-2,
            floor: 1e-2,
        };
        for rev in [false, true] {
            let p = raw(3, d, n);
            let mut x = rand_vec(5, t * d);
            let r = rand_vec(6, t * d);
            let coef = EmaCoef::new(n, &p[0], &p[1], &p[2], &p[3]);
            let mut hs = vec![0.0; t * d * n];
            let mut y = vec![0.0; t * d];
            ema_scan_forward(&x, t, d, n, &coef, rev, &mut hs, &mut y);
            let mut dx = vec![0.0; t * d];
            let mut g = EmaCoefGrad::zeros(d * n);
            ema_scan_backward(&x, t, d, n, &coef, rev, &hs, &r, &mut dx, &mut g);
            let mut raw_g = [
                vec![0.0; d * n],
                vec![0.0; d * n],
                vec![0.0; d * n],
                vec![0.0; d * n],
            ];
            let [g0, g1, g2, g3] = &mut raw_g;
            g.to_raw(&coef, &p[2], n, g0, g1, g2, g3);
            let pc = p.clone();
            check_grad(
                "ema x",
                &mut x,
                &dx,
                |x| weighted_sum(&r, &run(x, t, d, n, &pc, rev)),
                cfg,
            )
            .unwrap();
            for which in 0..4 {
                let mut v = p[which].clone();
                let xs = x.clone();
                let pp = p.clone();
                check_grad(
                    &format!("ema raw {which} rev {rev}"),
                    &mut v,
                    &raw_g[which],
                    |v| {
                        let mut q = pp.clone();
                        q[which] = v.to_vec();
                        weighted_sum(&r, &run(&xs, t, d, n, &q, rev))
                    },
                    cfg,
                )
                .unwrap();
            }
        }
    }
}
