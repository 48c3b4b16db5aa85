//! Integer products of K-quant weight rows (Q4_K, Q6_K) with activations quantised to
//! [`BlockQ8K`] — llama.cpp's `vec_dot_q4_K_q8_K` / `vec_dot_q6_K_q8_K` arithmetic. The
//! scalar functions here are the references; [`avx2`] (x86-64) and `neon` (aarch64) are
//! `unsafe fn`s with `#[target_feature]`, dispatched by `modula-core` and tested against
//! these.
//!
//! **Bit-identical across ISAs.** Per super-block every integer sum is exact in `i32`
//! (the largest, Q6_K's, is below 2^23), and the f32 part — one combination per
//! super-block, accumulated in block order — is the same function ([`acc_q4_k`],
//! [`acc_q6_k`]) in every variant. So a SIMD kernel gives exactly the scalar result, and a
//! model's output does not depend on the machine's ISA.

use crate::blocks::{q4k_scale_min, BlockQ4K, BlockQ6K, BlockQ8K, QK_K};

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "aarch64")]
pub mod neon;

/// Quantise `x` (`x.len() == 256 · out.len()`) to Q8_K as ggml's `quantize_row_q8_K_ref`:
/// per super-block the value of largest magnitude `max` (with its sign), `iscale =
/// −127 / max`, `q = min(127, rint(iscale·x))` (ties to even), `d = 1 / iscale`, and the
/// sums of each 16 quants. An all-zero block gives `d = 0`, zero quants and sums. False
/// (with `out` unspecified) when a value is not finite.
pub fn quantize_q8_k(x: &[f32], out: &mut [BlockQ8K]) -> bool {
    debug_assert_eq!(x.len(), QK_K * out.len());
    for (b, xb) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
        let (mut max, mut amax) = (0f32, 0f32);
        for &v in xb {
            if !v.is_finite() {
                return false;
            }
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            *b = BlockQ8K::ZERO;
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in b.qs.iter_mut().zip(xb) {
            *q = (libm::rintf(iscale * v) as i32).min(127) as i8;
        }
        for (s, c) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
            *s = c.iter().map(|&q| i16::from(q)).sum();
        }
        b.d = 1.0 / iscale;
    }
    true
}

/// The eight 6-bit scales and eight 6-bit mins of a Q4_K block, unpacked.
#[inline(always)]
pub fn q4k_scales_mins(b: &BlockQ4K) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    for j in 0..8 {
        (sc[j], mn[j]) = q4k_scale_min(j, &b.scales);
    }
    (sc, mn)
}

/// The Q4_K scales and mins unpacked with word operations (ggml's layout of the 12 packed
/// bytes): as bytes, words 0–1 hold the eight 6-bit scales and words 2–3 the eight mins —
/// what the SIMD kernels widen to 16 lanes in one instruction. Equal to
/// [`q4k_scales_mins`] (tested).
#[inline(always)]
pub fn q4k_unpack(q: &[u8; 12]) -> [u32; 4] {
    const SIX: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const TOP2: u32 = 0x0303_0303;
    let w = |i: usize| u32::from_le_bytes([q[4 * i], q[4 * i + 1], q[4 * i + 2], q[4 * i + 3]]);
    let (a, b, c) = (w(0), w(1), w(2));
    [
        a & SIX,
        (c & LOW4) | (((a >> 6) & TOP2) << 4),
        b & SIX,
        ((c >> 4) & LOW4) | (((b >> 6) & TOP2) << 4),
    ]
}

/// `Σ_j bsums[j] · mins[j / 2]`: the Q4_K mins times the activation sums (exact).
#[inline(always)]
pub fn q4k_min_sum(mn: &[u8; 8], x: &BlockQ8K) -> i32 {
    let mut s = 0i32;
    for (j, &b) in x.bsums.iter().enumerate() {
        s += i32::from(b) * i32::from(mn[j / 2]);
    }
    s
}

/// `Σ_j scales[j] · bsums[j]`: the Q6_K scales times the activation sums (exact), which
/// times 32 is the offset the unsigned 6-bit codes carry.
#[inline(always)]
pub fn q6k_offset_sum(w: &BlockQ6K, x: &BlockQ8K) -> i32 {
    let mut s = 0i32;
    for (&sc, &b) in w.scales.iter().zip(&x.bsums) {
        s += i32::from(sc) * i32::from(b);
    }
    s
}

/// One Q4_K super-block's part of the dot product added to `acc`: `sumi = Σ_s sc_s · Σ
/// q·q8` over the sub-blocks, `summ` = [`q4k_min_sum`]. The one f32 formula every variant
/// uses (ggml's: `d·sumi − dmin·summ` with `d`, `dmin` times the activation scale).
/// `wd`, `wdmin`: the block's `d` and `dmin` as f32 (an exact conversion, which the SIMD
/// kernels do with their own instruction).
#[inline(always)]
pub fn acc_q4_k(acc: f32, wd: f32, wdmin: f32, x: &BlockQ8K, sumi: i32, summ: i32) -> f32 {
    let d = x.d * wd;
    let dmin = x.d * wdmin;
    acc + d * sumi as f32 - dmin * summ as f32
}

/// One Q6_K super-block's part: `sumi = Σ_s scales_s · Σ (q − 32)·q8` (exact), times
/// `d·d_x` (`wd`: the block's `d` as f32).
#[inline(always)]
pub fn acc_q6_k(acc: f32, wd: f32, x: &BlockQ8K, sumi: i32) -> f32 {
    acc + (x.d * wd) * sumi as f32
}

/// `Σ_i dequant(w)[i] · dequant(x)[i]` over `w.len()` Q4_K super-blocks (`x.len() ==
/// w.len()`), in integer arithmetic per super-block (see the module docs).
pub fn dot_q4_k_q8_k(w: &[BlockQ4K], x: &[BlockQ8K]) -> f32 {
    let mut acc = 0f32;
    for (b, y) in w.iter().zip(x) {
        let (sc, mn) = q4k_scales_mins(b);
        let mut sumi = 0i32;
        for g in 0..4 {
            let q = &b.qs[32 * g..32 * g + 32];
            let (y0, y1) = (&y.qs[64 * g..64 * g + 32], &y.qs[64 * g + 32..64 * g + 64]);
            let (mut s0, mut s1) = (0i32, 0i32);
            for l in 0..32 {
                s0 += i32::from(q[l] & 0x0f) * i32::from(y0[l]);
                s1 += i32::from(q[l] >> 4) * i32::from(y1[l]);
            }
            sumi += i32::from(sc[2 * g]) * s0 + i32::from(sc[2 * g + 1]) * s1;
        }
        acc = acc_q4_k(
            acc,
            b.d.to_f32(),
            b.dmin.to_f32(),
            y,
            sumi,
            q4k_min_sum(&mn, y),
        );
    }
    acc
}

/// The unsigned 6-bit code (0..64) of weight `i` of a Q6_K block (the weight is
/// `d·scale·(code − 32)`).
#[inline(always)]
pub fn q6k_code(b: &BlockQ6K, i: usize) -> u8 {
    let (h, r) = (i / 128, i % 128);
    let (quarter, l) = (r / 32, r % 32);
    let ql = b.ql[64 * h + l + 32 * (quarter & 1)];
    let lo = if quarter < 2 { ql & 0x0f } else { ql >> 4 };
    let hi = (b.qh[32 * h + l] >> (2 * quarter)) & 3;
    lo | (hi << 4)
}

/// [`dot_q4_k_q8_k`] for Q6_K weights: per super-block `Σ_s scales_s · (Σ code·q8 −
/// 32·bsums_s)` in integers.
pub fn dot_q6_k_q8_k(w: &[BlockQ6K], x: &[BlockQ8K]) -> f32 {
    let mut acc = 0f32;
    for (b, y) in w.iter().zip(x) {
        let mut sumi = 0i32;
        for s in 0..16 {
            let mut p = 0i32;
            for i in 16 * s..16 * s + 16 {
                p += i32::from(q6k_code(b, i)) * i32::from(y.qs[i]);
            }
            sumi += i32::from(b.scales[s]) * p;
        }
        acc = acc_q6_k(acc, b.d.to_f32(), y, sumi - 32 * q6k_offset_sum(b, y));
    }
    acc
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::kernels::tests::rand;
    use crate::quantize::{
        dequantize_row_q4_k, dequantize_row_q6_k, quantize_row_q4_k, quantize_row_q6_k,
    };
    use alloc::vec;
    use alloc::vec::Vec;

    pub(crate) fn q4k(x: &[f32]) -> Vec<BlockQ4K> {
        let mut b: Vec<BlockQ4K> = bytemuck::zeroed_vec(x.len() / QK_K);
        quantize_row_q4_k(x, &mut b).unwrap();
        b
    }

    pub(crate) fn q6k(x: &[f32]) -> Vec<BlockQ6K> {
        let mut b: Vec<BlockQ6K> = bytemuck::zeroed_vec(x.len() / QK_K);
        quantize_row_q6_k(x, &mut b).unwrap();
        b
    }

    pub(crate) fn q8k(x: &[f32]) -> Vec<BlockQ8K> {
        let mut b = vec![BlockQ8K::ZERO; x.len() / QK_K];
        assert!(quantize_q8_k(x, &mut b));
        b
    }

    /// Random blocks with every bit pattern of the quants and scales (not only what a
    /// quantiser writes): extreme codes, negative Q6_K scales, 6-bit Q4_K scales.
    pub(crate) fn random_q4k(seed: u64, n: usize) -> Vec<BlockQ4K> {
        let bytes = rand_bytes(seed, n * 144);
        let mut b: Vec<BlockQ4K> = bytemuck::pod_collect_to_vec(&bytes);
        for (i, blk) in b.iter_mut().enumerate() {
            let r = rand(seed + i as u64, 2);
            blk.d = half::f16::from_f32(r[0] * 0.01);
            blk.dmin = half::f16::from_f32(r[1] * 0.01);
        }
        b
    }

    pub(crate) fn random_q6k(seed: u64, n: usize) -> Vec<BlockQ6K> {
        let bytes = rand_bytes(seed, n * 210);
        let mut b: Vec<BlockQ6K> = bytemuck::pod_collect_to_vec(&bytes);
        for (i, blk) in b.iter_mut().enumerate() {
            blk.d = half::f16::from_f32(rand(seed + i as u64, 1)[0] * 0.01);
        }
        b
    }

    pub(crate) fn random_q8k(seed: u64, n: usize) -> Vec<BlockQ8K> {
        let mut x = rand(seed, n * QK_K);
        // the extremes the quantiser can write: -127 (the largest magnitude) and 127
        x[0] = 3.0;
        if x.len() > 300 {
            x[300] = -3.0;
        }
        q8k(&x)
    }

    fn rand_bytes(seed: u64, n: usize) -> Vec<u8> {
        let mut s = seed ^ 0x9e37_79b9_7f4a_7c15;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (s >> 56) as u8
            })
            .collect()
    }

    fn dequant_q8k(x: &[BlockQ8K]) -> Vec<f32> {
        x.iter()
            .flat_map(|b| b.qs.iter().map(move |&q| b.d * f32::from(q)))
            .collect()
    }

    fn dot64(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(&p, &q)| f64::from(p) * f64::from(q))
            .sum()
    }

    #[test]
    fn q8_k_is_ggmls_quantiser() {
        let x = rand(7, 2 * QK_K);
        let b = q8k(&x);
        for (blk, xb) in b.iter().zip(x.chunks_exact(QK_K)) {
            let imax = (0..QK_K)
                .max_by(|&i, &j| xb[i].abs().total_cmp(&xb[j].abs()))
                .unwrap();
            assert_eq!(blk.qs[imax], -127, "the largest magnitude maps to -127");
            for (i, (&q, &v)) in blk.qs.iter().zip(xb).enumerate() {
                let back = blk.d * f32::from(q);
                assert!((back - v).abs() <= blk.d.abs() * 0.5 + 1e-7, "value {i}");
            }
            for j in 0..16 {
                let s: i32 = blk.qs[16 * j..16 * j + 16]
                    .iter()
                    .map(|&q| i32::from(q))
                    .sum();
                assert_eq!(i32::from(blk.bsums[j]), s);
            }
        }
        let mut z = vec![BlockQ8K::ZERO; 1];
        z[0].bsums[3] = 5;
        assert!(quantize_q8_k(&[0.0; QK_K], &mut z));
        assert_eq!(z[0], BlockQ8K::ZERO);
        let mut bad = vec![0.0f32; QK_K];
        bad[17] = f32::NAN;
        assert!(!quantize_q8_k(&bad, &mut z));
    }

    #[test]
    fn word_unpacking_gives_the_scales_and_mins() {
        for b in random_q4k(9, 64) {
            let (sc, mn) = q4k_scales_mins(&b);
            let u = q4k_unpack(&b.scales);
            let bytes: alloc::vec::Vec<u8> = u.iter().flat_map(|w| w.to_le_bytes()).collect();
            assert_eq!(&bytes[..8], &sc[..]);
            assert_eq!(&bytes[8..], &mn[..]);
        }
    }

    #[test]
    fn q6k_codes_are_the_dequantisers_codes() {
        let b = random_q6k(3, 1);
        let mut out = [0f32; QK_K];
        b[0].dequantize(&mut out);
        let d = b[0].d.to_f32();
        for (i, got) in out.iter().enumerate() {
            let want =
                d * f32::from(b[0].scales[i / 16]) * (i32::from(q6k_code(&b[0], i)) - 32) as f32;
            assert_eq!(got.to_bits(), want.to_bits(), "weight {i}");
        }
    }

    /// The references equal the f64 products of the dequantised operands (so they are the
    /// product the format defines), on random bit patterns and on quantised data.
    #[test]
    fn references_are_the_dequantised_products() {
        for n in [1usize, 2, 3, 5] {
            let x = random_q8k(10 + n as u64, n);
            let xf = dequant_q8k(&x);
            let w4 = random_q4k(20 + n as u64, n);
            let w6 = random_q6k(30 + n as u64, n);
            let (mut f4, mut f6) = (vec![0f32; n * QK_K], vec![0f32; n * QK_K]);
            dequantize_row_q4_k(&w4, &mut f4);
            dequantize_row_q6_k(&w6, &mut f6);
            for (got, f) in [(dot_q4_k_q8_k(&w4, &x), &f4), (dot_q6_k_q8_k(&w6, &x), &f6)] {
                let want = dot64(f, &xf);
                let scale: f64 = f
                    .iter()
                    .zip(&xf)
                    .map(|(a, b)| f64::from((a * b).abs()))
                    .sum();
                assert!(
                    (f64::from(got) - want).abs() <= 1e-5 * scale + 1e-6,
                    "n {n}: {got} vs {want}"
                );
            }
            // and on what the quantisers write, against the f32 activations
            let xr = rand(40 + n as u64, n * QK_K);
            let wr = rand(50 + n as u64, n * QK_K);
            let (w4, w6, x8) = (q4k(&wr), q6k(&wr), q8k(&xr));
            dequantize_row_q4_k(&w4, &mut f4);
            dequantize_row_q6_k(&w6, &mut f6);
            for (got, f) in [
                (dot_q4_k_q8_k(&w4, &x8), &f4),
                (dot_q6_k_q8_k(&w6, &x8), &f6),
            ] {
                let want = dot64(f, &xr);
                let scale: f64 = f
                    .iter()
                    .zip(&xr)
                    .map(|(a, b)| f64::from((a * b).abs()))
                    .sum();
                // the activations' own rounding: at most half a step of 1/127 of the
                // block's largest magnitude per value
                assert!(
                    (f64::from(got) - want).abs() <= 0.01 * scale + 1e-6,
                    "n {n}: {got} vs {want}"
                );
            }
        }
    }

    type KDots = (
        fn(&[BlockQ4K], &[BlockQ8K]) -> f32,
        fn(&[BlockQ6K], &[BlockQ8K]) -> f32,
    );

    /// The SIMD variants this CPU runs (safe wrappers, after the run-time check).
    #[allow(unused_mut)]
    fn variants() -> Vec<(&'static str, KDots)> {
        let mut v: Vec<(&'static str, KDots)> = Vec::new();
        #[cfg(all(target_arch = "x86_64", feature = "std"))]
        if crate::kernels::tests::has_avx2() {
            v.push((
                "avx2",
                (
                    // SAFETY: the features were detected above; the lengths are the caller's.
                    |w, x| unsafe { avx2::dot_q4_k_q8_k(w, x) },
                    // SAFETY: as above.
                    |w, x| unsafe { avx2::dot_q6_k_q8_k(w, x) },
                ),
            ));
        }
        #[cfg(all(target_arch = "aarch64", feature = "std"))]
        if std::arch::is_aarch64_feature_detected!("neon") {
            v.push((
                "neon",
                (
                    // SAFETY: the features were detected above; the lengths are the caller's.
                    |w, x| unsafe { neon::dot_q4_k_q8_k(w, x) },
                    // SAFETY: as above.
                    |w, x| unsafe { neon::dot_q6_k_q8_k(w, x) },
                ),
            ));
        }
        v
    }

    /// Each SIMD kernel gives the scalar reference's bits, on random bit patterns of every
    /// field and on 1–9 super-blocks.
    #[test]
    fn simd_kernels_give_the_references_bits() {
        let vs = variants();
        for n in 1..=9usize {
            for seed in 0..4u64 {
                let s = 1000 * n as u64 + seed;
                let x = random_q8k(s, n);
                let (w4, w6) = (random_q4k(s + 1, n), random_q6k(s + 2, n));
                let (r4, r6) = (dot_q4_k_q8_k(&w4, &x), dot_q6_k_q8_k(&w6, &x));
                for &(name, (d4, d6)) in &vs {
                    let (g4, g6) = (d4(&w4, &x), d6(&w6, &x));
                    assert_eq!(
                        g4.to_bits(),
                        r4.to_bits(),
                        "{name} q4_k n {n}: {g4} vs {r4}"
                    );
                    assert_eq!(
                        g6.to_bits(),
                        r6.to_bits(),
                        "{name} q6_k n {n}: {g6} vs {r6}"
                    );
                }
            }
        }
    }
}
