//! Multi-dimensional damped EMA (MEGA / SeqBoat's SSM), per channel `j` with `N` hidden
//! units:
//!
//! ```text
//! h_t[n,j] = α[n,j]·x_t[j] + q[n,j]·h_{t-1}[n,j],   y_t[j] = Σ_n c[n,j]·h_t[n,j]
//! α = σ(Δ̂)·β,   q = 1 − σ(Δ̂)·σ(Â),   c = η/√N
//! ```
//!
//! Forms that must agree (tests): the recurrent scan (streaming: one state per channel),
//! the chunked scan (independent chunks + carried state, by linearity), and the direct
//! convolution `y_t = Σ_{s≤t} K[t−s] x_s` with `K[ℓ] = Σ_n c α q^ℓ`. Bidirectional = a
//! forward scan with one parameter set plus a reverse scan with another (both include
//! `s = t`). The skip term `ω⊙x` belongs to the layer, not here.
//!
//! Layout: coefficients and state are `[N][d]` (n-major) so each step vectorises across
//! channels with no horizontal sums.

use super::isa::{self, Isa};
use super::{exactly, KernelError};
use alloc::vec;
use alloc::vec::Vec;

/// Precomputed EMA coefficients, `[N][d]`.
#[derive(Clone, Debug, PartialEq)]
pub struct EmaCoefs {
    d: usize,
    n: usize,
    alpha: Vec<f32>,
    q: Vec<f32>,
    c: Vec<f32>,
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + libm::expf(-x))
}

impl EmaCoefs {
    /// Heap bytes of the three coefficient tables.
    pub fn heap_bytes(&self) -> usize {
        (self.alpha.capacity() + self.q.capacity() + self.c.capacity())
            * core::mem::size_of::<f32>()
    }

    /// From the raw parameters as MEGA/SeqBoat store them, each `[d][N]` (channel-major):
    /// `Δ̂` (`delta`), `Â` (`alpha`), `β` (`beta`), `η` (`gamma` in their code).
    pub fn from_raw(
        d: usize,
        n: usize,
        delta: &[f32],
        a_hat: &[f32],
        beta: &[f32],
        eta: &[f32],
    ) -> Result<Self, KernelError> {
        for (what, v) in [
            ("delta", delta),
            ("alpha", a_hat),
            ("beta", beta),
            ("eta", eta),
        ] {
            exactly("EmaCoefs::from_raw", what, d * n, v.len())?;
        }
        let scale = 1.0 / libm::sqrtf(n as f32);
        let mut s = EmaCoefs {
            d,
            n,
            alpha: vec![0.0; d * n],
            q: vec![0.0; d * n],
            c: vec![0.0; d * n],
        };
        for j in 0..d {
            for k in 0..n {
                let (src, dst) = (j * n + k, k * d + j);
                let p = sigmoid(delta[src]);
                s.alpha[dst] = p * beta[src];
                s.q[dst] = 1.0 - p * sigmoid(a_hat[src]);
                s.c[dst] = eta[src] * scale;
            }
        }
        Ok(s)
    }

    /// From already-derived coefficients, each `[N][d]` (for tests and converters).
    pub fn from_parts(
        d: usize,
        n: usize,
        alpha: Vec<f32>,
        q: Vec<f32>,
        c: Vec<f32>,
    ) -> Result<Self, KernelError> {
        for (what, v) in [("alpha", &alpha), ("q", &q), ("c", &c)] {
            exactly("EmaCoefs::from_parts", what, d * n, v.len())?;
        }
        Ok(EmaCoefs { d, n, alpha, q, c })
    }

    /// Channels d.
    pub fn channels(&self) -> usize {
        self.d
    }
    /// Hidden units per channel N.
    pub fn expansion(&self) -> usize {
        self.n
    }
    /// Length of a state vector (`N·d`).
    pub fn state_len(&self) -> usize {
        self.n * self.d
    }

    /// The convolution kernel `K[j][ℓ] = Σ_n c α q^ℓ` for `ℓ < len`, as `[d][len]`.
    pub fn kernel(&self, len: usize) -> Vec<f32> {
        let mut k = vec![0f32; self.d * len];
        for n in 0..self.n {
            for j in 0..self.d {
                let i = n * self.d + j;
                let mut p = self.c[i] * self.alpha[i];
                for l in 0..len {
                    k[j * len + l] += p;
                    p *= self.q[i];
                }
            }
        }
        k
    }
}

#[allow(clippy::too_many_arguments)]
fn scan_dispatch(
    isa: Isa,
    co: &EmaCoefs,
    x: Option<&[f32]>,
    l: usize,
    state: &mut [f32],
    y: &mut [f32],
    reverse: bool,
    accumulate: bool,
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: supported level (guard); lengths checked by the callers.
        Isa::Avx2 if isa.is_supported() => unsafe {
            super::x86_64::avx2::ew::ema_scan(
                x, l, co.d, co.n, &co.alpha, &co.q, &co.c, state, y, reverse, accumulate,
            )
        },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: supported level (guard); lengths checked by the callers.
        Isa::Neon if isa.is_supported() => unsafe {
            super::aarch64::neon::ew::ema_scan(
                x, l, co.d, co.n, &co.alpha, &co.q, &co.c, state, y, reverse, accumulate,
            )
        },
        _ => ema_scan_scalar(co, x, l, state, y, reverse, accumulate),
    }
}

/// Scalar reference of the scan (same loop order as the SIMD variants).
pub fn ema_scan_scalar(
    co: &EmaCoefs,
    x: Option<&[f32]>,
    l: usize,
    state: &mut [f32],
    y: &mut [f32],
    reverse: bool,
    accumulate: bool,
) {
    let d = co.d;
    for step in 0..l {
        let t = if reverse { l - 1 - step } else { step };
        if !accumulate {
            y[t * d..(t + 1) * d].fill(0.0);
        }
        for n in 0..co.n {
            for j in 0..d {
                let i = n * d + j;
                let xin = x.map_or(0.0, |x| x[t * d + j]);
                state[i] = co.q[i] * state[i] + co.alpha[i] * xin;
                y[t * d + j] += co.c[i] * state[i];
            }
        }
    }
}

fn check(co: &EmaCoefs, x: &[f32], l: usize, state: &[f32], y: &[f32]) -> Result<(), KernelError> {
    exactly("ema", "x length (L*d)", l * co.d, x.len())?;
    exactly("ema", "y length (L*d)", l * co.d, y.len())?;
    exactly("ema", "state length (N*d)", co.state_len(), state.len())
}

/// Causal scan of `x: [L, d]` into `y: [L, d]` (overwritten), continuing from `state`
/// (`[N·d]`, updated in place: pass zeros to start; keep it to stream). One token at a time
/// is `L = 1`.
pub fn ema_scan(
    co: &EmaCoefs,
    x: &[f32],
    l: usize,
    state: &mut [f32],
    y: &mut [f32],
) -> Result<(), KernelError> {
    ema_scan_with(isa::active(), co, x, l, state, y)
}

/// [`ema_scan`] with an explicit SIMD level.
pub fn ema_scan_with(
    isa: Isa,
    co: &EmaCoefs,
    x: &[f32],
    l: usize,
    state: &mut [f32],
    y: &mut [f32],
) -> Result<(), KernelError> {
    check(co, x, l, state, y)?;
    scan_dispatch(isa, co, Some(x), l, state, y, false, false);
    Ok(())
}

/// Bidirectional EMA of a whole sequence: `y = scan_fwd(x; fwd) + scan_rev(x; bwd)`, both
/// from zero state (`y_t = Σ_{s≤t} K¹[t−s] x_s + Σ_{s≥t} K²[s−t] x_s`).
pub fn ema_bidirectional(
    fwd: &EmaCoefs,
    bwd: &EmaCoefs,
    x: &[f32],
    l: usize,
    y: &mut [f32],
) -> Result<(), KernelError> {
    ema_bidirectional_with(isa::active(), fwd, bwd, x, l, y)
}

/// [`ema_bidirectional`] with an explicit SIMD level.
pub fn ema_bidirectional_with(
    isa: Isa,
    fwd: &EmaCoefs,
    bwd: &EmaCoefs,
    x: &[f32],
    l: usize,
    y: &mut [f32],
) -> Result<(), KernelError> {
    exactly("ema_bidirectional", "backward channels", fwd.d, bwd.d)?;
    exactly("ema_bidirectional", "backward expansion", fwd.n, bwd.n)?;
    let mut state = vec![0f32; fwd.state_len()];
    check(fwd, x, l, &state, y)?;
    scan_dispatch(isa, fwd, Some(x), l, &mut state, y, false, false);
    state.fill(0.0);
    scan_dispatch(isa, bwd, Some(x), l, &mut state, y, true, true);
    Ok(())
}

/// The scan computed chunk by chunk: each chunk from zero state (independent, so chunks
/// could run on different cores), then the carried state's contribution `scan(0; carry)`
/// added, by linearity of the recurrence. `reverse` scans from the end (the backward half of
/// a bidirectional EMA), carrying the state from later chunks to earlier ones. Must equal
/// the plain scan in the same direction.
pub fn ema_scan_chunked_with(
    isa: Isa,
    co: &EmaCoefs,
    x: &[f32],
    l: usize,
    chunk: usize,
    reverse: bool,
    state: &mut [f32],
    y: &mut [f32],
) -> Result<(), KernelError> {
    check(co, x, l, state, y)?;
    let chunk = chunk.max(1);
    let d = co.d;
    let mut local = vec![0f32; co.state_len()];
    let n_chunks = l.div_ceil(chunk);
    for c in 0..n_chunks {
        let idx = if reverse { n_chunks - 1 - c } else { c };
        let t0 = idx * chunk;
        let len = chunk.min(l - t0);
        let (xc, yc) = (&x[t0 * d..(t0 + len) * d], &mut y[t0 * d..(t0 + len) * d]);
        // 1. the chunk alone, from zero state
        local.fill(0.0);
        scan_dispatch(isa, co, Some(xc), len, &mut local, yc, reverse, false);
        // 2. the carried state's contribution (zero input); `state` becomes q^len ⊙ carry
        scan_dispatch(isa, co, None, len, state, yc, reverse, true);
        // 3. carry out = local end state + decayed carry in
        for (s, v) in state.iter_mut().zip(&local) {
            *s += v;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::kernels::isa::available;
    use crate::kernels::testutil::{assert_close, rand_vec};
    use proptest::prelude::*;

    fn coefs(seed: u64, d: usize, n: usize) -> EmaCoefs {
        let r = |s| rand_vec(seed ^ s, d * n);
        EmaCoefs::from_raw(d, n, &r(1), &r(2), &r(3), &r(4)).unwrap()
    }

    /// Direct convolution definition, in f64.
    fn conv(co: &EmaCoefs, x: &[f32], l: usize, reverse: bool) -> Vec<f32> {
        let d = co.d;
        let k = co.kernel(l);
        let mut y = vec![0f32; l * d];
        for t in 0..l {
            for j in 0..d {
                let mut s = 0f64;
                for u in 0..l {
                    let lag = if reverse {
                        u as isize - t as isize
                    } else {
                        t as isize - u as isize
                    };
                    if lag >= 0 {
                        s += f64::from(k[j * l + lag as usize]) * f64::from(x[u * d + j]);
                    }
                }
                y[t * d + j] = s as f32;
            }
        }
        y
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(60))]
        #[test]
        fn recurrent_chunked_and_convolution_agree(
            l in 0usize..50, d in 1usize..21, n in 1usize..6, chunk in 1usize..13, seed in any::<u64>(),
        ) {
            let co = coefs(seed, d, n);
            let x = rand_vec(seed ^ 9, l * d);
            let want = conv(&co, &x, l, false);
            let tol = |_| 1e-4f32;
            for isa in available() {
                let mut st = vec![0f32; co.state_len()];
                let mut y = vec![0f32; l * d];
                ema_scan_with(isa, &co, &x, l, &mut st, &mut y).unwrap();
                assert_close("recurrent", &y, &want, tol);
                let mut st2 = vec![0f32; co.state_len()];
                let mut y2 = vec![0f32; l * d];
                ema_scan_chunked_with(isa, &co, &x, l, chunk, false, &mut st2, &mut y2).unwrap();
                assert_close("chunked", &y2, &want, tol);
                assert_close("final state", &st2, &st, |_| 1e-5);
                // streaming: one token at a time from the same state gives the same output
                let mut st3 = vec![0f32; co.state_len()];
                let mut y3 = vec![0f32; l * d];
                for t in 0..l {
                    ema_scan_with(isa, &co, &x[t * d..(t + 1) * d], 1, &mut st3, &mut y3[t * d..(t + 1) * d]).unwrap();
                }
                prop_assert!(y3 == y, "streaming differs from the batch scan");
                // bidirectional against the two one-sided convolutions
                let bwd = coefs(seed ^ 77, d, n);
                let mut yb = vec![0f32; l * d];
                ema_bidirectional_with(isa, &co, &bwd, &x, l, &mut yb).unwrap();
                let wb: Vec<f32> = want.iter().zip(conv(&bwd, &x, l, true)).map(|(a, b)| a + b).collect();
                assert_close("bidirectional", &yb, &wb, tol);
                // bidirectional from the two chunked scans
                let mut yc = vec![0f32; l * d];
                let mut yr = vec![0f32; l * d];
                ema_scan_chunked_with(isa, &co, &x, l, chunk, false, &mut vec![0f32; co.state_len()], &mut yc).unwrap();
                ema_scan_chunked_with(isa, &bwd, &x, l, chunk, true, &mut vec![0f32; co.state_len()], &mut yr).unwrap();
                let ybc: Vec<f32> = yc.iter().zip(&yr).map(|(a, b)| a + b).collect();
                assert_close("bidirectional, chunked", &ybc, &wb, tol);
            }
        }
    }

    #[test]
    fn raw_parameters_map_as_specified() {
        let co =
            EmaCoefs::from_raw(1, 2, &[0.0, 1.0], &[0.0, -1.0], &[2.0, 3.0], &[4.0, 5.0]).unwrap();
        let s = |v: f32| 1.0 / (1.0 + (-v).exp());
        // n-major layout, d = 1
        assert!((co.alpha[0] - 0.5 * 2.0).abs() < 1e-6);
        assert!((co.q[1] - (1.0 - s(1.0) * s(-1.0))).abs() < 1e-6);
        assert!((co.c[1] - 5.0 / 2f32.sqrt()).abs() < 1e-6);
        assert!(EmaCoefs::from_raw(2, 2, &[0.0; 4], &[0.0; 4], &[0.0; 3], &[0.0; 4]).is_err());
        let mut st = vec![0f32; 2];
        assert!(ema_scan(&co, &[0.0; 3], 2, &mut st, &mut [0.0; 2]).is_err());
    }
}
