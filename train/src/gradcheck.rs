//! Gradient checking: an analytic gradient against central finite differences.
//!
//! The forward passes are f32 (they are the engine's kernels); the harness perturbs one f32
//! element at a time by ±ε, evaluates a scalar loss accumulated in f64, and compares
//! `(L(θ+ε) − L(θ−ε)) / 2ε` with the analytic value. The error of one element is
//! `|a − n| / (floor + max(|a|, |n|))`. With ε = 1e-2 and O(1) values, truncation error is
//! ~1e-4 and f32 rounding noise ~1e-5 relative; each op documents the bound it is held to.
//! Every layer of every later issue plugs into [`check_grad`].

use modula_core::Error;
/// Settings of one check.
#[derive(Clone, Copy, Debug)]
pub struct GradCheck {
    /// Perturbation ε.
    pub eps: f32,
    /// Largest accepted error per element.
    pub tol: f64,
    /// Added to the denominator so tiny gradients are compared absolutely.
    pub floor: f64,
}

impl Default for GradCheck {
    fn default() -> Self {
        GradCheck {
            eps: 1e-2,
            tol: 1e-2,
            floor: 1e-2,
        }
    }
}

/// The outcome: the worst element.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GradReport {
    /// Largest error.
    pub max_err: f64,
    /// Where.
    pub index: usize,
    /// Analytic value there.
    pub analytic: f64,
    /// Numerical value there.
    pub numeric: f64,
}

/// Check `analytic` (∂L/∂param) against central differences of `loss` over every element of
/// `param` (perturbed in place and restored). `Err` names the worst element if it exceeds
/// `cfg.tol`.
pub fn check_grad(
    name: &str,
    param: &mut [f32],
    analytic: &[f32],
    loss: impl FnMut(&[f32]) -> f64,
    cfg: GradCheck,
) -> Result<GradReport, Error> {
    check_grad_steps(name, param, analytic, loss, &[cfg.eps], cfg.tol, cfg.floor)
}

/// [`check_grad`] over several step sizes: an element's error is its smallest over the
/// `steps` (deep stacks of f32 layers have curved paths where a large ε has truncation
/// error and tiny gradients where a small ε has rounding noise; a right gradient matches
/// at one of them, a wrong one at none).
pub fn check_grad_steps(
    name: &str,
    param: &mut [f32],
    analytic: &[f32],
    mut loss: impl FnMut(&[f32]) -> f64,
    steps: &[f32],
    tol: f64,
    floor: f64,
) -> Result<GradReport, Error> {
    if param.len() != analytic.len() || steps.is_empty() {
        return Err(Error::input(format!(
            "{name}: {} parameters, {} gradients, {} step sizes",
            param.len(),
            analytic.len(),
            steps.len()
        )));
    }
    let mut worst = GradReport {
        max_err: 0.0,
        index: 0,
        analytic: 0.0,
        numeric: 0.0,
    };
    for i in 0..param.len() {
        let orig = param[i];
        let a = f64::from(analytic[i]);
        let mut best = (f64::INFINITY, 0.0);
        for &eps in steps {
            param[i] = orig + eps;
            let lp = loss(param);
            param[i] = orig - eps;
            let lm = loss(param);
            let h = f64::from(orig + eps) - f64::from(orig - eps);
            let numeric = (lp - lm) / h;
            let err = (a - numeric).abs() / (floor + a.abs().max(numeric.abs()));
            if err < best.0 {
                best = (err, numeric);
            }
        }
        param[i] = orig;
        if best.0 > worst.max_err || !best.0.is_finite() {
            worst = GradReport {
                max_err: best.0,
                index: i,
                analytic: a,
                numeric: best.1,
            };
        }
    }
    if worst.max_err <= tol {
        Ok(worst)
    } else {
        Err(Error::input(format!(
            "{name}: element {} analytic {} vs numeric {} (error {:.2e} > {:.0e})",
            worst.index, worst.analytic, worst.numeric, worst.max_err, tol
        )))
    }
}

/// `Σ r_i y_i` in f64: the scalar a gradient check differentiates (random `r` makes every
/// output's gradient matter).
pub fn weighted_sum(r: &[f32], y: &[f32]) -> f64 {
    r.iter()
        .zip(y)
        .map(|(a, b)| f64::from(*a) * f64::from(*b))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catches_a_wrong_gradient_and_accepts_a_right_one() {
        // L = Σ p_i³  →  ∂L/∂p_i = 3 p_i²
        let mut p = vec![0.5f32, -1.0, 2.0];
        let good: Vec<f32> = p.iter().map(|v| 3.0 * v * v).collect();
        let loss = |p: &[f32]| p.iter().map(|&v| f64::from(v).powi(3)).sum::<f64>();
        assert!(check_grad("cube", &mut p, &good, loss, GradCheck::default()).is_ok());
        let mut bad = good.clone();
        bad[1] *= 1.1;
        let e = check_grad("cube", &mut p, &bad, loss, GradCheck::default()).unwrap_err();
        assert!(e.to_string().contains("element 1"), "{e}");
        assert_eq!(p, vec![0.5, -1.0, 2.0], "parameters restored");
    }
}
