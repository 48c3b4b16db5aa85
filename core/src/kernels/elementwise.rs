//! Norms, activations and (log-)softmax over one row.
//!
//! Each op has a scalar reference (`libm` math, the test oracle) and SIMD variants written
//! once over the crate's `Simd` trait (`kernels::simd`). Activations work in place; norms write `out` and return
//! the statistics a backward pass needs (mean and 1/std, or 1/rms).

use super::isa::{self, Isa};
use super::{exactly, KernelError};

/// √(2/π), the constant of the tanh approximation of GELU.
pub const SQRT_2_OVER_PI: f32 = 0.797_884_6;

/// SiLU of one value: `x σ(x)`.
#[inline]
pub fn silu1(x: f32) -> f32 {
    x / (1.0 + libm::expf(-x))
}
/// Squared ReLU of one value.
#[inline]
pub fn relu2_1(x: f32) -> f32 {
    let r = x.max(0.0);
    r * r
}
/// Exact (erf) GELU of one value.
#[inline]
pub fn gelu1(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * core::f32::consts::FRAC_1_SQRT_2))
}
/// Derivative of the exact GELU at one value: `Φ(x) + x·φ(x)`.
#[inline]
pub fn gelu_grad1(x: f32) -> f32 {
    let cdf = 0.5 * (1.0 + libm::erff(x * core::f32::consts::FRAC_1_SQRT_2));
    let pdf = libm::expf(-0.5 * x * x) * 0.398_942_3;
    cdf + x * pdf
}

/// GELU backward, accumulating: `du[i] += dy[i] · GELU'(u[i])` (exact GELU; `u` is the
/// saved pre-activation). Lengths must match.
pub fn gelu_backward(dy: &[f32], u: &[f32], du: &mut [f32]) -> Result<(), KernelError> {
    gelu_backward_with(isa::active(), dy, u, du)
}

/// [`gelu_backward`] with an explicit SIMD level.
pub fn gelu_backward_with(
    isa: Isa,
    dy: &[f32],
    u: &[f32],
    du: &mut [f32],
) -> Result<(), KernelError> {
    exactly("gelu_backward", "dy length", du.len(), dy.len())?;
    exactly("gelu_backward", "u length", du.len(), u.len())?;
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the level is supported (guard); lengths checked above.
        Isa::Avx2 if isa.is_supported() => unsafe {
            super::x86_64::avx2::ew::gelu_backward(dy, u, du)
        },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON is supported (guard); lengths checked above.
        Isa::Neon if isa.is_supported() => unsafe {
            super::aarch64::neon::ew::gelu_backward(dy, u, du)
        },
        _ => {
            for ((g, &d), &x) in du.iter_mut().zip(dy).zip(u) {
                *g += d * gelu_grad1(x);
            }
        }
    }
    Ok(())
}

/// Tanh-approximated GELU (`gelu_new`) of one value.
#[inline]
pub fn gelu_tanh1(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::tanhf(SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)))
}

macro_rules! activation {
    ($(#[$doc:meta])* $name:ident, $with:ident, $one:ident) => {
        $(#[$doc])*
        pub fn $name(x: &mut [f32]) {
            $with(isa::active(), x)
        }
        #[doc = concat!("[`", stringify!($name), "`] with an explicit SIMD level.")]
        pub fn $with(isa: Isa, x: &mut [f32]) {
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the level is supported (checked in the guard).
                Isa::Avx2 if isa.is_supported() => unsafe { super::x86_64::avx2::ew::$name(x) },
                #[cfg(target_arch = "aarch64")]
                // SAFETY: NEON is supported (checked in the guard).
                Isa::Neon if isa.is_supported() => unsafe { super::aarch64::neon::ew::$name(x) },
                _ => x.iter_mut().for_each(|v| *v = $one(*v)),
            }
        }
    };
}

activation!(
    /// SiLU in place: `x ← x σ(x)`.
    silu, silu_with, silu1
);
activation!(
    /// Squared ReLU in place: `x ← max(x, 0)²`.
    relu2, relu2_with, relu2_1
);
activation!(
    /// Exact GELU in place: `x ← x Φ(x)` (erf form; SIMD erf has |error| ≤ 1.5e-7).
    gelu, gelu_with, gelu1
);
activation!(
    /// Tanh-approximated GELU in place (`gelu_new`, ModuleFormer's expert activation).
    gelu_tanh, gelu_tanh_with, gelu_tanh1
);

fn check_norm(
    kernel: &'static str,
    x: &[f32],
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    out: &[f32],
) -> Result<(), KernelError> {
    exactly(kernel, "out length", x.len(), out.len())?;
    if let Some(g) = gamma {
        exactly(kernel, "gamma length", x.len(), g.len())?;
    }
    if let Some(b) = beta {
        exactly(kernel, "beta length", x.len(), b.len())?;
    }
    if x.is_empty() {
        return Err(KernelError {
            kernel,
            what: "row length (> 0)",
            expected: 1,
            got: 0,
        });
    }
    Ok(())
}

/// LayerNorm of one row `x` into `out`: `(x − mean)/√(var + eps) · gamma + beta`.
/// Returns `(mean, 1/√(var + eps))` for the backward pass.
pub fn layer_norm(
    x: &[f32],
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    eps: f32,
    out: &mut [f32],
) -> Result<(f32, f32), KernelError> {
    layer_norm_with(isa::active(), x, gamma, beta, eps, out)
}

/// [`layer_norm`] with an explicit SIMD level.
pub fn layer_norm_with(
    isa: Isa,
    x: &[f32],
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    eps: f32,
    out: &mut [f32],
) -> Result<(f32, f32), KernelError> {
    check_norm("layer_norm", x, gamma, beta, out)?;
    Ok(match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: supported level (guard); lengths checked above.
        Isa::Avx2 if isa.is_supported() => unsafe {
            super::x86_64::avx2::ew::layer_norm(x, gamma, beta, eps, out)
        },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: supported level (guard); lengths checked above.
        Isa::Neon if isa.is_supported() => unsafe {
            super::aarch64::neon::ew::layer_norm(x, gamma, beta, eps, out)
        },
        _ => layer_norm_scalar(x, gamma, beta, eps, out),
    })
}

/// Scalar reference of [`layer_norm`] (two passes, f32).
pub fn layer_norm_scalar(
    x: &[f32],
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    eps: f32,
    out: &mut [f32],
) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let rstd = 1.0 / libm::sqrtf(var + eps);
    for (i, o) in out.iter_mut().enumerate() {
        *o = (x[i] - mean) * rstd * gamma.map_or(1.0, |g| g[i]) + beta.map_or(0.0, |b| b[i]);
    }
    (mean, rstd)
}

/// RMSNorm of one row: `x / √(mean(x²) + eps) · gamma`. Returns `1/√(mean(x²) + eps)`.
pub fn rms_norm(
    x: &[f32],
    gamma: Option<&[f32]>,
    eps: f32,
    out: &mut [f32],
) -> Result<f32, KernelError> {
    rms_norm_with(isa::active(), x, gamma, eps, out)
}

/// [`rms_norm`] with an explicit SIMD level.
pub fn rms_norm_with(
    isa: Isa,
    x: &[f32],
    gamma: Option<&[f32]>,
    eps: f32,
    out: &mut [f32],
) -> Result<f32, KernelError> {
    check_norm("rms_norm", x, gamma, None, out)?;
    Ok(match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: supported level (guard); lengths checked above.
        Isa::Avx2 if isa.is_supported() => unsafe {
            super::x86_64::avx2::ew::rms_norm(x, gamma, eps, out)
        },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: supported level (guard); lengths checked above.
        Isa::Neon if isa.is_supported() => unsafe {
            super::aarch64::neon::ew::rms_norm(x, gamma, eps, out)
        },
        _ => rms_norm_scalar(x, gamma, eps, out),
    })
}

/// Scalar reference of [`rms_norm`].
pub fn rms_norm_scalar(x: &[f32], gamma: Option<&[f32]>, eps: f32, out: &mut [f32]) -> f32 {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let r = 1.0 / libm::sqrtf(ms + eps);
    for (i, o) in out.iter_mut().enumerate() {
        *o = x[i] * r * gamma.map_or(1.0, |g| g[i]);
    }
    r
}

/// Softmax of one row in place (max-shifted). An empty row is left as is.
pub fn softmax(x: &mut [f32]) {
    softmax_with(isa::active(), x)
}

/// [`softmax`] with an explicit SIMD level.
pub fn softmax_with(isa: Isa, x: &mut [f32]) {
    if x.is_empty() {
        return;
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: supported level (guard).
        Isa::Avx2 if isa.is_supported() => unsafe { super::x86_64::avx2::ew::softmax(x) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: supported level (guard).
        Isa::Neon if isa.is_supported() => unsafe { super::aarch64::neon::ew::softmax(x) },
        _ => softmax_scalar(x),
    }
}

/// Scalar reference of [`softmax`].
pub fn softmax_scalar(x: &mut [f32]) {
    let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let mut s = 0.0;
    for v in x.iter_mut() {
        *v = libm::expf(*v - m);
        s += *v;
    }
    let inv = 1.0 / s;
    x.iter_mut().for_each(|v| *v *= inv);
}

/// Log-softmax of one row in place. An empty row is left as is.
pub fn log_softmax(x: &mut [f32]) {
    log_softmax_with(isa::active(), x)
}

/// [`log_softmax`] with an explicit SIMD level.
pub fn log_softmax_with(isa: Isa, x: &mut [f32]) {
    if x.is_empty() {
        return;
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: supported level (guard).
        Isa::Avx2 if isa.is_supported() => unsafe { super::x86_64::avx2::ew::log_softmax(x) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: supported level (guard).
        Isa::Neon if isa.is_supported() => unsafe { super::aarch64::neon::ew::log_softmax(x) },
        _ => log_softmax_scalar(x),
    }
}

/// Scalar reference of [`log_softmax`].
pub fn log_softmax_scalar(x: &mut [f32]) {
    let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let s: f32 = x.iter().map(|v| libm::expf(v - m)).sum();
    let lse = m + libm::logf(s);
    x.iter_mut().for_each(|v| *v -= lse);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::kernels::isa::available;
    use crate::kernels::testutil::{assert_close, rand_vec};
    use alloc::vec;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    fn scaled(seed: u64, n: usize, scale: f32) -> Vec<f32> {
        rand_vec(seed, n).into_iter().map(|v| v * scale).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(150))]
        #[test]
        fn activations_match_reference(n in 0usize..80, seed in any::<u64>(), scale in prop_oneof![Just(0.01f32), Just(1.0), Just(8.0), Just(80.0)]) {
            let x = scaled(seed, n, scale);
            type Op = (&'static str, fn(Isa, &mut [f32]), fn(f32) -> f32);
            let ops: [Op; 4] = [
                ("silu", silu_with, silu1),
                ("relu2", relu2_with, relu2_1),
                ("gelu", gelu_with, gelu1),
                ("gelu_tanh", gelu_tanh_with, gelu_tanh1),
            ];
            for (name, f, one) in ops {
                let want: Vec<f32> = x.iter().map(|&v| one(v)).collect();
                for isa in available() {
                    let mut got = x.clone();
                    f(isa, &mut got);
                    // polynomial exp (~2 ulp) and erf (1.5e-7 absolute) vs libm
                    assert_close(name, &got, &want, |i| 4e-6 * want[i].abs() + 3e-7 * x[i].abs().max(1.0));
                }
            }
        }

        #[test]
        fn gelu_backward_matches_reference(n in 0usize..80, seed in any::<u64>(), scale in prop_oneof![Just(0.01f32), Just(1.0), Just(8.0)]) {
            let u = scaled(seed, n, scale);
            let dy = rand_vec(seed ^ 7, n);
            let du0 = rand_vec(seed ^ 9, n);
            let want: Vec<f32> = (0..n).map(|i| du0[i] + dy[i] * gelu_grad1(u[i])).collect();
            for isa in available() {
                let mut got = du0.clone();
                gelu_backward_with(isa, &dy, &u, &mut got).unwrap();
                assert_close(isa.name(), &got, &want, |i| 4e-6 * want[i].abs() + 4e-7 * (1.0 + dy[i].abs() * u[i].abs()));
            }
            prop_assert!(gelu_backward(&dy, &u, &mut vec![0f32; n + 1]).is_err());
        }

        #[test]
        fn norms_match_reference(n in 1usize..80, seed in any::<u64>(), offset in -100.0f32..100.0, affine in any::<bool>()) {
            let x: Vec<f32> = rand_vec(seed, n).into_iter().map(|v| v + offset).collect();
            let g = rand_vec(seed ^ 1, n);
            let b = rand_vec(seed ^ 2, n);
            let (gamma, beta) = if affine { (Some(g.as_slice()), Some(b.as_slice())) } else { (None, None) };
            let mut want = vec![0f32; n];
            let (m0, r0) = layer_norm_scalar(&x, gamma, beta, 1e-5, &mut want);
            let mut want_rms = vec![0f32; n];
            let q0 = rms_norm_scalar(&x, gamma, 1e-5, &mut want_rms);
            for isa in available() {
                let mut got = vec![0f32; n];
                let (m, r) = layer_norm_with(isa, &x, gamma, beta, 1e-5, &mut got).unwrap();
                prop_assert!((m - m0).abs() <= 1e-5 * m0.abs().max(1.0));
                prop_assert!((r - r0).abs() <= 1e-3 * r0);
                assert_close("layer_norm", &got, &want, |_| 2e-3);
                let q = rms_norm_with(isa, &x, gamma, 1e-5, &mut got).unwrap();
                prop_assert!((q - q0).abs() <= 1e-5 * q0);
                assert_close("rms_norm", &got, &want_rms, |i| 1e-5 * want_rms[i].abs().max(1.0));
            }
        }

        #[test]
        fn softmaxes_match_reference(n in 0usize..80, seed in any::<u64>(), scale in prop_oneof![Just(1.0f32), Just(30.0), Just(1000.0)]) {
            let x = scaled(seed, n, scale);
            let mut want = x.clone();
            softmax_scalar(&mut want);
            let mut want_l = x.clone();
            log_softmax_scalar(&mut want_l);
            if n == 0 { want.clear(); want_l.clear(); }
            for isa in available() {
                let mut got = x.clone();
                softmax_with(isa, &mut got);
                assert_close("softmax", &got, &want, |i| 1e-6 + 1e-5 * want[i]);
                if n > 0 {
                    prop_assert!((got.iter().sum::<f32>() - 1.0).abs() < 1e-5);
                }
                let mut got = x.clone();
                log_softmax_with(isa, &mut got);
                assert_close("log_softmax", &got, &want_l, |i| 1e-5 * want_l[i].abs().max(1.0));
            }
        }
    }

    #[test]
    fn norm_shape_errors() {
        let mut out = [0f32; 3];
        assert!(layer_norm(&[1.0, 2.0], None, None, 1e-5, &mut out).is_err());
        assert!(layer_norm(&[], None, None, 1e-5, &mut []).is_err());
        assert!(rms_norm(&[1.0; 3], Some(&[1.0; 2]), 1e-5, &mut out).is_err());
    }

    #[test]
    fn extreme_inputs_stay_finite() {
        for isa in available() {
            let mut x = vec![-1e4f32, -100.0, -88.0, 0.0, 88.0, 100.0, 1e4, 3.0, -3.0];
            silu_with(isa, &mut x);
            assert!(x.iter().all(|v| v.is_finite()), "{}: {x:?}", isa.name());
            assert!(x[0].abs() < 1e-30);
            assert!((x[6] - 1e4).abs() < 1.0);
            let mut x = vec![-1e4f32, 1e4, 0.0, 5.0, -5.0, 1e-8, 50.0, -50.0, 7.0];
            gelu_tanh_with(isa, &mut x);
            assert!(x.iter().all(|v| v.is_finite()), "{}: {x:?}", isa.name());
            let mut x = vec![1e30f32, -1e30, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
            softmax_with(isa, &mut x);
            assert!(
                (x[0] - 1.0).abs() < 1e-6 && x[1..].iter().all(|&v| v == 0.0),
                "{}: {x:?}",
                isa.name()
            );
            // NaN in, NaN out (no silent wrong answer), in the vector body and the tail
            for f in [silu_with, gelu_with, gelu_tanh_with] {
                let mut x = vec![1.0f32; 9];
                x[2] = f32::NAN;
                x[8] = f32::NAN;
                f(isa, &mut x);
                assert!(
                    x[2].is_nan() && x[8].is_nan() && x[0].is_finite(),
                    "{}: {x:?}",
                    isa.name()
                );
            }
        }
    }
}
