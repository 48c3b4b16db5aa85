//! Products of block-quantised weight rows with f32 activations: dot products (one output
//! of `y = x·Wᵀ`) and scaled accumulation `y += a·w` (one input row of `y = x·W`), for Q8_0
//! and Q4_0. The scalar versions here are the references; [`avx2`] and [`avx512`] (x86-64)
//! and `neon` (aarch64) are `unsafe fn`s with `#[target_feature]`, chosen at run time by
//! `modula-core`'s dispatcher, and tested against these references (proptest; the AVX-512
//! ones on an emulated CPU, see [`avx512`]).
//!
//! Summation order: per block, the 32 products are summed, then scaled by the block's `d`
//! and added to the running total. The SIMD versions keep per-lane partial sums (a
//! different order), so they agree with the references to rounding, not bit for bit.

use crate::blocks::{BlockQ4_0, BlockQ8_0, QK4_0, QK8_0};
use half::f16;

/// `even_odd!(n, zero, |i, acc| step)`: evaluates `step` for `i < n` into two
/// accumulators — even `i` into the first, odd `i` into the second, each starting at
/// `zero` — and gives `(even, odd)`. The SIMD kernels use two accumulators to hide the FMA
/// latency; written as an array indexed by `i & 1`, the compiler kept them on the stack, a
/// store and a reload on the loop's critical path (a quarter of the samples of a Q4_0 GEMV
/// profile sat on those two instructions). A macro, not a function taking a closure: a
/// closure does not inherit its kernel's `#[target_feature]`s, so the intrinsics in it
/// would not inline (measured: the Q4_0 GEMV 3.5× slower). The order of operations is the
/// array version's.
#[allow(unused_macros)] // used by the SIMD modules only
macro_rules! even_odd {
    ($n:expr, $zero:expr, |$i:ident, $acc:pat_param| $step:expr) => {{
        let n: usize = $n;
        let (mut even, mut odd) = ($zero, $zero);
        let mut k = 0;
        while k + 2 <= n {
            even = {
                let $i = k;
                let $acc = even;
                $step
            };
            odd = {
                let $i = k + 1;
                let $acc = odd;
                $step
            };
            k += 2;
        }
        if k < n {
            even = {
                let $i = k;
                let $acc = even;
                $step
            };
        }
        (even, odd)
    }};
}

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
pub mod kquant;
#[cfg(target_arch = "aarch64")]
pub mod neon;

/// `Σ_i dequant(w)[i] · x[i]` over `w.len()` Q8_0 blocks; `x` has `w.len() × 32` values.
pub fn dot_q8_0(w: &[BlockQ8_0], x: &[f32]) -> f32 {
    let mut acc = 0f32;
    for (b, xb) in w.iter().zip(x.chunks_exact(QK8_0)) {
        let s: f32 = b.qs.iter().zip(xb).map(|(&q, &v)| f32::from(q) * v).sum();
        acc += b.d.to_f32() * s;
    }
    acc
}

/// `Σ_i dequant(w)[i] · x[i]` over `w.len()` Q4_0 blocks; `x` has `w.len() × 32` values.
pub fn dot_q4_0(w: &[BlockQ4_0], x: &[f32]) -> f32 {
    let mut acc = 0f32;
    for (b, xb) in w.iter().zip(x.chunks_exact(QK4_0)) {
        let (lo, hi) = xb.split_at(QK4_0 / 2);
        let mut s = 0f32;
        for (j, &byte) in b.qs.iter().enumerate() {
            s += (i32::from(byte & 0x0f) - 8) as f32 * lo[j];
            s += (i32::from(byte >> 4) - 8) as f32 * hi[j];
        }
        acc += b.d.to_f32() * s;
    }
    acc
}

/// `y[i] += a · dequant(w)[i]` over `w.len()` Q8_0 blocks (`y` has `w.len() × 32` values).
pub fn axpy_q8_0(a: f32, w: &[BlockQ8_0], y: &mut [f32]) {
    for (b, yb) in w.iter().zip(y.chunks_exact_mut(QK8_0)) {
        let s = a * b.d.to_f32();
        for (v, &q) in yb.iter_mut().zip(&b.qs) {
            *v += s * f32::from(q);
        }
    }
}

/// `y[i] += a · dequant(w)[i]` over `w.len()` Q4_0 blocks (`y` has `w.len() × 32` values).
pub fn axpy_q4_0(a: f32, w: &[BlockQ4_0], y: &mut [f32]) {
    for (b, yb) in w.iter().zip(y.chunks_exact_mut(QK4_0)) {
        let s = a * b.d.to_f32();
        let (lo, hi) = yb.split_at_mut(QK4_0 / 2);
        for (j, &byte) in b.qs.iter().enumerate() {
            lo[j] += s * (i32::from(byte & 0x0f) - 8) as f32;
            hi[j] += s * (i32::from(byte >> 4) - 8) as f32;
        }
    }
}

/// `Σ_i dequant(w)[i] · dequant(x)[i]` with the activations already quantised to Q8_0
/// (`x.len() == w.len()`): per block the integer sum `Σ q_w·q_x` (exact in i32), scaled by
/// `d_w·d_x` and accumulated in f32 — llama.cpp's `vec_dot_q8_0_q8_0` arithmetic.
pub fn dot_q8_0_q8_0(w: &[BlockQ8_0], x: &[BlockQ8_0]) -> f32 {
    let mut acc = 0f32;
    for (b, xb) in w.iter().zip(x) {
        let s: i32 =
            b.qs.iter()
                .zip(&xb.qs)
                .map(|(&a, &c)| i32::from(a) * i32::from(c))
                .sum();
        acc += b.d.to_f32() * xb.d.to_f32() * s as f32;
    }
    acc
}

/// [`dot_q8_0_q8_0`] for Q4_0 weights: `Σ (q_w − 8)·q_x` per block.
pub fn dot_q4_0_q8_0(w: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
    let mut acc = 0f32;
    for (b, xb) in w.iter().zip(x) {
        let mut s = 0i32;
        for (j, &byte) in b.qs.iter().enumerate() {
            s += (i32::from(byte & 0x0f) - 8) * i32::from(xb.qs[j]);
            s += (i32::from(byte >> 4) - 8) * i32::from(xb.qs[j + QK4_0 / 2]);
        }
        acc += b.d.to_f32() * xb.d.to_f32() * s as f32;
    }
    acc
}

/// The order of an octet's blocks in the grouped kernels' reduced lanes
/// ([`avx2::dot_q4_0_q8_0_octs`]): lane `l` holds block `OCT_LANES[l]` of the 8 — the even
/// blocks are reduced into lanes 0..4 and the odd ones into 4..8, which saves a shuffle.
pub const OCT_LANES: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];

/// What the grouped Q4_0/Q8_0 × Q8_0 kernels ([`avx2::dot_q4_0_q8_0_octs`],
/// [`avx2::dot_q8_0_q8_0_octs`]) reuse across the weight rows of one product, per group of
/// 8 consecutive activation blocks ("octet"), in the kernels' lane order [`OCT_LANES`]:
/// `8 ×` the sum of each block's 32 values (Q4_0's correction for its offset of 8) and the
/// block scales as f32.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C, align(32))]
pub struct Q8Oct {
    /// `8 × Σ x` of block `OCT_LANES[l]` in lane `l`.
    pub corr: [i32; 8],
    /// The scale `d` of block `OCT_LANES[l]` as f32 in lane `l`.
    pub scale: [f32; 8],
}

/// Blocks per [`Q8Oct`].
pub const OCT: usize = 8;

/// [`Q8Oct`]s of `x`, one per group of 8 blocks, the last group padded
/// (`out.len() == x.len().div_ceil(8)`): lanes of blocks past the end of `x` hold sum 0 and
/// scale 0, so the kernels run a last partial octet like a whole one.
pub fn q8_octs(x: &[BlockQ8_0], out: &mut [Q8Oct]) {
    for (g, o) in x.chunks(OCT).zip(out.iter_mut()) {
        *o = Q8Oct::default();
        for (l, &k) in OCT_LANES.iter().enumerate() {
            if let Some(b) = g.get(k) {
                o.corr[l] = 8 * b.qs.iter().map(|&v| i32::from(v)).sum::<i32>();
                o.scale[l] = b.d.to_f32();
            }
        }
    }
}

/// Rows per tile of the integer transposed product ([`axpy_rows_q4_0`]): the rows that
/// share one 8-bit scale of the activation side per column block.
pub const TILE_ROWS: usize = 32;
/// Column blocks (of 32 outputs) per tile: a tile's weights (16 × 32 × 18 bytes = 9 KiB
/// for Q4_0) and its per-block activation scales stay in L1 while they are used.
pub const TILE_BLOCKS: usize = 32;
/// Tiles whose largest `|x·d|` in some column block lies in `(0, TILE_TINY)` are not
/// quantised (`127 / amax` would overflow); the caller runs them in f32.
pub const TILE_TINY: f32 = 1e-30;

/// The activation side of one tile of the integer transposed product, column block `b`:
/// `c_r = x_r · d_{r,b}` (`d` the weight block's scale), `amax = max_r |c_r|`,
/// the scale `s_b = amax / 127` and `c'_r = rint(c_r · (127 / amax))` (ties to even),
/// so `Σ_r c_r·w_r ≈ s_b · Σ_r c'_r·q_r` over the block's integer weights `q`.
/// `None` when a `c_r` is not finite or `0 < amax < TILE_TINY`; an all-zero block gives
/// `s_b = 0` and `c' = 0`. Writes `cq[..x.len()]`.
#[inline]
fn tile_block_scale(x: &[f32], d: impl Fn(usize) -> f16, cq: &mut [i32]) -> Option<f32> {
    let mut c = [0f32; TILE_ROWS];
    let mut amax = 0f32;
    for (r, (cr, &xr)) in c.iter_mut().zip(x).enumerate() {
        *cr = xr * d(r).to_f32();
        if !cr.is_finite() {
            return None;
        }
        amax = amax.max(cr.abs());
    }
    if amax == 0.0 {
        cq[..x.len()].fill(0);
        return Some(0.0);
    }
    if amax < TILE_TINY {
        return None;
    }
    let inv = 127.0 / amax;
    for (q, cr) in cq.iter_mut().zip(&c[..x.len()]) {
        *q = libm::rintf(cr * inv) as i32;
    }
    Some(amax / 127.0)
}

/// One tile of `y += Σ_r x[r] · dequant(w_r)` — the product with a transposed Q4_0 matrix
/// (rows `w_r = w[r·ld .. r·ld + nb]`, `r < x.len() ≤ TILE_ROWS`, `nb ≤ TILE_BLOCKS`,
/// `y.len() ≥ 32·nb`) in integer arithmetic: per column block `b` the activations times
/// the weight scales are quantised to 8 bits (`tile_block_scale`: `s_b`, `c'_r`), the
/// 32 outputs summed exactly as `Σ_r c'_r·(q_{r,i} − 8)` in integers and added as
/// `y_i += s_b · sum` (one f32 multiply, one add). Like the Q8_0 activations of the
/// PyTorch-layout products this rounds the activation side (relative error up to
/// 1/254 of the block's largest `|x·d|` per term). Returns false, having written nothing,
/// when the tile cannot be quantised (a non-finite or tiny `|x·d|`, see [`TILE_TINY`]):
/// the caller then uses the f32 kernels. The SIMD versions give bit-identical results.
pub fn axpy_rows_q4_0(x: &[f32], w: &[BlockQ4_0], ld: usize, nb: usize, y: &mut [f32]) -> bool {
    axpy_rows_with(
        x,
        w,
        ld,
        nb,
        y,
        |b| b.d,
        |b| {
            let mut q = [0i32; QK4_0];
            for (j, &byte) in b.qs.iter().enumerate() {
                q[j] = i32::from(byte & 0x0f) - 8;
                q[j + QK4_0 / 2] = i32::from(byte >> 4) - 8;
            }
            q
        },
    )
}

/// The integer tile product over blocks `B` with scale `scale` and 32 integer weights
/// `ints` (see [`axpy_rows_q4_0`]).
fn axpy_rows_with<B>(
    x: &[f32],
    w: &[B],
    ld: usize,
    nb: usize,
    y: &mut [f32],
    scale: impl Fn(&B) -> f16,
    ints: impl Fn(&B) -> [i32; 32],
) -> bool {
    let rows = x.len();
    assert!(rows <= TILE_ROWS && nb <= TILE_BLOCKS, "tile too large");
    if rows == 0 || nb == 0 {
        return true;
    }
    assert!(w.len() >= (rows - 1) * ld + nb && y.len() >= 32 * nb);
    let mut cq = [[0i32; TILE_ROWS]; TILE_BLOCKS];
    let mut s = [0f32; TILE_BLOCKS];
    for b in 0..nb {
        match tile_block_scale(x, |r| scale(&w[r * ld + b]), &mut cq[b]) {
            Some(v) => s[b] = v,
            None => return false,
        }
    }
    for b in 0..nb {
        let mut acc = [0i32; 32];
        for (r, &c) in cq[b][..rows].iter().enumerate() {
            for (a, q) in acc.iter_mut().zip(ints(&w[r * ld + b])) {
                *a += c * q;
            }
        }
        for (yv, &a) in y[32 * b..32 * b + 32].iter_mut().zip(&acc) {
            *yv += s[b] * a as f32;
        }
    }
    true
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::quantize::{quantize_row_q4_0, quantize_row_q8_0};
    use alloc::vec;
    use alloc::vec::Vec;
    use half::f16;

    pub(crate) fn rand(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (s >> 40) as f32 / 16_777_216.0 - 0.5
            })
            .collect()
    }

    pub(crate) fn q8(x: &[f32]) -> Vec<BlockQ8_0> {
        let mut b = vec![
            BlockQ8_0 {
                d: f16::ZERO,
                qs: [0; 32]
            };
            x.len() / 32
        ];
        quantize_row_q8_0(x, &mut b).unwrap();
        b
    }

    pub(crate) fn q4(x: &[f32]) -> Vec<BlockQ4_0> {
        let mut b = vec![
            BlockQ4_0 {
                d: f16::ZERO,
                qs: [0; 16]
            };
            x.len() / 32
        ];
        quantize_row_q4_0(x, &mut b).unwrap();
        b
    }

    /// Bound on two summation orders of Σ w·x with dequantised weights.
    pub(crate) fn tol(w: &[f32], x: &[f32]) -> f32 {
        let s: f32 = w.iter().zip(x).map(|(a, b)| (a * b).abs()).sum();
        4e-6 * (w.len() as f32).sqrt() * s + 1e-6
    }

    #[test]
    fn references_are_the_dequantised_products() {
        let (w, x) = (rand(1, 96), rand(2, 96));
        let (b8, b4) = (q8(&w), q4(&w));
        let (mut d8, mut d4) = (vec![0f32; 96], vec![0f32; 96]);
        crate::quantize::dequantize_row_q8_0(&b8, &mut d8);
        crate::quantize::dequantize_row_q4_0(&b4, &mut d4);
        let want8: f32 = d8.iter().zip(&x).map(|(a, b)| a * b).sum();
        let want4: f32 = d4.iter().zip(&x).map(|(a, b)| a * b).sum();
        assert!((dot_q8_0(&b8, &x) - want8).abs() <= tol(&d8, &x));
        assert!((dot_q4_0(&b4, &x) - want4).abs() <= tol(&d4, &x));
        let mut y = x.clone();
        axpy_q4_0(0.5, &b4, &mut y);
        for i in 0..96 {
            assert!((y[i] - (x[i] + 0.5 * d4[i])).abs() <= 1e-6);
        }
        let mut y = x.clone();
        axpy_q8_0(-2.0, &b8, &mut y);
        for i in 0..96 {
            assert!((y[i] - (x[i] - 2.0 * d8[i])).abs() <= 1e-6);
        }
    }

    /// AVX2 + FMA + F16C on this CPU (what the AVX2 variants require).
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    pub(crate) fn has_avx2() -> bool {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }

    /// What the AVX-512BW kernels require: AVX-512F/BW/VL and the AVX2 level.
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    fn has_avx512bw() -> bool {
        has_avx2()
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
    }

    type QDots = (
        fn(&[BlockQ8_0], &[BlockQ8_0]) -> f32,
        fn(&[BlockQ4_0], &[BlockQ8_0]) -> f32,
    );

    #[allow(unused_mut)]
    fn simd_qdots() -> Vec<(&'static str, QDots)> {
        let mut v: Vec<(&'static str, QDots)> = Vec::new();
        #[cfg(all(target_arch = "x86_64", feature = "std"))]
        if has_avx2() {
            v.push((
                "avx2",
                (
                    // SAFETY: the features were detected above; equal block counts.
                    |w, x| unsafe { avx2::dot_q8_0_q8_0(w, x) },
                    // SAFETY: the features were detected above; equal block counts.
                    |w, x| unsafe { avx2::dot_q4_0_q8_0(w, x) },
                ),
            ));
        }
        // On a CPU with AVX-512 (elsewhere: the emulator program, scripts/test-avx512.sh).
        #[cfg(all(target_arch = "x86_64", feature = "std"))]
        if has_avx512bw() {
            v.push((
                "avx512bw",
                (
                    // SAFETY: the features were detected above; equal block counts.
                    |w, x| unsafe { avx512::dot_q8_0_q8_0(w, x) },
                    // SAFETY: as above.
                    |w, x| unsafe { avx512::dot_q4_0_q8_0(w, x) },
                ),
            ));
        }
        #[cfg(all(target_arch = "x86_64", feature = "std"))]
        if has_avx512bw() && std::is_x86_feature_detected!("avx512vnni") {
            v.push((
                "avx512vnni",
                (
                    // SAFETY: the features were detected above; equal block counts.
                    |w, x| unsafe { avx512::dot_q8_0_q8_0_vnni(w, x) },
                    // SAFETY: as above.
                    |w, x| unsafe { avx512::dot_q4_0_q8_0_vnni(w, x) },
                ),
            ));
        }
        #[cfg(all(target_arch = "aarch64", feature = "std"))]
        if std::arch::is_aarch64_feature_detected!("neon") {
            v.push((
                "neon",
                (
                    // SAFETY: NEON was detected above; equal block counts.
                    |w, x| unsafe { neon::dot_q8_0_q8_0(w, x) },
                    // SAFETY: NEON was detected above; equal block counts.
                    |w, x| unsafe { neon::dot_q4_0_q8_0(w, x) },
                ),
            ));
        }
        #[cfg(all(target_arch = "aarch64", feature = "std"))]
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            v.push((
                "neon+dotprod",
                (
                    // SAFETY: dotprod (and so NEON) was detected above; equal block counts.
                    |w, x| unsafe { neon::dot_q8_0_q8_0_dotprod(w, x) },
                    // SAFETY: as above.
                    |w, x| unsafe { neon::dot_q4_0_q8_0_dotprod(w, x) },
                ),
            ));
        }
        v
    }

    #[test]
    fn quantised_activation_dots_match_the_references() {
        let variants = simd_qdots();
        #[cfg(feature = "std")]
        std::eprintln!(
            "SIMD variants checked: {:?}",
            variants.iter().map(|v| v.0).collect::<Vec<_>>()
        );
        for seed in 0..300u64 {
            let blocks = (seed % 23) as usize;
            let n = 32 * blocks;
            let w: Vec<f32> = rand(seed, n).iter().map(|v| v * 3.0).collect();
            let x = rand(seed ^ 0x5a5a, n);
            let (w8, w4, xq) = (q8(&w), q4(&w), q8(&x));
            // the reference is the dequantised product up to f32 rounding
            let (mut dw8, mut dw4, mut dx) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
            crate::quantize::dequantize_row_q8_0(&w8, &mut dw8);
            crate::quantize::dequantize_row_q4_0(&w4, &mut dw4);
            crate::quantize::dequantize_row_q8_0(&xq, &mut dx);
            let r8 = dot_q8_0_q8_0(&w8, &xq);
            let r4 = dot_q4_0_q8_0(&w4, &xq);
            let e8: f32 = dw8.iter().zip(&dx).map(|(a, b)| a * b).sum();
            let e4: f32 = dw4.iter().zip(&dx).map(|(a, b)| a * b).sum();
            assert!((r8 - e8).abs() <= tol(&dw8, &dx), "ref q8 {seed}");
            assert!((r4 - e4).abs() <= tol(&dw4, &dx), "ref q4 {seed}");
            for (name, (d8, d4)) in &variants {
                // integer block sums are exact: only the f32 accumulation order differs
                assert!(
                    (d8(&w8, &xq) - r8).abs() <= tol(&dw8, &dx),
                    "{name} q8q8 {seed}"
                );
                assert!(
                    (d4(&w4, &xq) - r4).abs() <= tol(&dw4, &dx),
                    "{name} q4q8 {seed}"
                );
            }
        }
    }

    /// The 4-row axpy kernels give each row exactly the one-row kernel's result (so results
    /// do not depend on how rows are grouped, e.g. by thread count), on random ragged
    /// shapes. (The 4-row dots: `grouped_kernels_match_the_scalar_reference`.)
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    #[test]
    fn four_row_kernels_equal_the_one_row_kernels_bit_for_bit() {
        if !has_avx2() {
            return;
        }
        for seed in 0..200u64 {
            let blocks = (seed % 19) as usize;
            let n = 32 * blocks;
            let rows: Vec<Vec<f32>> = (0..4)
                .map(|r| {
                    rand(seed * 4 + r, n)
                        .iter()
                        .map(|v| v * (1.0 + r as f32))
                        .collect()
                })
                .collect();
            let r8: Vec<Vec<BlockQ8_0>> = rows.iter().map(|r| q8(r)).collect();
            let r4: Vec<Vec<BlockQ4_0>> = rows.iter().map(|r| q4(r)).collect();
            // axpy over four rows = four one-row axpys in order, bit for bit
            let a = [0.5f32, -1.25, 2.0, 0.0];
            let y0 = rand(seed ^ 0x77, n);
            let (mut y8, mut y4, mut o8, mut o4) = (y0.clone(), y0.clone(), y0.clone(), y0);
            // SAFETY: as above; y holds 32 per block.
            unsafe {
                avx2::axpy4_q8_0(a, [&r8[0], &r8[1], &r8[2], &r8[3]], &mut y8);
                avx2::axpy4_q4_0(a, [&r4[0], &r4[1], &r4[2], &r4[3]], &mut y4);
                for r in 0..4 {
                    avx2::axpy_q8_0(a[r], &r8[r], &mut o8);
                    avx2::axpy_q4_0(a[r], &r4[r], &mut o4);
                }
            }
            for k in 0..n {
                assert_eq!(
                    y8[k].to_bits(),
                    o8[k].to_bits(),
                    "axpy q8 seed {seed} at {k}"
                );
                assert_eq!(
                    y4[k].to_bits(),
                    o4[k].to_bits(),
                    "axpy q4 seed {seed} at {k}"
                );
            }
        }
    }

    type Quantiser = fn(&[f32], &mut [BlockQ8_0]) -> bool;

    /// The SIMD activation quantisers this CPU runs (safe wrappers after the run-time
    /// check; the caller passes `x.len() == 32 · out.len()`).
    #[allow(unused_mut)]
    fn quantiser_variants() -> Vec<(&'static str, Quantiser)> {
        let mut v: Vec<(&'static str, Quantiser)> = Vec::new();
        #[cfg(all(target_arch = "x86_64", feature = "std"))]
        if has_avx2() {
            // SAFETY: the features were detected above; the caller's lengths.
            v.push(("avx2", |x, o| unsafe { avx2::quantize_q8_0(x, o) }));
        }
        #[cfg(all(target_arch = "aarch64", feature = "std"))]
        if std::arch::is_aarch64_feature_detected!("neon") {
            // SAFETY: NEON was detected above; the caller's lengths.
            v.push(("neon", |x, o| unsafe { neon::quantize_q8_0(x, o) }));
        }
        v
    }

    /// The SIMD activation quantisers give `quantize_row_q8_0`'s bits: random rows of
    /// 0–20 blocks at scales from 1e-30 to 1e30, exact halves (`k + 0.5` after scaling,
    /// where rounding to even would differ), signed zeros, all-zero blocks, blocks whose
    /// `1/d` overflows (largest magnitude ~1e-39), the largest finite f32; and they refuse
    /// rows the scalar code refuses (a NaN or an infinity anywhere).
    #[cfg(feature = "std")]
    #[test]
    fn simd_activation_quantisers_give_the_scalar_bits() {
        let variants = quantiser_variants();
        std::eprintln!(
            "quantisers: {:?}",
            variants.iter().map(|v| v.0).collect::<Vec<_>>()
        );
        for (name, quant) in variants {
            for seed in 0..600u64 {
                let blocks = (seed % 21) as usize;
                let scale = [1.0, 1e-30, 1e30, 3.0e-39, 1e-3, 200.0][(seed / 21 % 6) as usize];
                let mut x: Vec<f32> = rand(seed, 32 * blocks).iter().map(|v| v * scale).collect();
                for (b, xb) in x.chunks_mut(32).enumerate() {
                    match (seed as usize + b) % 7 {
                        // largest magnitude 127: d = 1, so v · (1/d) = v, and halves stay
                        // halves
                        0 => {
                            for (j, v) in xb.iter_mut().enumerate() {
                                *v = (j as f32 - 15.5) * if j % 3 == 0 { -1.0 } else { 1.0 };
                            }
                            xb[0] = 127.0;
                        }
                        1 => xb.iter_mut().for_each(|v| *v = 0.0),
                        2 => xb.iter_mut().step_by(2).for_each(|v| *v = -0.0),
                        3 => xb[31] = f32::MAX * if seed % 2 == 0 { 1.0 } else { -1.0 },
                        _ => {}
                    }
                }
                let zero = BlockQ8_0 {
                    d: f16::ZERO,
                    qs: [0; 32],
                };
                let mut want = vec![zero; blocks];
                let ok = crate::quantize::quantize_row_q8_0(&x, &mut want).is_ok();
                // different initial contents: every byte must be written
                let mut got = vec![
                    BlockQ8_0 {
                        d: f16::ONE,
                        qs: [9; 32]
                    };
                    blocks
                ];
                assert_eq!(quant(&x, &mut got), ok, "{name} seed {seed}");
                for (b, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(g.d.to_bits(), w.d.to_bits(), "{name} seed {seed} block {b}");
                    assert_eq!(g.qs, w.qs, "{name} seed {seed} block {b}");
                }
                // a non-finite value anywhere: refused, as by the scalar code
                if blocks > 0 {
                    let bad = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][(seed % 3) as usize];
                    let at = (seed as usize * 7) % x.len();
                    x[at] = bad;
                    assert!(crate::quantize::quantize_row_q8_0(&x, &mut want).is_err());
                    assert!(!quant(&x, &mut got), "{name} seed {seed}: {bad} at {at}");
                }
            }
        }
    }

    type OctKernels = (
        fn(&[BlockQ4_0], &[BlockQ8_0], &[Q8Oct]) -> f32,
        fn(&[BlockQ8_0], &[BlockQ8_0], &[Q8Oct]) -> f32,
        fn([&[BlockQ4_0]; 4], &[BlockQ8_0], &[Q8Oct]) -> [f32; 4],
        fn([&[BlockQ8_0]; 4], &[BlockQ8_0], &[Q8Oct]) -> [f32; 4],
    );

    /// The octet kernels this CPU runs (safe wrappers, after the run-time check; the
    /// arguments of the tests below hold the kernels' length contracts).
    #[allow(unused_mut)]
    fn octet_variants() -> Vec<(&'static str, OctKernels)> {
        let mut v: Vec<(&'static str, OctKernels)> = Vec::new();
        #[cfg(all(target_arch = "x86_64", feature = "std"))]
        if has_avx2() {
            v.push((
                "avx2",
                (
                    // SAFETY: the features were detected above; equal block counts, the
                    // activation's octs.
                    |w, x, o| unsafe { avx2::dot_q4_0_q8_0_octs(w, x, o) },
                    // SAFETY: as above.
                    |w, x, o| unsafe { avx2::dot_q8_0_q8_0_octs(w, x, o) },
                    // SAFETY: as above.
                    |w, x, o| unsafe { avx2::dot4_q4_0_q8_0_octs(w, x, o) },
                    // SAFETY: as above.
                    |w, x, o| unsafe { avx2::dot4_q8_0_q8_0_octs(w, x, o) },
                ),
            ));
        }
        #[cfg(all(target_arch = "aarch64", feature = "std"))]
        if std::arch::is_aarch64_feature_detected!("neon") {
            v.push((
                "neon",
                (
                    // SAFETY: NEON was detected above; equal block counts, the
                    // activation's octs, activations from quantize_row_q8_0.
                    |w, x, o| unsafe { neon::dot_q4_0_q8_0_octs(w, x, o) },
                    // SAFETY: as above.
                    |w, x, o| unsafe { neon::dot_q8_0_q8_0_octs(w, x, o) },
                    // SAFETY: as above.
                    |w, x, o| unsafe { neon::dot4_q4_0_q8_0_octs(w, x, o) },
                    // SAFETY: as above.
                    |w, x, o| unsafe { neon::dot4_q8_0_q8_0_octs(w, x, o) },
                ),
            ));
        }
        #[cfg(all(target_arch = "aarch64", feature = "std"))]
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            v.push((
                "neon+dotprod",
                (
                    // SAFETY: dotprod (and so NEON) was detected above; equal block
                    // counts, the activation's octs.
                    |w, x, o| unsafe { neon::dot_q4_0_q8_0_octs_dotprod(w, x, o) },
                    // SAFETY: as above.
                    |w, x, o| unsafe { neon::dot_q8_0_q8_0_octs_dotprod(w, x, o) },
                    // SAFETY: as above.
                    |w, x, o| unsafe { neon::dot4_q4_0_q8_0_octs_dotprod(w, x, o) },
                    // SAFETY: as above.
                    |w, x, o| unsafe { neon::dot4_q8_0_q8_0_octs_dotprod(w, x, o) },
                ),
            ));
        }
        v
    }

    /// The octet Q4_0 and Q8_0 kernels ([`avx2::dot_q4_0_q8_0_octs`], the NEON ones with
    /// and without `SDOT`) against the scalar reference on ragged block counts (0–26
    /// blocks: last partial octets of 0–7 blocks) and saturated values (weights of −128
    /// and +127 against activations of ±127); the 4-row forms give every row the same
    /// bits; the activation octs are their definition.
    #[cfg(feature = "std")]
    #[test]
    fn grouped_kernels_match_the_scalar_reference() {
        let variants = octet_variants();
        std::eprintln!(
            "octet kernels: {:?}",
            variants.iter().map(|v| v.0).collect::<Vec<_>>()
        );
        for (name, kernels) in variants {
            octet_kernels_match(name, kernels);
        }
    }

    fn octet_kernels_match(name: &str, (dot_q4, dot_q8, dot4_q4, dot4_q8): OctKernels) {
        for seed in 0..400u64 {
            let blocks = (seed % 27) as usize;
            let n = 32 * blocks;
            let mut xs = rand(seed ^ 0x3c3c, n);
            let mut ws = rand(seed * 7 + 1, n);
            if seed % 5 == 0 {
                xs.iter_mut().for_each(|v| *v = v.signum());
                ws.iter_mut().for_each(|v| *v = -v.signum());
            }
            let (x, w) = (q8(&xs), q4(&ws));
            let mut octs = vec![Q8Oct::default(); x.len().div_ceil(8)];
            q8_octs(&x, &mut octs);
            for (g, o) in octs.iter().enumerate() {
                for (l, &k) in OCT_LANES.iter().enumerate() {
                    // past the end: the padding of a last partial octet
                    let (sum, scale) = x.get(8 * g + k).map_or((0, 0.0), |b| {
                        (b.qs.iter().map(|&v| 8 * i32::from(v)).sum(), b.d.to_f32())
                    });
                    assert_eq!((o.corr[l], o.scale[l]), (sum, scale));
                }
            }
            let got = dot_q4(&w, &x, &octs);
            let want = dot_q4_0_q8_0(&w, &x);
            // the 4-row kernel gives each row the 1-row kernel's bits
            let rows: Vec<Vec<BlockQ4_0>> = (0..4u64)
                .map(|r| {
                    if r == 2 {
                        w.clone()
                    } else {
                        q4(&rand(seed * 11 + r, n))
                    }
                })
                .collect();
            let four = dot4_q4([&rows[0], &rows[1], &rows[2], &rows[3]], &x, &octs);
            for (r, row) in rows.iter().enumerate() {
                let one = dot_q4(row, &x, &octs);
                assert_eq!(
                    four[r].to_bits(),
                    one.to_bits(),
                    "{name} seed {seed} row {r}"
                );
            }
            // the same for Q8_0 weights
            let mut w8 = q8(&ws);
            if seed % 5 == 0 {
                // a hostile file's −128 against the saturated activations
                w8.iter_mut().for_each(|b| b.qs[7] = -128);
            }
            let got8 = dot_q8(&w8, &x, &octs);
            let want8 = dot_q8_0_q8_0(&w8, &x);
            let scale8: f32 = w8
                .iter()
                .zip(&x)
                .map(|(a, b)| (a.d.to_f32() * b.d.to_f32()).abs() * 32.0 * 127.0 * 127.0)
                .sum();
            assert!(
                (got8 - want8).abs() <= 1e-6 * (1.0 + scale8),
                "{name} q8 seed {seed} ({blocks} blocks): {got8} vs {want8}"
            );
            let rows8: Vec<Vec<BlockQ8_0>> = (0..4u64)
                .map(|r| {
                    if r == 1 {
                        w8.clone()
                    } else {
                        q8(&rand(seed * 13 + r, n))
                    }
                })
                .collect();
            let four8 = dot4_q8([&rows8[0], &rows8[1], &rows8[2], &rows8[3]], &x, &octs);
            for (r, row) in rows8.iter().enumerate() {
                let one = dot_q8(row, &x, &octs);
                assert_eq!(
                    four8[r].to_bits(),
                    one.to_bits(),
                    "{name} q8 seed {seed} row {r}"
                );
            }
            let scale: f32 = w
                .iter()
                .zip(&x)
                .map(|(a, b)| (a.d.to_f32() * b.d.to_f32()).abs() * 32.0 * 8.0 * 127.0)
                .sum();
            assert!(
                (got - want).abs() <= 1e-6 * (1.0 + scale),
                "{name} seed {seed} ({blocks} blocks): {got} vs {want}"
            );
        }
    }

    type Dots = (
        fn(&[BlockQ8_0], &[f32]) -> f32,
        fn(&[BlockQ4_0], &[f32]) -> f32,
        fn(f32, &[BlockQ8_0], &mut [f32]),
        fn(f32, &[BlockQ4_0], &mut [f32]),
    );

    /// The SIMD variants this CPU runs (safe wrappers, after the run-time check).
    #[allow(unused_mut)]
    fn simd_variants() -> Vec<(&'static str, Dots)> {
        let mut v: Vec<(&'static str, Dots)> = Vec::new();
        #[cfg(all(target_arch = "x86_64", feature = "std"))]
        if has_avx2() {
            v.push((
                "avx2",
                (
                    // SAFETY: the features were detected above; x/y hold 32 values per block.
                    |w, x| unsafe { avx2::dot_q8_0(w, x) },
                    // SAFETY: the features were detected above; x/y hold 32 values per block.
                    |w, x| unsafe { avx2::dot_q4_0(w, x) },
                    // SAFETY: the features were detected above; x/y hold 32 values per block.
                    |a, w, y| unsafe { avx2::axpy_q8_0(a, w, y) },
                    // SAFETY: the features were detected above; x/y hold 32 values per block.
                    |a, w, y| unsafe { avx2::axpy_q4_0(a, w, y) },
                ),
            ));
        }
        #[cfg(all(target_arch = "x86_64", feature = "std"))]
        if has_avx512bw() {
            v.push((
                "avx512",
                (
                    // SAFETY: the features were detected above; x/y hold 32 values per block.
                    |w, x| unsafe { avx512::dot_q8_0(w, x) },
                    // SAFETY: as above.
                    |w, x| unsafe { avx512::dot_q4_0(w, x) },
                    // SAFETY: as above.
                    |a, w, y| unsafe { avx512::axpy_q8_0(a, w, y) },
                    // SAFETY: as above.
                    |a, w, y| unsafe { avx512::axpy_q4_0(a, w, y) },
                ),
            ));
        }
        #[cfg(all(target_arch = "aarch64", feature = "std"))]
        if std::arch::is_aarch64_feature_detected!("neon") {
            v.push((
                "neon",
                (
                    // SAFETY: the features were detected above; x/y hold 32 values per block.
                    |w, x| unsafe { neon::dot_q8_0(w, x) },
                    // SAFETY: the features were detected above; x/y hold 32 values per block.
                    |w, x| unsafe { neon::dot_q4_0(w, x) },
                    // SAFETY: the features were detected above; x/y hold 32 values per block.
                    |a, w, y| unsafe { neon::axpy_q8_0(a, w, y) },
                    // SAFETY: the features were detected above; x/y hold 32 values per block.
                    |a, w, y| unsafe { neon::axpy_q4_0(a, w, y) },
                ),
            ));
        }
        v
    }

    #[test]
    fn simd_variants_match_the_references_on_random_lengths() {
        let variants = simd_variants();
        for seed in 0..300u64 {
            let blocks = (seed % 23) as usize; // 0..22 blocks, ragged block counts
            let n = 32 * blocks;
            let scale = [0.01f32, 1.0, 40.0][(seed % 3) as usize];
            let w: Vec<f32> = rand(seed, n).iter().map(|v| v * scale).collect();
            let x = rand(seed ^ 0xabc, n);
            let (b8, b4) = (q8(&w), q4(&w));
            let (mut d8, mut d4) = (vec![0f32; n], vec![0f32; n]);
            crate::quantize::dequantize_row_q8_0(&b8, &mut d8);
            crate::quantize::dequantize_row_q4_0(&b4, &mut d4);
            let a = 0.75 - (seed % 5) as f32;
            for (name, (dot8, dot4, axpy8, axpy4)) in &variants {
                let (r8, r4) = (dot_q8_0(&b8, &x), dot_q4_0(&b4, &x));
                assert!(
                    (dot8(&b8, &x) - r8).abs() <= tol(&d8, &x),
                    "{name} q8 {seed}"
                );
                assert!(
                    (dot4(&b4, &x) - r4).abs() <= tol(&d4, &x),
                    "{name} q4 {seed}"
                );
                let (mut y1, mut y2) = (x.clone(), x.clone());
                axpy_q8_0(a, &b8, &mut y1);
                axpy8(a, &b8, &mut y2);
                for i in 0..n {
                    let t = 1e-6 * (x[i].abs() + (a * d8[i]).abs()) + 1e-7;
                    assert!((y1[i] - y2[i]).abs() <= t, "{name} axpy q8 {seed} {i}");
                }
                let (mut y1, mut y2) = (x.clone(), x.clone());
                axpy_q4_0(a, &b4, &mut y1);
                axpy4(a, &b4, &mut y2);
                for i in 0..n {
                    let t = 1e-6 * (x[i].abs() + (a * d4[i]).abs()) + 1e-7;
                    assert!((y1[i] - y2[i]).abs() <= t, "{name} axpy q4 {seed} {i}");
                }
            }
        }
    }

    type RowsKernel = fn(&[f32], &[BlockQ4_0], usize, usize, &mut [f32]) -> bool;

    #[allow(unused_mut)]
    fn simd_rows_kernels() -> Vec<(&'static str, RowsKernel)> {
        let mut v: Vec<(&'static str, RowsKernel)> = Vec::new();
        #[cfg(all(target_arch = "x86_64", feature = "std"))]
        if has_avx2() {
            // SAFETY: the features were detected above; the tests pass tiles within the
            // documented bounds.
            v.push(("avx2", |x, w, ld, nb, y| unsafe {
                avx2::axpy_rows_q4_0(x, w, ld, nb, y)
            }));
        }
        #[cfg(all(target_arch = "aarch64", feature = "std"))]
        if std::arch::is_aarch64_feature_detected!("neon") {
            // SAFETY: NEON was detected above; tiles within the documented bounds.
            v.push(("neon", |x, w, ld, nb, y| unsafe {
                neon::axpy_rows_q4_0(x, w, ld, nb, y)
            }));
        }
        v
    }

    /// The integer transposed tile: the reference is within its rounding bound of the f32
    /// product with the dequantised weights, and every SIMD version equals the reference
    /// bit for bit, on random ragged tiles (rows 0..=32, blocks 0..=32, padded strides,
    /// rows of very different magnitudes, zero rows).
    #[test]
    fn integer_rows_tiles_match_the_reference() {
        let variants = simd_rows_kernels();
        #[cfg(feature = "std")]
        std::eprintln!(
            "rows-tile variants checked: {:?}",
            variants.iter().map(|v| v.0).collect::<Vec<_>>()
        );
        for seed in 0..400u64 {
            let rows = (seed % 33) as usize;
            let nb = ((seed * 7) % 33) as usize;
            let ld = nb + (seed % 3) as usize;
            let wf: Vec<f32> = rand(seed, 32 * ld * rows.max(1))
                .iter()
                .map(|v| v * 2.0)
                .collect();
            let w = q4(&wf);
            let mut x = rand(seed ^ 0x1234, rows);
            for (r, v) in x.iter_mut().enumerate() {
                // magnitudes spread over 1e-3..1e2, some rows exactly zero
                *v *= [1e-3, 1.0, 1e2, 0.0, 0.3][(r + seed as usize) % 5];
            }
            let y0 = rand(seed ^ 0x99, 32 * nb);
            let mut want = y0.clone();
            assert!(axpy_rows_q4_0(&x, &w, ld, nb, &mut want), "seed {seed}");
            // against f32 arithmetic on the dequantised weights
            let mut deq = vec![0f32; 32];
            for b in 0..nb {
                let amax = (0..rows)
                    .map(|r| (x[r] * w[r * ld + b].d.to_f32()).abs())
                    .fold(0f32, f32::max);
                for i in 0..32 {
                    let mut exact = y0[32 * b + i] as f64;
                    let mut bound = 0f64;
                    for r in 0..rows {
                        crate::quantize::dequantize_row_q4_0(
                            &w[r * ld + b..r * ld + b + 1],
                            &mut deq,
                        );
                        exact += x[r] as f64 * deq[i] as f64;
                        let q = (deq[i] / w[r * ld + b].d.to_f32()).abs() as f64;
                        bound += q * amax as f64 / 254.0 * 1.001;
                    }
                    let got = want[32 * b + i] as f64;
                    let t = bound + 1e-6 * (exact.abs() + 1.0);
                    assert!(
                        (got - exact).abs() <= t,
                        "seed {seed} b {b} i {i}: {got} vs {exact}"
                    );
                }
            }
            for (name, k) in &variants {
                let mut got = y0.clone();
                assert!(k(&x, &w, ld, nb, &mut got), "{name} seed {seed}");
                for i in 0..32 * nb {
                    assert_eq!(
                        got[i].to_bits(),
                        want[i].to_bits(),
                        "{name} seed {seed} at {i}"
                    );
                }
            }
        }
    }

    /// A non-finite or tiny `x·d` refuses the tile (nothing written) in every version.
    #[test]
    fn integer_rows_tiles_refuse_what_they_cannot_quantise() {
        let w = q4(&rand(5, 32 * 4 * 3));
        let y0 = rand(6, 32 * 4);
        let mut all: Vec<(&str, RowsKernel)> = vec![("scalar", axpy_rows_q4_0)];
        all.extend(simd_rows_kernels());
        for (name, k) in &all {
            for x in [
                [0.5, f32::NAN, -0.25],
                [0.5, f32::INFINITY, -0.25],
                [1e-33, 0.0, -2e-33],
            ] {
                let mut y = y0.clone();
                assert!(!k(&x, &w, 4, 4, &mut y), "{name} {x:?}");
                assert_eq!(y, y0, "{name} wrote on refusal");
            }
            // all-zero activations are fine and add nothing
            let mut y = y0.clone();
            assert!(k(&[0.0; 3], &w, 4, 4, &mut y), "{name} zeros");
            assert_eq!(y, y0);
        }
    }

    /// Ties round to even (as the SIMD conversions do): with `d = 1` and amax = 127 the
    /// activations are their own `c'`, so 2.5 → 2 and 4.5 → 4.
    #[test]
    fn integer_rows_tiles_round_ties_to_even() {
        let blk = BlockQ4_0 {
            d: f16::from_f32(1.0),
            qs: [0x99; 16], // every weight 9 − 8 = 1
        };
        let w = vec![blk; 4];
        let mut all: Vec<(&str, RowsKernel)> = vec![("scalar", axpy_rows_q4_0)];
        all.extend(simd_rows_kernels());
        for (name, k) in &all {
            let mut y = vec![0f32; 32];
            assert!(k(&[127.0, 2.5, 4.5, 0.0], &w, 1, 1, &mut y));
            assert!(y.iter().all(|&v| v == 133.0), "{name}: {y:?}");
        }
    }
}
