//! The losses of m2mKD (spec section 4): soft cross-entropy with label smoothing, the
//! temperature-scaled KL divergence to a teacher's logits (normalised per logit as the
//! released code does, or per row), and the hidden-state MSE. Each returns its value and
//! *adds* its weighted gradient to the caller's buffer.

use crate::layers::loss::IGNORE;
use modula_core::Error;

/// How the KL sum is normalised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KlNorm {
    /// Divided by rows × classes (the released code, inherited from DeiT).
    PerLogit,
    /// Divided by rows (the batch mean).
    PerRow,
}

impl KlNorm {
    /// Parse `logit` or `row`.
    pub fn parse(s: &str) -> Result<Self, Error> {
        match s {
            "logit" => Ok(KlNorm::PerLogit),
            "row" => Ok(KlNorm::PerRow),
            _ => Err(Error::input(format!(
                "unknown KL normalisation '{s}' (logit | row)"
            ))),
        }
    }
    /// Name for files and logs.
    pub fn name(self) -> &'static str {
        match self {
            KlNorm::PerLogit => "logit",
            KlNorm::PerRow => "row",
        }
    }
}

fn softmax_row(z: &[f32], tau: f32, out: &mut [f64]) {
    let m = z.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
    let mut s = 0.0f64;
    for (o, &v) in out.iter_mut().zip(z) {
        *o = f64::from((v - m) / tau).exp();
        s += *o;
    }
    out.iter_mut().for_each(|o| *o /= s);
}

fn check(logits: &[f32], c: usize, targets: &[u32]) -> Result<usize, Error> {
    if c == 0 || logits.len() != targets.len() * c {
        return Err(Error::input(format!(
            "{} logits do not make {} rows of {c}",
            logits.len(),
            targets.len()
        )));
    }
    if let Some(i) = logits.iter().position(|v| !v.is_finite()) {
        return Err(Error::input(format!("logit {i} is {}", logits[i])));
    }
    if let Some(&t) = targets.iter().find(|&&t| t != IGNORE && t as usize >= c) {
        return Err(Error::input(format!("target {t} is outside 0..{c}")));
    }
    let rows = targets.iter().filter(|&&t| t != IGNORE).count();
    if rows == 0 {
        return Err(Error::input("no targets"));
    }
    Ok(rows)
}

/// Mean cross-entropy of `logits: [rows, c]` against `targets` smoothed by `eps`
/// (`q = (1 − eps)·onehot + eps/c`; rows with [`IGNORE`] skipped). Adds
/// `weight·(p − q)/rows` to `dlogits`.
pub fn soft_ce(
    logits: &[f32],
    targets: &[u32],
    c: usize,
    eps: f32,
    weight: f32,
    dlogits: &mut [f32],
) -> Result<f64, Error> {
    let rows = check(logits, c, targets)?;
    let mut p = vec![0f64; c];
    let mut loss = 0.0f64;
    let (eps, w) = (f64::from(eps), f64::from(weight) / rows as f64);
    for (r, &t) in targets.iter().enumerate() {
        if t == IGNORE {
            continue;
        }
        softmax_row(&logits[r * c..(r + 1) * c], 1.0, &mut p);
        for (j, (g, &pj)) in dlogits[r * c..(r + 1) * c].iter_mut().zip(&p).enumerate() {
            let q = eps / c as f64 + if j == t as usize { 1.0 - eps } else { 0.0 };
            loss -= q * pj.max(1e-300).ln();
            *g += (w * (pj - q)) as f32;
        }
    }
    Ok(loss / rows as f64)
}

/// `τ²/N · Σ p_T (log p_T − log p_S)` with `p = softmax(z/τ)` over the rows that have a
/// target (N = rows·c or rows, see [`KlNorm`]). Adds `weight·(τ/N)(p_S − p_T)` to
/// `dlogits` (the teacher gets no gradient).
#[allow(clippy::too_many_arguments)]
pub fn kd_kl(
    student: &[f32],
    teacher: &[f32],
    targets: &[u32],
    c: usize,
    tau: f32,
    norm: KlNorm,
    weight: f32,
    dlogits: &mut [f32],
) -> Result<f64, Error> {
    let rows = check(student, c, targets)?;
    check(teacher, c, targets)?;
    if tau.partial_cmp(&0.0) != Some(core::cmp::Ordering::Greater) || !tau.is_finite() {
        return Err(Error::input(format!("temperature {tau} must be positive")));
    }
    let nrm = match norm {
        KlNorm::PerLogit => (rows * c) as f64,
        KlNorm::PerRow => rows as f64,
    };
    let (mut ps, mut pt) = (vec![0f64; c], vec![0f64; c]);
    let tau64 = f64::from(tau);
    let mut kl = 0.0f64;
    for (r, &t) in targets.iter().enumerate() {
        if t == IGNORE {
            continue;
        }
        softmax_row(&student[r * c..(r + 1) * c], tau, &mut ps);
        softmax_row(&teacher[r * c..(r + 1) * c], tau, &mut pt);
        for (g, (&s, &q)) in dlogits[r * c..(r + 1) * c]
            .iter_mut()
            .zip(ps.iter().zip(&pt))
        {
            if q > 0.0 {
                kl += q * (q.ln() - s.max(1e-300).ln());
            }
            *g += (f64::from(weight) * tau64 / nrm * (s - q)) as f32;
        }
    }
    Ok(kl * tau64 * tau64 / nrm)
}

/// `mean((a − b)²)` over all elements; adds `weight·2(a − b)/numel` to `da`.
pub fn mse(a: &[f32], b: &[f32], weight: f32, da: &mut [f32]) -> Result<f64, Error> {
    if a.len() != b.len() || a.is_empty() || da.len() != a.len() {
        return Err(Error::input(format!(
            "MSE of {} and {} values",
            a.len(),
            b.len()
        )));
    }
    let n = a.len() as f64;
    let mut s = 0.0f64;
    for ((g, &x), &y) in da.iter_mut().zip(a).zip(b) {
        let e = f64::from(x - y);
        s += e * e;
        *g += (f64::from(weight) * 2.0 * e / n) as f32;
    }
    Ok(s / n)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::gradcheck::{check_grad, GradCheck};
    use crate::layers::rand_vec;

    #[test]
    fn gradients_match_finite_differences() {
        let (rows, c) = (5, 7);
        let mut z: Vec<f32> = rand_vec(1, rows * c).iter().map(|v| 3.0 * v).collect();
        let zt: Vec<f32> = rand_vec(2, rows * c).iter().map(|v| 3.0 * v).collect();
        let targets = [1, IGNORE, 6, 0, 3];
        let cfg = GradCheck {
            tol: 2e-3,
            ..GradCheck::default()
        };
        for eps in [0.0, 0.1] {
            let mut g = vec![0f32; rows * c];
            soft_ce(&z, &targets, c, eps, 0.7, &mut g).unwrap();
            check_grad(
                "soft ce",
                &mut z,
                &g,
                |z| {
                    let mut s = vec![0f32; rows * c];
                    0.7 * soft_ce(z, &targets, c, eps, 1.0, &mut s).unwrap()
                },
                cfg,
            )
            .unwrap();
        }
        for norm in [KlNorm::PerLogit, KlNorm::PerRow] {
            for tau in [1.0, 4.0] {
                let mut g = vec![0f32; rows * c];
                kd_kl(&z, &zt, &targets, c, tau, norm, 0.5, &mut g).unwrap();
                check_grad(
                    "kd kl",
                    &mut z,
                    &g,
                    |z| {
                        let mut s = vec![0f32; rows * c];
                        0.5 * kd_kl(z, &zt, &targets, c, tau, norm, 1.0, &mut s).unwrap()
                    },
                    cfg,
                )
                .unwrap();
            }
        }
        let mut g = vec![0f32; rows * c];
        mse(&z, &zt, 0.3, &mut g).unwrap();
        check_grad(
            "mse",
            &mut z,
            &g,
            |z| {
                let mut s = vec![0f32; rows * c];
                0.3 * mse(z, &zt, 1.0, &mut s).unwrap()
            },
            cfg,
        )
        .unwrap();
    }

    #[test]
    fn kl_is_zero_for_identical_logits_and_normalisations_differ_by_c() {
        let z = rand_vec(3, 12);
        let t = [0u32, 1, 2];
        let mut g = vec![0f32; 12];
        assert!(
            kd_kl(&z, &z, &t, 4, 1.0, KlNorm::PerRow, 1.0, &mut g)
                .unwrap()
                .abs()
                < 1e-12
        );
        assert!(g.iter().all(|v| v.abs() < 1e-7));
        let zt = rand_vec(4, 12);
        let a = kd_kl(&z, &zt, &t, 4, 2.0, KlNorm::PerRow, 1.0, &mut g).unwrap();
        let b = kd_kl(&z, &zt, &t, 4, 2.0, KlNorm::PerLogit, 1.0, &mut g).unwrap();
        assert!(a > 0.0 && (a / b - 4.0).abs() < 1e-9);
        assert!(kd_kl(&z, &zt, &t, 4, 0.0, KlNorm::PerRow, 1.0, &mut g).is_err());
        let mut nan = z.clone();
        nan[3] = f32::NAN;
        assert!(soft_ce(&nan, &t, 4, 0.0, 1.0, &mut g).is_err());
        assert!(soft_ce(&z, &[0, 9, 1], 4, 0.0, 1.0, &mut g).is_err());
    }
}
