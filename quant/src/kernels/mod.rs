//! Products of block-quantised weight rows with f32 activations: dot products (one output
//! of `y = x·Wᵀ`) and scaled accumulation `y += a·w` (one input row of `y = x·W`), for Q8_0
//! and Q4_0. The scalar versions here are the references; [`avx2`] (x86-64) and [`neon`]
//! (aarch64) are `unsafe fn`s with `#[target_feature]`, chosen at run time by
//! `modula-core`'s dispatcher, and proptested against these references.
//!
//! Summation order: per block, the 32 products are summed, then scaled by the block's `d`
//! and added to the running total. The SIMD versions keep per-lane partial sums (a
//! different order), so they agree with the references to rounding, not bit for bit.

use crate::blocks::{BlockQ4_0, BlockQ8_0, QK4_0, QK8_0};

#[cfg(target_arch = "x86_64")]
pub mod avx2;
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

/// What the grouped Q4_0 × Q8_0 kernel ([`avx2::dot_q4_0_q8_0_quads`]) reuses across the
/// weight rows of one product, per group of 4 consecutive activation blocks `a, b, c, d`:
/// `8 ×` the sum of each block's first and second 16 values, laid out as the kernel's
/// reduced lanes `[a₀, b₀, c₀, d₀, a₁, b₁, c₁, d₁]`, and the 4 block scales as f32.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C, align(32))]
pub struct Q8Quad {
    /// `8 × Σ x[0..16]` of blocks a..d, then `8 × Σ x[16..32]` of blocks a..d.
    pub corr: [i32; 8],
    /// The 4 blocks' scales `d` as f32.
    pub scale: [f32; 4],
}

/// [`Q8Quad`]s of `x`, one per whole group of 4 blocks (`out.len() == x.len() / 4`; the
/// last `x.len() % 4` blocks have none).
pub fn q8_quads(x: &[BlockQ8_0], out: &mut [Q8Quad]) {
    for (g, o) in x.chunks_exact(4).zip(out.iter_mut()) {
        for (k, b) in g.iter().enumerate() {
            let half = |r: core::ops::Range<usize>| -> i32 {
                8 * b.qs[r].iter().map(|&v| i32::from(v)).sum::<i32>()
            };
            o.corr[k] = half(0..16);
            o.corr[4 + k] = half(16..32);
            o.scale[k] = b.d.to_f32();
        }
    }
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
    fn has_avx2() -> bool {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
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

    /// The grouped Q4_0 and Q8_0 kernels ([`avx2::dot_q4_0_q8_0_quads`],
    /// [`avx2::dot_q8_0_q8_0_quads`]) against the scalar reference on ragged block counts (tails of 0–3 blocks) and saturated values; its
    /// 4-row form gives every row the same bits; its activation quads are their definition.
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    #[test]
    fn grouped_kernels_match_the_scalar_reference() {
        if !has_avx2() {
            return;
        }
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
            let mut quads = vec![Q8Quad::default(); x.len() / 4];
            q8_quads(&x, &mut quads);
            for (g, q) in quads.iter().enumerate() {
                for k in 0..4 {
                    let b = &x[4 * g + k];
                    let sum = |r: core::ops::Range<usize>| -> i32 {
                        r.map(|i| 8 * i32::from(b.qs[i])).sum()
                    };
                    assert_eq!((q.corr[k], q.corr[4 + k]), (sum(0..16), sum(16..32)));
                    assert_eq!(q.scale[k], b.d.to_f32());
                }
            }
            // SAFETY: the features were detected above; equal block counts.
            let got = unsafe { avx2::dot_q4_0_q8_0_quads(&w, &x, &quads) };
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
            // SAFETY: as above.
            let four = unsafe {
                avx2::dot4_q4_0_q8_0_quads([&rows[0], &rows[1], &rows[2], &rows[3]], &x, &quads)
            };
            for (r, row) in rows.iter().enumerate() {
                // SAFETY: as above.
                let one = unsafe { avx2::dot_q4_0_q8_0_quads(row, &x, &quads) };
                assert_eq!(four[r].to_bits(), one.to_bits(), "seed {seed} row {r}");
            }
            // the same for Q8_0 weights
            let w8 = q8(&ws);
            // SAFETY: as above.
            let got8 = unsafe { avx2::dot_q8_0_q8_0_quads(&w8, &x, &quads) };
            let want8 = dot_q8_0_q8_0(&w8, &x);
            let scale8: f32 = w8
                .iter()
                .zip(&x)
                .map(|(a, b)| (a.d.to_f32() * b.d.to_f32()).abs() * 32.0 * 127.0 * 127.0)
                .sum();
            assert!(
                (got8 - want8).abs() <= 1e-6 * (1.0 + scale8),
                "q8 seed {seed} ({blocks} blocks): {got8} vs {want8}"
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
            // SAFETY: as above.
            let four8 = unsafe {
                avx2::dot4_q8_0_q8_0_quads([&rows8[0], &rows8[1], &rows8[2], &rows8[3]], &x, &quads)
            };
            for (r, row) in rows8.iter().enumerate() {
                // SAFETY: as above.
                let one = unsafe { avx2::dot_q8_0_q8_0_quads(row, &x, &quads) };
                assert_eq!(four8[r].to_bits(), one.to_bits(), "q8 seed {seed} row {r}");
            }
            let scale: f32 = w
                .iter()
                .zip(&x)
                .map(|(a, b)| (a.d.to_f32() * b.d.to_f32()).abs() * 32.0 * 8.0 * 127.0)
                .sum();
            assert!(
                (got - want).abs() <= 1e-6 * (1.0 + scale),
                "seed {seed} ({blocks} blocks): {got} vs {want}"
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
}
