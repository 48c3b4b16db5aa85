//! Attention kernels for one head: causal softmax attention over a KV cache, ModuleFormer's
//! stick-breaking attention, and SeqBoat's GAU local (band) attention over the gathered
//! activated tokens. Rows are contiguous (`[tokens, dim]`); callers loop over heads.
//!
//! Scores for a block of keys are one skinny product (`linear`), weighted sums of values
//! one `matmul_rows`, so the SIMD work is in those kernels; the per-score logic (softmax,
//! the reverse cumulative softplus sum, the band) is scalar and O(1) per score.

use super::elementwise::softmax_with;
use super::isa::{self, Isa};
use super::linear::{linear_with, matmul_rows_with, MatRef};
use super::par;
use super::{exactly, need, KernelError};
use alloc::vec;
use alloc::vec::Vec;

/// A fixed-capacity key/value cache for one head: appending never allocates.
#[derive(Clone, Debug)]
pub struct KvCache {
    dim: usize,
    cap: usize,
    len: usize,
    k: Vec<f32>,
    v: Vec<f32>,
}

impl KvCache {
    /// A cache for `capacity` positions of `dim` floats each (allocated once, here).
    pub fn new(dim: usize, capacity: usize) -> Self {
        KvCache {
            dim,
            cap: capacity,
            len: 0,
            k: vec![0.0; dim * capacity],
            v: vec![0.0; dim * capacity],
        }
    }
    /// Heap bytes held (the key and value buffers).
    pub fn heap_bytes(&self) -> u64 {
        4 * (self.k.capacity() + self.v.capacity()) as u64
    }
    /// Positions stored.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Capacity in positions.
    pub fn capacity(&self) -> usize {
        self.cap
    }
    /// Forget everything (keeps the memory).
    pub fn clear(&mut self) {
        self.len = 0;
    }
    /// Append `t` positions (`k`, `v`: `[t, dim]`). Refused, unchanged, if it would
    /// overflow the capacity.
    pub fn append(&mut self, k: &[f32], v: &[f32]) -> Result<(), KernelError> {
        exactly("KvCache::append", "k/v lengths equal", k.len(), v.len())?;
        if !k.len().is_multiple_of(self.dim.max(1)) {
            return Err(KernelError {
                kernel: "KvCache::append",
                what: "k length (multiple of dim)",
                expected: self.dim,
                got: k.len(),
            });
        }
        let t = k.len() / self.dim.max(1);
        need("KvCache::append", "free capacity", t, self.cap - self.len)?;
        let at = self.len * self.dim;
        self.k[at..at + k.len()].copy_from_slice(k);
        self.v[at..at + v.len()].copy_from_slice(v);
        self.len += t;
        Ok(())
    }
    /// Stored keys `[len, dim]`.
    pub fn keys(&self) -> &[f32] {
        &self.k[..self.len * self.dim]
    }
    /// Stored values `[len, dim]`.
    pub fn values(&self) -> &[f32] {
        &self.v[..self.len * self.dim]
    }
}

fn check_qkv(
    kernel: &'static str,
    q: &[f32],
    t: usize,
    k: &[f32],
    v: &[f32],
    tc: usize,
    dh: usize,
    out: &[f32],
) -> Result<(), KernelError> {
    exactly(kernel, "q length (T*dh)", t * dh, q.len())?;
    exactly(kernel, "k length (Tc*dh)", tc * dh, k.len())?;
    exactly(kernel, "v length (Tc*dh)", tc * dh, v.len())?;
    exactly(kernel, "out length (T*dh)", t * dh, out.len())?;
    need(kernel, "context (Tc >= T)", t, tc)
}

/// Causal softmax attention: query `i` of `q: [T, dh]` sits at absolute position
/// `Tc − T + i` and attends keys `0..=` that position of `k`, `v: [Tc, dh]` (the cache
/// including the new tokens). `out: [T, dh]`. `scratch` holds ≥ `Tc` floats.
#[allow(clippy::too_many_arguments)]
pub fn causal_attention(
    q: &[f32],
    t: usize,
    k: &[f32],
    v: &[f32],
    tc: usize,
    dh: usize,
    scale: f32,
    out: &mut [f32],
    scratch: &mut [f32],
) -> Result<(), KernelError> {
    causal_attention_with(isa::active(), q, t, k, v, tc, dh, scale, out, scratch)
}

/// [`causal_attention`] with an explicit SIMD level.
#[allow(clippy::too_many_arguments)]
pub fn causal_attention_with(
    isa: Isa,
    q: &[f32],
    t: usize,
    k: &[f32],
    v: &[f32],
    tc: usize,
    dh: usize,
    scale: f32,
    out: &mut [f32],
    scratch: &mut [f32],
) -> Result<(), KernelError> {
    need(
        "causal_attention",
        "scratch length (>= Tc)",
        tc,
        scratch.len(),
    )?;
    attend_rows(isa, q, t, k, v, tc, dh, scale, true, out, scratch, 0)
}

/// The row loop of softmax attention, shared by the engine ([`causal_attention`]) and the
/// trainer (which keeps the probabilities for its backward), so both compute the same
/// numbers with the same kernel calls. Query `i` sits at position `tc − t + i`; with
/// `causal` it attends keys `0..=` that position, otherwise all `tc`. Row `i`'s scores go
/// to `scores[i·stride..]` (`stride = 0`: one reused row of ≥ `tc` floats). Extents are
/// checked by the kernels called.
#[allow(clippy::too_many_arguments)]
pub fn attend_rows(
    isa: Isa,
    q: &[f32],
    t: usize,
    k: &[f32],
    v: &[f32],
    tc: usize,
    dh: usize,
    scale: f32,
    causal: bool,
    out: &mut [f32],
    scores: &mut [f32],
    stride: usize,
) -> Result<(), KernelError> {
    check_qkv("attend_rows", q, t, k, v, tc, dh, out)?;
    for i in 0..t {
        let n = if causal { tc - t + i + 1 } else { tc };
        need("attend_rows", "scores length", i * stride + n, scores.len())?;
        let s = &mut scores[i * stride..i * stride + n];
        linear_with(
            isa,
            &q[i * dh..(i + 1) * dh],
            dh,
            1,
            &MatRef::f32(&k[..n * dh], n, dh)?,
            None,
            s,
            n,
        )?;
        s.iter_mut().for_each(|x| *x *= scale);
        softmax_with(isa, s);
        matmul_rows_with(
            isa,
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

/// `log(1 + e^z)` without overflow.
#[inline]
pub fn softplus(z: f32) -> f32 {
    z.max(0.0) + libm::log1pf(libm::expf(-z.abs()))
}

/// Keys scored per block while walking backwards in stick-breaking attention.
const SB_BLOCK: usize = 64;

/// Stick-breaking attention (ModuleFormer): for query `i` at absolute position
/// `p = Tc − T + i`, walking `j = p, p−1, …, 0`: `z = q·k_j·scale`, `S += softplus(z)`,
/// weight `exp(z − S)` on `v_j` — i.e. `A_ij = σ(z_ij) Π_{l=j+1..p}(1 − σ(z_il))` in log
/// space, O(p) per query. The current token is included; mass is not renormalised.
///
/// With `stop = Some(τ)` the walk ends once `S > τ`: every older key then has total weight
/// at most `e^{−τ}` (τ = 20 gives ≤ 2e-9 of the value scale). `remainder`, if given
/// (`[T]`), receives the unassigned stick `exp(−S)`. `scratch` holds ≥ 128 floats.
#[allow(clippy::too_many_arguments)]
pub fn stick_breaking_with(
    isa: Isa,
    q: &[f32],
    t: usize,
    k: &[f32],
    v: &[f32],
    tc: usize,
    dh: usize,
    scale: f32,
    stop: Option<f32>,
    out: &mut [f32],
    remainder: Option<&mut [f32]>,
    scratch: &mut [f32],
) -> Result<(), KernelError> {
    check_qkv("stick_breaking", q, t, k, v, tc, dh, out)?;
    need(
        "stick_breaking",
        "scratch length",
        2 * SB_BLOCK,
        scratch.len(),
    )?;
    if let Some(r) = remainder.as_deref() {
        exactly("stick_breaking", "remainder length (T)", t, r.len())?;
    }
    let row = |i: usize, scratch: &mut [f32], o: &mut [f32]| -> Result<f32, KernelError> {
        let (z, w) = scratch[..2 * SB_BLOCK].split_at_mut(SB_BLOCK);
        o.fill(0.0);
        let qi = &q[i * dh..(i + 1) * dh];
        let mut s = 0f32;
        let mut hi = tc - t + i + 1; // keys [lo, hi) of the current block, walked downwards
        'walk: while hi > 0 {
            let lo = hi.saturating_sub(SB_BLOCK);
            let n = hi - lo;
            let kb = MatRef::f32(&k[lo * dh..hi * dh], n, dh)?;
            linear_with(isa, qi, dh, 1, &kb, None, &mut z[..n], n)?;
            let mut first = 0; // lowest index in the block that received weight
            for jj in (0..n).rev() {
                let zj = z[jj] * scale;
                s += softplus(zj);
                w[jj] = libm::expf(zj - s);
                first = jj;
                if stop.is_some_and(|tau| s > tau) {
                    break;
                }
            }
            let vb = MatRef::f32(&v[(lo + first) * dh..hi * dh], n - first, dh)?;
            matmul_rows_with(isa, &w[first..n], n - first, 1, &vb, o, dh, true)?;
            if stop.is_some_and(|tau| s > tau) {
                break 'walk;
            }
            hi = lo;
        }
        Ok(libm::expf(-s))
    };
    match remainder {
        // The remainder needs one value per query: compute rows in order on this thread.
        Some(r) => {
            for i in 0..t {
                r[i] = row(i, scratch, &mut out[i * dh..(i + 1) * dh])?;
            }
            Ok(())
        }
        None => by_query_rows(t, dh, out, scratch, 2 * SB_BLOCK, |i, s, o| {
            row(i, s, o).map(|_| ())
        }),
    }
}

/// Run `row(i, scratch, out_row)` for every query `i < t`, in parallel over blocks of
/// queries when more than one thread is configured (each task with its own scratch of
/// `scratch_len` floats; each output row is written by exactly one task).
fn by_query_rows(
    t: usize,
    dh: usize,
    out: &mut [f32],
    scratch: &mut [f32],
    scratch_len: usize,
    row: impl Fn(usize, &mut [f32], &mut [f32]) -> Result<(), KernelError> + Sync,
) -> Result<(), KernelError> {
    if par::threads() <= 1 || t < 32 || dh == 0 {
        for i in 0..t {
            row(i, scratch, &mut out[i * dh..(i + 1) * dh])?;
        }
        return Ok(());
    }
    // Several chunks per thread: causal rows grow in cost with their position, so equal
    // halves would be unbalanced (3:1); work stealing evens out many small chunks.
    let rows_per = t.div_ceil(par::threads() * 8).max(8);
    par::try_for_each_chunk_mut(&mut out[..t * dh], rows_per * dh, |ci, block| {
        let mut s = vec![0f32; scratch_len];
        for (r, o) in block.chunks_mut(dh).enumerate() {
            row(ci * rows_per + r, &mut s, o)?;
        }
        Ok(())
    })
}

/// [`stick_breaking_with`] at the active SIMD level.
#[allow(clippy::too_many_arguments)]
pub fn stick_breaking(
    q: &[f32],
    t: usize,
    k: &[f32],
    v: &[f32],
    tc: usize,
    dh: usize,
    scale: f32,
    stop: Option<f32>,
    out: &mut [f32],
    remainder: Option<&mut [f32]>,
    scratch: &mut [f32],
) -> Result<(), KernelError> {
    stick_breaking_with(
        isa::active(),
        q,
        t,
        k,
        v,
        tc,
        dh,
        scale,
        stop,
        out,
        remainder,
        scratch,
    )
}

/// The GAU's attention function.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum GauFn {
    /// `softmax(q·k·scale + bias)` over the band (scale = 1/√z in SeqBoat).
    Softmax {
        /// Score scale.
        scale: f32,
    },
    /// `relu(q·k / ell + bias)²` (ell = the constant 2w bidirectional or w causal).
    Relu2 {
        /// The constant divisor ℓ.
        ell: f32,
    },
}

/// GAU local attention over `Lc` gathered tokens (SeqBoat): query `a` attends keys `b` in
/// the band `a − w ≤ b ≤ a` (causal) or `|a − b| ≤ w` (bidirectional), in *compressed*
/// index space, with relative bias `bias[M − 1 + clamp(pos_b − pos_a, −(M−1), M−1)]` from
/// the *original* positions (`bias: [2M − 1]`, optional). `q, k: [Lc, z]`, `v: [Lc, e]`,
/// `pos: [Lc]`, `out: [Lc, e]`; `scratch` ≥ `2w + 1` floats. O(Lc·w·(z + e)).
#[allow(clippy::too_many_arguments)]
pub fn gau_local_with(
    isa: Isa,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    pos: &[u32],
    z: usize,
    e: usize,
    w: usize,
    causal: bool,
    f: GauFn,
    bias: Option<&[f32]>,
    out: &mut [f32],
    scratch: &mut [f32],
) -> Result<(), KernelError> {
    let lc = pos.len();
    exactly("gau_local", "q length (Lc*z)", lc * z, q.len())?;
    exactly("gau_local", "k length (Lc*z)", lc * z, k.len())?;
    exactly("gau_local", "v length (Lc*e)", lc * e, v.len())?;
    exactly("gau_local", "out length (Lc*e)", lc * e, out.len())?;
    let span = if causal { w + 1 } else { 2 * w + 1 };
    need(
        "gau_local",
        "scratch length (band)",
        span.min(lc),
        scratch.len(),
    )?;
    let m = match bias {
        Some(b) if b.len() % 2 == 1 => b.len().div_ceil(2),
        Some(b) => {
            return Err(KernelError {
                kernel: "gau_local",
                what: "bias length (odd, 2M-1)",
                expected: b.len() + 1,
                got: b.len(),
            })
        }
        None => 0,
    };
    let row = |a: usize, scratch: &mut [f32], o: &mut [f32]| -> Result<(), KernelError> {
        let lo = a.saturating_sub(w);
        let hi = if causal { a + 1 } else { (a + w + 1).min(lc) };
        let n = hi - lo;
        let s = &mut scratch[..n];
        let kb = MatRef::f32(&k[lo * z..hi * z], n, z)?;
        linear_with(isa, &q[a * z..(a + 1) * z], z, 1, &kb, None, s, n)?;
        let mul = match f {
            GauFn::Softmax { scale } => scale,
            GauFn::Relu2 { ell } => 1.0 / ell,
        };
        for (jj, sv) in s.iter_mut().enumerate() {
            *sv *= mul;
            if let Some(b) = bias {
                let rel = i64::from(pos[lo + jj]) - i64::from(pos[a]);
                let lim = m as i64 - 1;
                *sv += b[(lim + rel.clamp(-lim, lim)) as usize];
            }
        }
        match f {
            GauFn::Softmax { .. } => softmax_with(isa, s),
            GauFn::Relu2 { .. } => s.iter_mut().for_each(|x| *x = x.max(0.0) * x.max(0.0)),
        }
        let vb = MatRef::f32(&v[lo * e..hi * e], n, e)?;
        matmul_rows_with(isa, s, n, 1, &vb, o, e, false)
    };
    by_query_rows(lc, e, out, scratch, span.min(lc), row)
}

/// [`gau_local_with`] at the active SIMD level.
#[allow(clippy::too_many_arguments)]
pub fn gau_local(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    pos: &[u32],
    z: usize,
    e: usize,
    w: usize,
    causal: bool,
    f: GauFn,
    bias: Option<&[f32]>,
    out: &mut [f32],
    scratch: &mut [f32],
) -> Result<(), KernelError> {
    gau_local_with(
        isa::active(),
        q,
        k,
        v,
        pos,
        z,
        e,
        w,
        causal,
        f,
        bias,
        out,
        scratch,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::kernels::isa::available;
    use crate::kernels::testutil::{assert_close, rand_vec};
    use proptest::prelude::*;

    /// Stick-breaking by its definition, O(T³), f64.
    fn sb_naive(
        q: &[f32],
        t: usize,
        k: &[f32],
        v: &[f32],
        tc: usize,
        dh: usize,
        scale: f32,
    ) -> (Vec<f32>, Vec<f32>) {
        let mut out = vec![0f32; t * dh];
        let mut rem = vec![0f32; t];
        for i in 0..t {
            let p = tc - t + i;
            let beta: Vec<f64> = (0..=p)
                .map(|j| {
                    let zz: f64 = (0..dh)
                        .map(|c| f64::from(q[i * dh + c]) * f64::from(k[j * dh + c]))
                        .sum::<f64>()
                        * f64::from(scale);
                    1.0 / (1.0 + (-zz).exp())
                })
                .collect();
            for j in 0..=p {
                let a = beta[j] * beta[j + 1..=p].iter().map(|b| 1.0 - b).product::<f64>();
                for c in 0..dh {
                    out[i * dh + c] += (a * f64::from(v[j * dh + c])) as f32;
                }
            }
            rem[i] = beta.iter().map(|b| 1.0 - b).product::<f64>() as f32;
        }
        (out, rem)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]
        #[test]
        fn stick_breaking_matches_definition(t in 1usize..12, extra in 0usize..80, dh in 1usize..9, seed in any::<u64>(), sc in 0.1f32..3.0) {
            let tc = t + extra;
            let (q, k, v) = (rand_vec(seed, t * dh), rand_vec(seed ^ 1, tc * dh), rand_vec(seed ^ 2, tc * dh));
            let (want, want_r) = sb_naive(&q, t, &k, &v, tc, dh, sc);
            for isa in available() {
                let mut out = vec![0f32; t * dh];
                let mut rem = vec![0f32; t];
                let mut scratch = vec![0f32; 128];
                stick_breaking_with(isa, &q, t, &k, &v, tc, dh, sc, None, &mut out, Some(&mut rem), &mut scratch).unwrap();
                assert_close("stick-breaking", &out, &want, |_| 2e-5);
                assert_close("remainder", &rem, &want_r, |i| 1e-5 + 1e-4 * want_r[i]);
                // early stop at τ = 20 changes the output by at most e^-20 · max|v|
                stick_breaking_with(isa, &q, t, &k, &v, tc, dh, sc, Some(20.0), &mut out, None, &mut scratch).unwrap();
                assert_close("stick-breaking τ=20", &out, &want, |_| 2e-5 + 3e-9);
            }
        }

        #[test]
        fn causal_attention_matches_definition(t in 1usize..10, extra in 0usize..40, dh in 1usize..17, seed in any::<u64>()) {
            let tc = t + extra;
            let (q, k, v) = (rand_vec(seed, t * dh), rand_vec(seed ^ 1, tc * dh), rand_vec(seed ^ 2, tc * dh));
            let scale = 1.0 / (dh as f32).sqrt();
            let mut want = vec![0f32; t * dh];
            for i in 0..t {
                let p = tc - t + i;
                let s: Vec<f64> = (0..=p).map(|j| (0..dh).map(|c| f64::from(q[i * dh + c] * k[j * dh + c])).sum::<f64>() * f64::from(scale)).collect();
                let mx = s.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = s.iter().map(|x| (x - mx).exp()).sum();
                for j in 0..=p { for c in 0..dh { want[i * dh + c] += (((s[j] - mx).exp() / z) * f64::from(v[j * dh + c])) as f32; } }
            }
            for isa in available() {
                let mut out = vec![0f32; t * dh];
                causal_attention_with(isa, &q, t, &k, &v, tc, dh, scale, &mut out, &mut vec![0f32; tc]).unwrap();
                assert_close("causal", &out, &want, |_| 1e-5);
            }
        }

        #[test]
        fn gau_local_matches_definition(lc in 0usize..40, w in 0usize..8, z in 1usize..9, e in 1usize..9, causal in any::<bool>(), relu in any::<bool>(), seed in any::<u64>()) {
            let (q, k, v) = (rand_vec(seed, lc * z), rand_vec(seed ^ 1, lc * z), rand_vec(seed ^ 2, lc * e));
            let mut pos: Vec<u32> = rand_vec(seed ^ 3, lc).iter().map(|x| ((x + 1.0) * 5.0) as u32 + 1).collect();
            for i in 1..lc { pos[i] += pos[i - 1]; } // strictly increasing original positions
            let mm = 6usize;
            let bias = rand_vec(seed ^ 4, 2 * mm - 1);
            let f = if relu { GauFn::Relu2 { ell: (if causal { w } else { 2 * w }).max(1) as f32 } } else { GauFn::Softmax { scale: 1.0 / (z as f32).sqrt() } };
            let mut want = vec![0f32; lc * e];
            for a in 0..lc {
                let keys: Vec<usize> = (0..lc).filter(|&b| if causal { b <= a && a - b <= w } else { a.abs_diff(b) <= w }).collect();
                let s: Vec<f64> = keys.iter().map(|&b| {
                    let dot: f64 = (0..z).map(|c| f64::from(q[a * z + c] * k[b * z + c])).sum();
                    let rel = (i64::from(pos[b]) - i64::from(pos[a])).clamp(-(mm as i64 - 1), mm as i64 - 1);
                    let m = match f { GauFn::Softmax { scale } => f64::from(scale), GauFn::Relu2 { ell } => 1.0 / f64::from(ell) };
                    dot * m + f64::from(bias[(mm as i64 - 1 + rel) as usize])
                }).collect();
                let a_w: Vec<f64> = if relu { s.iter().map(|x| x.max(0.0).powi(2)).collect() } else {
                    let mx = s.iter().cloned().fold(f64::MIN, f64::max);
                    let zs: f64 = s.iter().map(|x| (x - mx).exp()).sum();
                    s.iter().map(|x| (x - mx).exp() / zs).collect()
                };
                for (idx, &b) in keys.iter().enumerate() { for c in 0..e { want[a * e + c] += (a_w[idx] * f64::from(v[b * e + c])) as f32; } }
            }
            for isa in available() {
                let mut out = vec![0f32; lc * e];
                let mut scratch = vec![0f32; 2 * w + 1];
                gau_local_with(isa, &q, &k, &v, &pos, z, e, w, causal, f, Some(&bias), &mut out, &mut scratch).unwrap();
                assert_close("gau", &out, &want, |_| 1e-4);
            }
        }
    }

    #[test]
    fn attention_does_not_depend_on_thread_count() {
        let (t, dh) = (70, 8);
        let (q, k, v) = (
            rand_vec(1, t * dh),
            rand_vec(2, t * dh),
            rand_vec(3, t * dh),
        );
        let pos: Vec<u32> = (0..t as u32).map(|i| 3 * i).collect();
        let mut outs = Vec::new();
        for th in [1, 2, 3] {
            crate::kernels::par::set_threads(th);
            let mut a = vec![0f32; t * dh];
            causal_attention(&q, t, &k, &v, t, dh, 0.3, &mut a, &mut vec![0f32; t]).unwrap();
            let mut b = vec![0f32; t * dh];
            stick_breaking(
                &q,
                t,
                &k,
                &v,
                t,
                dh,
                0.3,
                Some(20.0),
                &mut b,
                None,
                &mut vec![0f32; 128],
            )
            .unwrap();
            let mut c = vec![0f32; t * dh];
            gau_local(
                &q,
                &k,
                &v,
                &pos,
                dh,
                dh,
                5,
                false,
                GauFn::Softmax { scale: 0.3 },
                None,
                &mut c,
                &mut [0f32; 11],
            )
            .unwrap();
            outs.push((a, b, c));
        }
        crate::kernels::par::set_threads(0);
        assert!(outs.windows(2).all(|p| p[0] == p[1]));
    }

    #[test]
    fn kv_cache_never_overflows() {
        let mut c = KvCache::new(2, 3);
        c.append(&[1.0, 2.0], &[3.0, 4.0]).unwrap();
        c.append(&[5.0; 4], &[6.0; 4]).unwrap();
        assert_eq!(c.len(), 3);
        assert!(c.append(&[0.0; 2], &[0.0; 2]).is_err());
        assert_eq!(c.keys(), &[1.0, 2.0, 5.0, 5.0, 5.0, 5.0]);
        assert!(c.append(&[0.0; 3], &[0.0; 3]).is_err());
        c.clear();
        assert!(c.is_empty());
    }
}
