//! A minimal portable-SIMD layer: the [`Simd`] trait over one f32 vector type, implemented
//! for AVX2 (`x86_64/avx2.rs`) and NEON (`aarch64/neon.rs`), and kernel bodies written once
//! against it. Bodies are `#[inline(always)]` so each is compiled inside a per-ISA
//! `#[target_feature]` wrapper with that ISA's instructions. Tails shorter than one vector
//! use the same formula in scalar code.
//!
//! `exp` here is a Cephes-style polynomial (≈ 2 ulp on [-87.3, 88]); inputs below −87.3
//! give 0 (instead of a subnormal), inputs above 88 saturate at e^88, NaN stays NaN.

#![allow(clippy::missing_safety_doc)]

/// One f32 vector type and the operations the kernels need. Every method requires the
/// instruction set of its implementation (the caller's `#[target_feature]`).
pub(crate) trait Simd {
    const LANES: usize;
    type V: Copy;
    unsafe fn splat(x: f32) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn div(a: Self::V, b: Self::V) -> Self::V;
    /// `a * b + c`
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn min(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn abs(a: Self::V) -> Self::V;
    /// Copy the sign of `s` onto `a` (which is non-negative).
    unsafe fn with_sign_of(a: Self::V, s: Self::V) -> Self::V;
    /// `v` where `x` is not below `limit` (or is NaN), 0 elsewhere.
    unsafe fn zero_below(v: Self::V, x: Self::V, limit: f32) -> Self::V;
    /// Round to nearest integer (as float).
    unsafe fn round(a: Self::V) -> Self::V;
    /// `2^n` for integral `n` in [-126, 127].
    unsafe fn pow2i(n: Self::V) -> Self::V;
    unsafe fn hsum(a: Self::V) -> f32;
    unsafe fn hmax(a: Self::V) -> f32;
}

// ---- scalar formulas shared by the SIMD tails and (through `libm`) the references

#[inline(always)]
pub(crate) fn exp_scalar(x: f32) -> f32 {
    libm::expf(x)
}

// ---- vector math

const LOG2E: f32 = core::f32::consts::LOG2_E;
const EXP_C1: f32 = 0.693_359_4;
const EXP_C2: f32 = -2.121_944_4e-4;
const EXP_P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

/// e^x, lane-wise.
#[inline(always)]
pub(crate) unsafe fn exp<S: Simd>(x: S::V) -> S::V {
    // SAFETY: the caller's target features cover every S method.
    unsafe {
        // Operand order matters on x86: maxps/minps return the *second* operand when either
        // is NaN, so NaN inputs propagate.
        let xin = x;
        let x = S::min(S::splat(88.0), S::max(S::splat(-87.336_54), x));
        let n = S::round(S::mul(x, S::splat(LOG2E)));
        let r = S::fma(n, S::splat(-EXP_C1), x);
        let r = S::fma(n, S::splat(-EXP_C2), r);
        let mut p = S::splat(EXP_P[0]);
        for &c in &EXP_P[1..] {
            p = S::fma(p, r, S::splat(c));
        }
        let r2 = S::mul(r, r);
        let y = S::add(S::fma(p, r2, r), S::splat(1.0));
        // Below the range e^x is < 2^-126: flush to 0 (exact zeros for masked logits).
        S::zero_below(S::mul(y, S::pow2i(n)), xin, -87.336_54)
    }
}

/// erf(x), lane-wise (Abramowitz & Stegun 7.1.26, |error| <= 1.5e-7).
#[inline(always)]
unsafe fn erf<S: Simd>(x: S::V) -> S::V {
    // SAFETY: the caller's target features cover every S method.
    unsafe {
        let a = S::abs(x);
        let t = S::div(
            S::splat(1.0),
            S::fma(a, S::splat(0.327_591_1), S::splat(1.0)),
        );
        let mut p = S::splat(1.061_405_4);
        for c in [-1.453_152_1, 1.421_413_8, -0.284_496_72, 0.254_829_6] {
            p = S::fma(p, t, S::splat(c));
        }
        let e = exp::<S>(S::sub(S::splat(0.0), S::mul(a, a)));
        let y = S::sub(S::splat(1.0), S::mul(S::mul(p, t), e));
        S::with_sign_of(y, x)
    }
}

/// Apply `f` to every element of `x` in place, vector by vector, `g` on the tail.
#[inline(always)]
unsafe fn map<S: Simd>(x: &mut [f32], f: impl Fn(S::V) -> S::V, g: impl Fn(f32) -> f32) {
    let n = x.len();
    let p = x.as_mut_ptr();
    let mut i = 0;
    // SAFETY: i + LANES <= n for every vector access; features are the caller's.
    unsafe {
        while i + S::LANES <= n {
            S::store(p.add(i), f(S::load(p.add(i))));
            i += S::LANES;
        }
    }
    for v in &mut x[i..] {
        *v = g(*v);
    }
}

#[inline(always)]
pub(crate) unsafe fn silu<S: Simd>(x: &mut [f32]) {
    // SAFETY: features are the caller's.
    unsafe {
        map::<S>(
            x,
            |v| S::div(v, S::add(S::splat(1.0), exp::<S>(S::sub(S::splat(0.0), v)))),
            super::elementwise::silu1,
        )
    }
}

#[inline(always)]
pub(crate) unsafe fn relu2<S: Simd>(x: &mut [f32]) {
    // SAFETY: features are the caller's.
    unsafe {
        map::<S>(
            x,
            |v| {
                let r = S::max(v, S::splat(0.0));
                S::mul(r, r)
            },
            super::elementwise::relu2_1,
        )
    }
}

#[inline(always)]
pub(crate) unsafe fn gelu<S: Simd>(x: &mut [f32]) {
    // SAFETY: features are the caller's.
    unsafe {
        map::<S>(
            x,
            |v| {
                let e = erf::<S>(S::mul(v, S::splat(core::f32::consts::FRAC_1_SQRT_2)));
                S::mul(S::mul(S::splat(0.5), v), S::add(S::splat(1.0), e))
            },
            super::elementwise::gelu1,
        )
    }
}

/// `du += dy · GELU'(u)` with `GELU'(u) = Φ(u) + u·φ(u)`; equal lengths (the caller's).
#[inline(always)]
pub(crate) unsafe fn gelu_backward<S: Simd>(dy: &[f32], u: &[f32], du: &mut [f32]) {
    let n = du.len();
    debug_assert!(dy.len() == n && u.len() == n);
    let (pd, pu, pg) = (dy.as_ptr(), u.as_ptr(), du.as_mut_ptr());
    let mut i = 0;
    // SAFETY: i + LANES <= n for every vector access; features are the caller's.
    unsafe {
        while i + S::LANES <= n {
            let x = S::load(pu.add(i));
            let e = erf::<S>(S::mul(x, S::splat(core::f32::consts::FRAC_1_SQRT_2)));
            let cdf = S::mul(S::splat(0.5), S::add(S::splat(1.0), e));
            let xx = S::mul(x, x);
            let pdf = S::mul(exp::<S>(S::mul(S::splat(-0.5), xx)), S::splat(0.398_942_3));
            let g = S::fma(x, pdf, cdf);
            S::store(pg.add(i), S::fma(S::load(pd.add(i)), g, S::load(pg.add(i))));
            i += S::LANES;
        }
    }
    for j in i..n {
        du[j] += dy[j] * super::elementwise::gelu_grad1(u[j]);
    }
}

#[inline(always)]
pub(crate) unsafe fn gelu_tanh<S: Simd>(x: &mut [f32]) {
    // 0.5 x (1 + tanh(u)) = x · σ(2u) = x / (1 + e^{-2u}),  u = √(2/π)(x + 0.044715 x³)
    // SAFETY: features are the caller's.
    unsafe {
        map::<S>(
            x,
            |v| {
                let v3 = S::mul(S::mul(v, v), v);
                let u = S::mul(
                    S::fma(v3, S::splat(0.044_715), v),
                    S::splat(super::elementwise::SQRT_2_OVER_PI),
                );
                let e = exp::<S>(S::mul(u, S::splat(-2.0)));
                S::div(v, S::add(S::splat(1.0), e))
            },
            super::elementwise::gelu_tanh1,
        )
    }
}

/// Σ x and Σ x² of a row (vector accumulators, then the tail).
#[inline(always)]
unsafe fn sum_sumsq<S: Simd>(x: &[f32]) -> (f32, f32) {
    let n = x.len();
    let p = x.as_ptr();
    let mut i = 0;
    // SAFETY: i + LANES <= n for every vector access; features are the caller's.
    let (mut s, mut q) = unsafe {
        let (mut s, mut q) = (S::splat(0.0), S::splat(0.0));
        while i + S::LANES <= n {
            let v = S::load(p.add(i));
            s = S::add(s, v);
            q = S::fma(v, v, q);
            i += S::LANES;
        }
        (S::hsum(s), S::hsum(q))
    };
    for &v in &x[i..] {
        s += v;
        q += v * v;
    }
    (s, q)
}

/// `out = (x - shift) * scale * gamma + beta` (gamma/beta optional).
#[inline(always)]
unsafe fn affine<S: Simd>(
    x: &[f32],
    shift: f32,
    scale: f32,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    out: &mut [f32],
) {
    let n = x.len();
    let (xp, op) = (x.as_ptr(), out.as_mut_ptr());
    let mut i = 0;
    // SAFETY: x, out, gamma and beta all have length n (checked by the public entry);
    // i + LANES <= n for every vector access; features are the caller's.
    unsafe {
        let (sh, sc) = (S::splat(shift), S::splat(scale));
        while i + S::LANES <= n {
            let mut v = S::mul(S::sub(S::load(xp.add(i)), sh), sc);
            if let Some(g) = gamma {
                v = S::mul(v, S::load(g.as_ptr().add(i)));
            }
            if let Some(b) = beta {
                v = S::add(v, S::load(b.as_ptr().add(i)));
            }
            S::store(op.add(i), v);
            i += S::LANES;
        }
    }
    for j in i..n {
        let mut v = (x[j] - shift) * scale;
        if let Some(g) = gamma {
            v *= g[j];
        }
        if let Some(b) = beta {
            v += b[j];
        }
        out[j] = v;
    }
}

/// LayerNorm of one row; returns (mean, 1/std). Two passes: the variance is computed
/// around the mean (stable), not as E[x²] − E[x]².
#[inline(always)]
pub(crate) unsafe fn layer_norm<S: Simd>(
    x: &[f32],
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    eps: f32,
    out: &mut [f32],
) -> (f32, f32) {
    let n = x.len() as f32;
    // SAFETY: features are the caller's; lengths checked by the public entry.
    unsafe {
        let mean = sum_sumsq::<S>(x).0 / n;
        // centred second pass, written into `out` as scratch
        affine::<S>(x, mean, 1.0, None, None, out);
        let var = sum_sumsq::<S>(out).1 / n;
        let rstd = 1.0 / libm::sqrtf(var + eps);
        affine::<S>(x, mean, rstd, gamma, beta, out);
        (mean, rstd)
    }
}

/// RMSNorm of one row; returns 1/rms.
#[inline(always)]
pub(crate) unsafe fn rms_norm<S: Simd>(
    x: &[f32],
    gamma: Option<&[f32]>,
    eps: f32,
    out: &mut [f32],
) -> f32 {
    // SAFETY: features are the caller's; lengths checked by the public entry.
    unsafe {
        let ms = sum_sumsq::<S>(x).1 / x.len() as f32;
        let r = 1.0 / libm::sqrtf(ms + eps);
        affine::<S>(x, 0.0, r, gamma, None, out);
        r
    }
}

/// Maximum of a non-empty row.
#[inline(always)]
unsafe fn row_max<S: Simd>(x: &[f32]) -> f32 {
    let n = x.len();
    let mut i = 0;
    let mut m = f32::NEG_INFINITY;
    // SAFETY: i + LANES <= n; features are the caller's.
    unsafe {
        if n >= S::LANES {
            let mut v = S::load(x.as_ptr());
            i = S::LANES;
            while i + S::LANES <= n {
                v = S::max(v, S::load(x.as_ptr().add(i)));
                i += S::LANES;
            }
            m = S::hmax(v);
        }
    }
    for &v in &x[i..] {
        m = m.max(v);
    }
    m
}

/// In place `x <- exp(x - m)`; returns the sum.
#[inline(always)]
unsafe fn exp_shift_sum<S: Simd>(x: &mut [f32], m: f32) -> f32 {
    let n = x.len();
    let p = x.as_mut_ptr();
    let mut i = 0;
    // SAFETY: i + LANES <= n; features are the caller's.
    let mut s = unsafe {
        let mut acc = S::splat(0.0);
        let mv = S::splat(m);
        while i + S::LANES <= n {
            let e = exp::<S>(S::sub(S::load(p.add(i)), mv));
            S::store(p.add(i), e);
            acc = S::add(acc, e);
            i += S::LANES;
        }
        S::hsum(acc)
    };
    for v in &mut x[i..] {
        *v = exp_scalar(*v - m);
        s += *v;
    }
    s
}

#[inline(always)]
pub(crate) unsafe fn softmax<S: Simd>(x: &mut [f32]) {
    // SAFETY: features are the caller's.
    unsafe {
        let m = row_max::<S>(x);
        let s = exp_shift_sum::<S>(x, m);
        let inv = 1.0 / s;
        map::<S>(x, |v| S::mul(v, S::splat(inv)), |v| v * inv);
    }
}

#[inline(always)]
pub(crate) unsafe fn log_softmax<S: Simd>(x: &mut [f32]) {
    // SAFETY: features are the caller's.
    unsafe {
        let m = row_max::<S>(x);
        // Σ exp(x − m) without overwriting x: a second pass over a copy-free reduction.
        let n = x.len();
        let p = x.as_ptr();
        let mut i = 0;
        let mut acc = S::splat(0.0);
        let mv = S::splat(m);
        while i + S::LANES <= n {
            acc = S::add(acc, exp::<S>(S::sub(S::load(p.add(i)), mv)));
            i += S::LANES;
        }
        let mut s = S::hsum(acc);
        for &v in &x[i..] {
            s += exp_scalar(v - m);
        }
        let lse = m + libm::logf(s);
        map::<S>(x, |v| S::sub(v, S::splat(lse)), |v| v - lse);
    }
}

/// Per-ISA entry points for the generic bodies above: `simd_wrappers!(Type, "features")`
/// defines `silu`, `relu2`, `gelu`, `gelu_backward`, `gelu_tanh`, `layer_norm`, `rms_norm`,
/// `softmax`, `ema_scan` and `log_softmax` compiled with those features.
macro_rules! simd_wrappers {
    ($S:ty, $feat:literal) => {
        /// Elementwise kernels compiled for this ISA. Safety: the ISA must be supported.
        pub(crate) mod ew {
            #![allow(clippy::missing_safety_doc)]
            use super::*;
            use crate::kernels::simd as g;
            #[target_feature(enable = $feat)]
            pub(crate) unsafe fn silu(x: &mut [f32]) {
                // SAFETY: the caller guarantees the features this fn enables.
                unsafe { g::silu::<$S>(x) }
            }
            #[target_feature(enable = $feat)]
            pub(crate) unsafe fn relu2(x: &mut [f32]) {
                // SAFETY: as above.
                unsafe { g::relu2::<$S>(x) }
            }
            #[target_feature(enable = $feat)]
            pub(crate) unsafe fn gelu(x: &mut [f32]) {
                // SAFETY: as above.
                unsafe { g::gelu::<$S>(x) }
            }
            #[target_feature(enable = $feat)]
            pub(crate) unsafe fn gelu_backward(dy: &[f32], u: &[f32], du: &mut [f32]) {
                // SAFETY: as above; lengths checked by the public entry.
                unsafe { g::gelu_backward::<$S>(dy, u, du) }
            }
            #[target_feature(enable = $feat)]
            pub(crate) unsafe fn gelu_tanh(x: &mut [f32]) {
                // SAFETY: as above.
                unsafe { g::gelu_tanh::<$S>(x) }
            }
            #[target_feature(enable = $feat)]
            pub(crate) unsafe fn layer_norm(
                x: &[f32],
                gamma: Option<&[f32]>,
                beta: Option<&[f32]>,
                eps: f32,
                out: &mut [f32],
            ) -> (f32, f32) {
                // SAFETY: as above; lengths checked by the public entry.
                unsafe { g::layer_norm::<$S>(x, gamma, beta, eps, out) }
            }
            #[target_feature(enable = $feat)]
            pub(crate) unsafe fn rms_norm(
                x: &[f32],
                gamma: Option<&[f32]>,
                eps: f32,
                out: &mut [f32],
            ) -> f32 {
                // SAFETY: as above; lengths checked by the public entry.
                unsafe { g::rms_norm::<$S>(x, gamma, eps, out) }
            }
            #[target_feature(enable = $feat)]
            pub(crate) unsafe fn softmax(x: &mut [f32]) {
                // SAFETY: as above.
                unsafe { g::softmax::<$S>(x) }
            }
            #[target_feature(enable = $feat)]
            #[allow(clippy::too_many_arguments)]
            pub(crate) unsafe fn ema_scan(
                x: Option<&[f32]>,
                l: usize,
                d: usize,
                nn: usize,
                alpha: &[f32],
                q: &[f32],
                c: &[f32],
                state: &mut [f32],
                y: &mut [f32],
                reverse: bool,
                accumulate: bool,
            ) {
                // SAFETY: as above; lengths checked by the public entry.
                unsafe {
                    g::ema_scan::<$S>(x, l, d, nn, alpha, q, c, state, y, reverse, accumulate)
                }
            }
            #[target_feature(enable = $feat)]
            pub(crate) unsafe fn log_softmax(x: &mut [f32]) {
                // SAFETY: as above.
                unsafe { g::log_softmax::<$S>(x) }
            }
        }
    };
}
pub(crate) use simd_wrappers;

/// Damped-EMA scan over `l` steps (see `ema.rs`): for each step t (forward or reverse),
/// `h[n][j] = q[n][j]·h[n][j] + α[n][j]·x[t][j]` and `y[t][j] (+)= Σ_n c[n][j]·h[n][j]`.
/// `x = None` means zero input. Vectorised across channels j.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn ema_scan<S: Simd>(
    x: Option<&[f32]>,
    l: usize,
    d: usize,
    nn: usize,
    alpha: &[f32],
    q: &[f32],
    c: &[f32],
    state: &mut [f32],
    y: &mut [f32],
    reverse: bool,
    accumulate: bool,
) {
    let vec_end = d - d % S::LANES;
    for step in 0..l {
        let t = if reverse { l - 1 - step } else { step };
        let yt = &mut y[t * d..(t + 1) * d];
        if !accumulate {
            yt.fill(0.0);
        }
        let xt = x.map(|x| &x[t * d..(t + 1) * d]);
        for n in 0..nn {
            let o = n * d;
            // SAFETY: j + LANES <= d for vector accesses; every array holds nn*d (state,
            // coefficients) or d (x row, y row) elements (checked by the public entry);
            // features are the caller's.
            unsafe {
                let mut j = 0;
                while j < vec_end {
                    let hp = state.as_mut_ptr().add(o + j);
                    let mut h = S::mul(S::load(q.as_ptr().add(o + j)), S::load(hp));
                    if let Some(xt) = xt {
                        h = S::fma(
                            S::load(alpha.as_ptr().add(o + j)),
                            S::load(xt.as_ptr().add(j)),
                            h,
                        );
                    }
                    S::store(hp, h);
                    let yp = yt.as_mut_ptr().add(j);
                    S::store(yp, S::fma(S::load(c.as_ptr().add(o + j)), h, S::load(yp)));
                    j += S::LANES;
                }
            }
            for j in vec_end..d {
                let mut h = q[o + j] * state[o + j];
                if let Some(xt) = xt {
                    h += alpha[o + j] * xt[j];
                }
                state[o + j] = h;
                yt[j] += c[o + j] * h;
            }
        }
    }
}
