//! AVX2 + FMA + F16C versions of the quantised products (8 f32 lanes). Every function
//! requires those features (the caller checks them at run time) and the lengths its
//! reference in the parent module documents: `x`/`y` hold `w.len() × 32` values.

use crate::blocks::{BlockQ4_0, BlockQ8_0};
use core::arch::x86_64::*;

/// 32 signed bytes at `p` as four vectors of 8 f32. Requires AVX2 and 32 readable bytes.
#[inline(always)]
unsafe fn widen_i8x32(p: *const i8) -> [__m256; 4] {
    // SAFETY: the caller guarantees AVX2 and 32 readable bytes at p.
    unsafe {
        let lo = _mm_loadu_si128(p.cast());
        let hi = _mm_loadu_si128(p.add(16).cast());
        [
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)),
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128::<8>(lo))),
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)),
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128::<8>(hi))),
        ]
    }
}

/// The 32 weights of a Q4_0 block, minus 8, as four vectors of 8 f32 (weights 0..8,
/// 8..16, 16..24, 24..32). Requires AVX2.
#[inline(always)]
unsafe fn widen_q4(b: &BlockQ4_0) -> [__m256; 4] {
    // SAFETY: the caller guarantees AVX2; the block holds 16 bytes of nibbles.
    unsafe {
        let v = _mm_loadu_si128(b.qs.as_ptr().cast());
        let mask = _mm_set1_epi8(0x0f);
        let eight = _mm_set1_epi8(8);
        let lo = _mm_sub_epi8(_mm_and_si128(v, mask), eight);
        let hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16::<4>(v), mask), eight);
        [
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)),
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128::<8>(lo))),
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)),
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128::<8>(hi))),
        ]
    }
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    // SAFETY: the caller guarantees AVX.
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
}

/// Dot product of one block's four weight vectors with 32 values at `x`.
#[inline(always)]
unsafe fn block_dot(q: [__m256; 4], x: *const f32) -> __m256 {
    // SAFETY: the caller guarantees AVX2+FMA and 32 readable f32 at x.
    unsafe {
        let mut s = _mm256_mul_ps(q[0], _mm256_loadu_ps(x));
        s = _mm256_fmadd_ps(q[1], _mm256_loadu_ps(x.add(8)), s);
        s = _mm256_fmadd_ps(q[2], _mm256_loadu_ps(x.add(16)), s);
        _mm256_fmadd_ps(q[3], _mm256_loadu_ps(x.add(24)), s)
    }
}

/// [`super::dot_q8_0`].
///
/// # Safety
/// AVX2, FMA and F16C available; `x.len() >= w.len() * 32`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8_0(w: &[BlockQ8_0], x: &[f32]) -> f32 {
    debug_assert!(x.len() >= w.len() * 32);
    // SAFETY: features are the caller's; block i reads x[32i..32i+32], in bounds.
    unsafe {
        let mut acc = _mm256_setzero_ps();
        for (i, b) in w.iter().enumerate() {
            let s = block_dot(widen_i8x32(b.qs.as_ptr()), x.as_ptr().add(32 * i));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(b.d.to_f32()), s, acc);
        }
        hsum(acc)
    }
}

/// [`super::dot_q4_0`].
///
/// # Safety
/// AVX2, FMA and F16C available; `x.len() >= w.len() * 32`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_0(w: &[BlockQ4_0], x: &[f32]) -> f32 {
    debug_assert!(x.len() >= w.len() * 32);
    // SAFETY: as for dot_q8_0.
    unsafe {
        let mut acc = _mm256_setzero_ps();
        for (i, b) in w.iter().enumerate() {
            let s = block_dot(widen_q4(b), x.as_ptr().add(32 * i));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(b.d.to_f32()), s, acc);
        }
        hsum(acc)
    }
}

/// `y[0..32] += s · q` for one block's weight vectors.
#[inline(always)]
unsafe fn block_axpy(q: [__m256; 4], s: __m256, y: *mut f32) {
    // SAFETY: the caller guarantees AVX+FMA and 32 writable f32 at y.
    unsafe {
        for (k, v) in q.iter().enumerate() {
            let p = y.add(8 * k);
            _mm256_storeu_ps(p, _mm256_fmadd_ps(*v, s, _mm256_loadu_ps(p)));
        }
    }
}

/// [`super::axpy_q8_0`].
///
/// # Safety
/// AVX2, FMA and F16C available; `y.len() >= w.len() * 32`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn axpy_q8_0(a: f32, w: &[BlockQ8_0], y: &mut [f32]) {
    debug_assert!(y.len() >= w.len() * 32);
    // SAFETY: block i writes y[32i..32i+32], in bounds.
    unsafe {
        for (i, b) in w.iter().enumerate() {
            let s = _mm256_set1_ps(a * b.d.to_f32());
            block_axpy(widen_i8x32(b.qs.as_ptr()), s, y.as_mut_ptr().add(32 * i));
        }
    }
}

/// [`super::axpy_q4_0`].
///
/// # Safety
/// AVX2, FMA and F16C available; `y.len() >= w.len() * 32`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn axpy_q4_0(a: f32, w: &[BlockQ4_0], y: &mut [f32]) {
    debug_assert!(y.len() >= w.len() * 32);
    // SAFETY: as for axpy_q8_0.
    unsafe {
        for (i, b) in w.iter().enumerate() {
            let s = _mm256_set1_ps(a * b.d.to_f32());
            block_axpy(widen_q4(b), s, y.as_mut_ptr().add(32 * i));
        }
    }
}
