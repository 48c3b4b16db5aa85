//! AVX2 + FMA + F16C versions of the quantised products (8 f32 lanes). Every function
//! requires those features (the caller checks them at run time) and the lengths its
//! reference in the parent module documents: `x`/`y` hold `w.len() × 32` values.

use super::Q8Oct;
use crate::blocks::{BlockQ4_0, BlockQ8_0};
use core::arch::x86_64::*;
use half::f16;

/// A block scale to f32 with the F16C instruction (`half`'s portable conversion does not
/// inline into these loops). Requires F16C.
#[inline(always)]
unsafe fn h2f(h: f16) -> f32 {
    // SAFETY: the caller guarantees F16C.
    unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h.to_bits())))) }
}

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

/// A Q4_0 block's weights minus 8 as signed bytes in `[-8, 7]`: weights 0..16 (the low
/// nibbles) and 16..32 (the high nibbles). SSE2 only (baseline on x86-64); the AVX-512
/// kernels use it too.
#[inline(always)]
pub(super) fn q4_signed_halves(b: &BlockQ4_0) -> (__m128i, __m128i) {
    // SAFETY: SSE2 is part of x86-64; the block holds 16 bytes of nibbles.
    unsafe {
        let v = _mm_loadu_si128(b.qs.as_ptr().cast());
        let mask = _mm_set1_epi8(0x0f);
        let eight = _mm_set1_epi8(8);
        (
            _mm_sub_epi8(_mm_and_si128(v, mask), eight),
            _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16::<4>(v), mask), eight),
        )
    }
}

/// The 32 weights of a Q4_0 block, minus 8, as four vectors of 8 f32 (weights 0..8,
/// 8..16, 16..24, 24..32). Requires AVX2.
#[inline(always)]
unsafe fn widen_q4(b: &BlockQ4_0) -> [__m256; 4] {
    // SAFETY: the caller guarantees AVX2.
    unsafe {
        let (lo, hi) = q4_signed_halves(b);
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
            acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(b.d)), s, acc);
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
            acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(b.d)), s, acc);
        }
        hsum(acc)
    }
}

/// `out[0..32] = d · q` for one block's weight vectors (one multiply per value, as the
/// scalar dequantiser: the same bits).
#[inline(always)]
unsafe fn block_store(q: [__m256; 4], d: f32, out: *mut f32) {
    // SAFETY: the caller guarantees AVX and 32 writable f32 at out.
    unsafe {
        let dv = _mm256_set1_ps(d);
        for (k, v) in q.iter().enumerate() {
            _mm256_storeu_ps(out.add(8 * k), _mm256_mul_ps(*v, dv));
        }
    }
}

/// [`crate::quantize::quantize_row_q8_0`] of an activation row, bit-identical to it:
/// the block's largest magnitude by `vmaxps`, its scales by the scalar code
/// (`q8_0_scales`), then per value `v · (1/d)` rounded half away from zero as `roundf`
/// does — truncate, and step away from zero where the exact remainder `p − trunc(p)` is
/// at least one half — converted and packed with signed saturation (as `as i8`). A
/// block whose `1/d` overflows (subnormal scales) runs the scalar code. False (with `out`
/// unspecified) when a value is not finite, where the scalar code returns an error.
///
/// # Safety
/// AVX2 available; `x.len() == 32 · out.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_q8_0(x: &[f32], out: &mut [BlockQ8_0]) -> bool {
    debug_assert_eq!(x.len(), 32 * out.len());
    // SAFETY: AVX2 is the caller's; block i reads x[32i .. 32i + 32], within `x`.
    unsafe {
        let sign = _mm256_set1_ps(-0.0);
        let inf = _mm256_set1_ps(f32::INFINITY);
        let half = _mm256_set1_ps(0.5);
        let one = _mm256_set1_ps(1.0);
        // bytes of the four packed vectors back in order
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for (i, b) in out.iter_mut().enumerate() {
            let p = x.as_ptr().add(32 * i);
            let v = [0, 8, 16, 24].map(|k| _mm256_loadu_ps(p.add(k)));
            let a = v.map(|v| _mm256_andnot_ps(sign, v));
            let finite = _mm256_and_ps(
                _mm256_and_ps(
                    _mm256_cmp_ps::<_CMP_LT_OQ>(a[0], inf),
                    _mm256_cmp_ps::<_CMP_LT_OQ>(a[1], inf),
                ),
                _mm256_and_ps(
                    _mm256_cmp_ps::<_CMP_LT_OQ>(a[2], inf),
                    _mm256_cmp_ps::<_CMP_LT_OQ>(a[3], inf),
                ),
            );
            if _mm256_movemask_ps(finite) != 0xff {
                return false;
            }
            let m = _mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3]));
            let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            let m = _mm_max_ss(m, _mm_shuffle_ps::<1>(m, m));
            let (d, id) = crate::quantize::q8_0_scales(_mm_cvtss_f32(m));
            if !id.is_finite() {
                crate::quantize::quantize_block_q8_0(core::slice::from_raw_parts(p, 32), b);
                continue;
            }
            b.d = d;
            let idv = _mm256_set1_ps(id);
            let q = v.map(|v| {
                let p = _mm256_mul_ps(v, idv);
                let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(p);
                let rest = _mm256_andnot_ps(sign, _mm256_sub_ps(p, t));
                let away = _mm256_or_ps(_mm256_and_ps(p, sign), one);
                let step = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(rest, half), away);
                _mm256_cvttps_epi32(_mm256_add_ps(t, step))
            });
            let packed = _mm256_packs_epi16(
                _mm256_packs_epi32(q[0], q[1]),
                _mm256_packs_epi32(q[2], q[3]),
            );
            let bytes = _mm256_permutevar8x32_epi32(packed, order);
            _mm256_storeu_si256(b.qs.as_mut_ptr().cast(), bytes);
        }
        true
    }
}

/// [`crate::quantize::dequantize_row_q8_0`], bit-identical.
///
/// # Safety
/// AVX2, FMA and F16C available; `out.len() >= w.len() * 32`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dequantize_q8_0(w: &[BlockQ8_0], out: &mut [f32]) {
    assert!(out.len() >= w.len() * 32);
    // SAFETY: block i writes out[32i .. 32i + 32], in bounds.
    unsafe {
        for (i, b) in w.iter().enumerate() {
            let q = widen_i8x32(b.qs.as_ptr());
            block_store(q, h2f(b.d), out.as_mut_ptr().add(32 * i));
        }
    }
}

/// [`crate::quantize::dequantize_row_q4_0`], bit-identical.
///
/// # Safety
/// AVX2, FMA and F16C available; `out.len() >= w.len() * 32`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dequantize_q4_0(w: &[BlockQ4_0], out: &mut [f32]) {
    assert!(out.len() >= w.len() * 32);
    // SAFETY: as for dequantize_q8_0.
    unsafe {
        for (i, b) in w.iter().enumerate() {
            block_store(widen_q4(b), h2f(b.d), out.as_mut_ptr().add(32 * i));
        }
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
            let s = _mm256_set1_ps(a * h2f(b.d));
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
            let s = _mm256_set1_ps(a * h2f(b.d));
            block_axpy(widen_q4(b), s, y.as_mut_ptr().add(32 * i));
        }
    }
}

/// `y += Σ_r a[r]·dequant(w[r])` for four rows of equal length, bit-identical to four
/// [`axpy_q8_0`]/[`axpy_q4_0`] calls in row order (each element sees the same FMAs in the
/// same order) but loading and storing `y` once per block instead of four times.
#[inline(always)]
unsafe fn axpy4_with<B>(
    a: [f32; 4],
    w: [&[B]; 4],
    y: &mut [f32],
    widen: impl Fn(&B) -> [__m256; 4],
    scale: impl Fn(&B) -> f16,
) {
    // SAFETY: the caller guarantees the features, equal row lengths and
    // `y.len() >= 32 * w[0].len()`; block i touches y[32i..32i+32].
    unsafe {
        #[allow(clippy::needless_range_loop)] // block i of all four rows
        for i in 0..w[0].len() {
            let p = y.as_mut_ptr().add(32 * i);
            let mut acc = [
                _mm256_loadu_ps(p),
                _mm256_loadu_ps(p.add(8)),
                _mm256_loadu_ps(p.add(16)),
                _mm256_loadu_ps(p.add(24)),
            ];
            for r in 0..4 {
                let b = &w[r][i];
                let s = _mm256_set1_ps(a[r] * h2f(scale(b)));
                for (k, q) in widen(b).iter().enumerate() {
                    acc[k] = _mm256_fmadd_ps(*q, s, acc[k]);
                }
            }
            for (k, v) in acc.iter().enumerate() {
                _mm256_storeu_ps(p.add(8 * k), *v);
            }
        }
    }
}

/// [`axpy_q8_0`] of four rows (see `axpy4_with`).
///
/// # Safety
/// AVX2, FMA and F16C available; equal row lengths; `y.len() >= w[0].len() * 32`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn axpy4_q8_0(a: [f32; 4], w: [&[BlockQ8_0]; 4], y: &mut [f32]) {
    debug_assert!(w.iter().all(|r| r.len() == w[0].len()) && y.len() >= w[0].len() * 32);
    // SAFETY: the caller's contract; each block holds 32 bytes.
    unsafe { axpy4_with(a, w, y, |b| widen_i8x32(b.qs.as_ptr()), |b| b.d) }
}

/// [`axpy_q4_0`] of four rows (see `axpy4_with`).
///
/// # Safety
/// AVX2, FMA and F16C available; equal row lengths; `y.len() >= w[0].len() * 32`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn axpy4_q4_0(a: [f32; 4], w: [&[BlockQ4_0]; 4], y: &mut [f32]) {
    debug_assert!(w.iter().all(|r| r.len() == w[0].len()) && y.len() >= w[0].len() * 32);
    // SAFETY: the caller's contract; each block holds 16 bytes.
    unsafe { axpy4_with(a, w, y, |b| widen_q4(b), |b| b.d) }
}

/// Sum of the products of 32 signed bytes `a` and `b` as 8 i32 lanes, via
/// `maddubs(|a|, sign(b, a))` (ggml's trick). The i16 pair sums cannot saturate as long as
/// `b` (the activations, quantised by Modula) stays in [−127, 127]: a pair is then at most
/// 2·128·127 = 32,512 < 2^15, even for a weight byte of −128 from a hostile file.
#[inline(always)]
unsafe fn dot_i8x32(a: __m256i, b: __m256i) -> __m256i {
    // SAFETY: the caller guarantees AVX2.
    unsafe {
        let ax = _mm256_sign_epi8(a, a);
        let sy = _mm256_sign_epi8(b, a);
        let p16 = _mm256_maddubs_epi16(ax, sy);
        _mm256_madd_epi16(p16, _mm256_set1_epi16(1))
    }
}

/// [`super::dot_q8_0_q8_0`].
///
/// # Safety
/// AVX2, FMA and F16C available; `x.len() >= w.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8_0_q8_0(w: &[BlockQ8_0], x: &[BlockQ8_0]) -> f32 {
    debug_assert!(x.len() >= w.len());
    // SAFETY: features are the caller's; each block holds 32 bytes.
    unsafe {
        let (even, odd) = even_odd!(w.len(), _mm256_setzero_ps(), |i, acc| {
            let (b, xb) = (&w[i], &x[i]);
            let a = _mm256_loadu_si256(b.qs.as_ptr().cast());
            let c = _mm256_loadu_si256(xb.qs.as_ptr().cast());
            let s = _mm256_cvtepi32_ps(dot_i8x32(a, c));
            let d = _mm256_set1_ps(h2f(b.d) * h2f(xb.d));
            _mm256_fmadd_ps(d, s, acc)
        });
        hsum(_mm256_add_ps(even, odd))
    }
}

/// [`super::dot_q4_0_q8_0`].
///
/// # Safety
/// AVX2, FMA and F16C available; `x.len() >= w.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_0_q8_0(w: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
    debug_assert!(x.len() >= w.len());
    // SAFETY: features are the caller's; each block holds 16 (Q4_0) or 32 (Q8_0) bytes.
    unsafe {
        // two accumulators (even and odd blocks) to hide the FMA latency
        let mask = _mm256_set1_epi8(0x0f);
        let eight = _mm256_set1_epi8(8);
        let (even, odd) = even_odd!(w.len(), _mm256_setzero_ps(), |i, acc| {
            let (b, xb) = (&w[i], &x[i]);
            // weights 0..16 in the low lane, 16..32 in the high lane, minus 8: [-8, 7]
            let a = _mm256_sub_epi8(nibbles(b, mask), eight);
            let c = _mm256_loadu_si256(xb.qs.as_ptr().cast());
            let s = _mm256_cvtepi32_ps(dot_i8x32(a, c));
            let d = _mm256_set1_ps(h2f(b.d) * h2f(xb.d));
            _mm256_fmadd_ps(d, s, acc)
        });
        hsum(_mm256_add_ps(even, odd))
    }
}

/// A Q4_0 block's 32 unsigned nibbles as bytes: weights 0..16 (the low nibbles) in the low
/// 128-bit lane, 16..32 (the high nibbles) in the high lane. The 16 bytes are loaded into
/// both lanes at once (one broadcast load) and the high lane's quadwords shifted right by
/// 4 bits (the bits that come in from the next byte are masked off) — 3 instructions where
/// a shift of a copy and a lane insert took 4, one of them on the shuffle port. Speed:
/// one interleaved A/B of the cache-resident 4096 × 4096 Q4_0 GEMV gave 1.17×, two later
/// ones no difference (medians 792 vs 797 µs over 8 rounds) — within this machine's noise
/// (docs/results.md). Requires AVX2.
#[inline(always)]
unsafe fn nibbles(b: &BlockQ4_0, mask: __m256i) -> __m256i {
    // SAFETY: the caller guarantees AVX2; the block holds 16 bytes of nibbles.
    unsafe {
        let v = _mm256_broadcastsi128_si256(_mm_loadu_si128(b.qs.as_ptr().cast()));
        _mm256_and_si256(_mm256_srlv_epi64(v, _mm256_set_epi64x(4, 4, 0, 0)), mask)
    }
}

/// One Q4_0 × Q8_0 block's integer dot before the correction: the unsigned nibbles (0..16)
/// times the activation bytes, 8 i32 lanes of 4 products each (`maddubs` + `madd`; lanes
/// 0..4 cover values 0..16, lanes 4..8 values 16..32). Requires AVX2.
#[inline(always)]
unsafe fn q4_lanes(b: &BlockQ4_0, c: __m256i, mask: __m256i, ones: __m256i) -> __m256i {
    // SAFETY: the caller guarantees AVX2; the block holds 16 bytes of nibbles.
    unsafe { _mm256_madd_epi16(_mm256_maddubs_epi16(nibbles(b, mask), c), ones) }
}

/// How far ahead (bytes) the one-row grouped kernels prefetch their weight stream. The
/// hardware prefetcher alone kept the Q4_0 GEMV over a matrix larger than the cache at
/// 9–11 GB/s where the F32 GEMV streams 20+ on the same core; software prefetch 2–16 KiB
/// ahead gave 1.1–1.35× on that matrix, 4 KiB the best of the distances tried
/// (docs/results.md). Rows follow each other in a matrix, so the line 4 KiB ahead is
/// usually a later row's; past the matrix's end a prefetch is a hint that cannot fault.
pub const PREFETCH_AHEAD: usize = 4096;

/// Hints the cache lines of `bytes` bytes starting [`PREFETCH_AHEAD`] past `p` (one
/// prefetch per 64-byte line, rounded up). Requires SSE (baseline on x86-64).
#[inline(always)]
fn prefetch_ahead(p: *const u8, bytes: usize) {
    let p = p.wrapping_add(PREFETCH_AHEAD).cast::<i8>();
    let mut off = 0;
    while off < bytes {
        // SAFETY: a prefetch only hints the cache; it reads nothing and cannot fault, and
        // the address is formed with wrapping arithmetic (never dereferenced).
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off)) };
        off += 64;
    }
}

/// 32 bytes at `p`, loaded by an `asm!` block the compiler cannot see into. With a plain
/// load, LLVM noticed that [`q4_oct_scales`]' first window overlaps block 0's nibbles and
/// rebuilt that block's broadcast load from two 8-byte loads, an unpack and a lane insert
/// (seen in the disassembly) — three more operations per octet. As `avx512::opaque_load`.
///
/// # Safety
/// AVX; `p` valid for reading 32 bytes.
#[inline]
#[target_feature(enable = "avx")]
unsafe fn opaque_load(p: *const u8) -> __m256i {
    let v: __m256i;
    // SAFETY: the caller's contract; the instruction only reads those 32 bytes.
    unsafe {
        core::arch::asm!(
            "vmovdqu {v}, [{p}]",
            v = out(ymm_reg) v,
            p = in(reg) p,
            options(pure, readonly, nostack, preserves_flags)
        );
    }
    v
}

/// The 8 F16 scales of the 8 consecutive Q4_0 blocks at `p`, as 8 halves in
/// [`super::OCT_LANES`] order. Blocks are 18 bytes, so blocks `2j` and `2j + 1` have
/// their scales 18 bytes apart: one 32-byte load at `p + 36j − 2j` puts block `2j`'s scale
/// in word `j` of its low 128-bit lane and block `2j + 1`'s in word `j + 1` of its high
/// lane; three byte blends merge the four loads, and the high lane is shifted down one word
/// and joined under the low one. 4 loads and 6 vector operations, where building the vector
/// in general registers (8 loads, 12 shifts and ors, 3 moves) measured ~10 % slower.
/// Requires AVX2 and 144 readable bytes at `p`.
#[inline(always)]
unsafe fn q4_oct_scales(p: *const BlockQ4_0) -> __m128i {
    // SAFETY: the caller guarantees AVX2 and 8 blocks (144 bytes) at p; the last load
    // reads bytes 102..134.
    unsafe {
        let p = p.cast::<u8>();
        let v = |j: usize| opaque_load(p.add(34 * j));
        let m = |j: i16| {
            let w = |k: i16| if k == j { -1 } else { 0 };
            _mm256_setr_epi16(
                w(0),
                w(1),
                w(2),
                w(3),
                w(4),
                w(5),
                w(6),
                w(7),
                0,
                w(0),
                w(1),
                w(2),
                w(3),
                w(4),
                w(5),
                w(6),
            )
        };
        let t = _mm256_blendv_epi8(v(0), v(1), m(1));
        let t = _mm256_blendv_epi8(t, v(2), m(2));
        let t = _mm256_blendv_epi8(t, v(3), m(3));
        let hi = _mm_srli_si128::<2>(_mm256_extracti128_si256::<1>(t));
        _mm_unpacklo_epi64(_mm256_castsi256_si128(t), hi)
    }
}

/// [`q4_oct_scales`] for Q8_0 blocks (34 bytes: two scales never share a 32-byte load):
/// block `k`'s 16-byte load starts 2·lane(k) bytes before its scale, so the scale lands in
/// word lane(k), and seven word blends merge the eight loads. Requires AVX2 and 272
/// readable bytes at `p`.
#[inline(always)]
unsafe fn q8_oct_scales(p: *const BlockQ8_0) -> __m128i {
    // SAFETY: the caller guarantees AVX2 and 8 blocks (272 bytes) at p; block k's load
    // starts at 34k − 2·lane ≥ 0 and ends at most 34·7 − 2·7 + 16 = 240 bytes in.
    unsafe {
        let p = p.cast::<u8>();
        // lane of block k (the inverse of OCT_LANES)
        let v = |k: usize, lane: usize| _mm_loadu_si128(p.add(34 * k - 2 * lane).cast());
        let t = _mm_blend_epi16::<0b0000_0010>(v(0, 0), v(2, 1));
        let t = _mm_blend_epi16::<0b0000_0100>(t, v(4, 2));
        let t = _mm_blend_epi16::<0b0000_1000>(t, v(6, 3));
        let t = _mm_blend_epi16::<0b0001_0000>(t, v(1, 4));
        let t = _mm_blend_epi16::<0b0010_0000>(t, v(3, 5));
        let t = _mm_blend_epi16::<0b0100_0000>(t, v(5, 6));
        _mm_blend_epi16::<0b1000_0000>(t, v(7, 7))
    }
}

/// One octet of one row: `acc += scales · float(reduced lanes − corr)`. `lanes(k)` gives
/// block k's integer dot as 8 i32 lanes (any split of its 32 products), `h` the 8 weight
/// scales as halves in [`super::OCT_LANES`] order; the correction (Q4_0's `8·Σx`) is
/// subtracted when `corr`. Two levels of `hadd` reduce the even blocks to one lane per
/// (block, 128-bit half) and the odd blocks likewise; the halves are added across, so
/// each lane holds one block's exact integer dot, converted once and scaled by its
/// weight × activation scale in one FMA per 8 blocks. Requires AVX2, FMA and F16C.
#[inline(always)]
unsafe fn oct_step(
    lanes: impl Fn(usize) -> __m256i,
    h: __m128i,
    o: &Q8Oct,
    corr: bool,
    acc: __m256,
) -> __m256 {
    // SAFETY: the caller guarantees the features; an oct is 32-byte aligned.
    unsafe {
        let even = _mm256_hadd_epi32(
            _mm256_hadd_epi32(lanes(0), lanes(2)),
            _mm256_hadd_epi32(lanes(4), lanes(6)),
        );
        let odd = _mm256_hadd_epi32(
            _mm256_hadd_epi32(lanes(1), lanes(3)),
            _mm256_hadd_epi32(lanes(5), lanes(7)),
        );
        // even = [0 2 4 6 | 0 2 4 6] (one lane per block and half), odd likewise
        let mut z = _mm256_add_epi32(
            _mm256_permute2x128_si256::<0x20>(even, odd),
            _mm256_permute2x128_si256::<0x31>(even, odd),
        );
        if corr {
            z = _mm256_sub_epi32(z, _mm256_load_si256(o.corr.as_ptr().cast()));
        }
        let s = _mm256_mul_ps(_mm256_cvtph_ps(h), _mm256_load_ps(o.scale.as_ptr()));
        _mm256_fmadd_ps(s, _mm256_cvtepi32_ps(z), acc)
    }
}

/// Block `k` of the octet at `w`'s integer lanes against the activation block at `x`,
/// for Q4_0 (unsigned nibbles, uncorrected).
#[inline(always)]
unsafe fn q4_oct_lanes(w: *const BlockQ4_0, x: *const BlockQ8_0, k: usize) -> __m256i {
    // SAFETY: the caller guarantees AVX2 and blocks k of the octets at w and x.
    unsafe {
        let (mask, ones) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi16(1));
        let c = _mm256_loadu_si256((*x.add(k)).qs.as_ptr().cast());
        q4_lanes(&*w.add(k), c, mask, ones)
    }
}

/// As [`q4_oct_lanes`] for Q8_0 weights (signed bytes, sign trick).
#[inline(always)]
unsafe fn q8_oct_lanes(w: *const BlockQ8_0, x: *const BlockQ8_0, k: usize) -> __m256i {
    // SAFETY: as q4_oct_lanes; a Q8_0 block holds 32 bytes.
    unsafe {
        let a = _mm256_loadu_si256((*w.add(k)).qs.as_ptr().cast());
        let c = _mm256_loadu_si256((*x.add(k)).qs.as_ptr().cast());
        dot_i8x32(a, c)
    }
}

/// The weight scales of a last, partial octet of `rem < 8` blocks at `p` as 8 halves in
/// [`super::OCT_LANES`] order, zero for the missing blocks (read one by one: nothing past
/// the row's end is touched).
#[inline(always)]
unsafe fn partial_oct_scales<B>(p: *const B, rem: usize, d: impl Fn(&B) -> f16) -> __m128i {
    let mut h = [0u16; 8];
    for (l, &k) in super::OCT_LANES.iter().enumerate() {
        if k < rem {
            // SAFETY: the caller guarantees `rem` blocks at p.
            h[l] = d(unsafe { &*p.add(k) }).to_bits();
        }
    }
    // SAFETY: SSE2 (baseline); 16 bytes from a local array.
    unsafe { _mm_loadu_si128(h.as_ptr().cast()) }
}

/// An all-zero integer vector (a function, not the intrinsic, where a closure needs one:
/// the intrinsic would not inline into a closure, which lacks the kernel's features).
#[inline(always)]
fn zero_i() -> __m256i {
    // SAFETY: only reached from the AVX2 kernels' drivers (inlined under their features).
    unsafe { _mm256_setzero_si256() }
}

/// The octet driver for `R` rows of equal length `n` (the 1-row kernels and their 4-row
/// forms): per octet and row, `lanes(row, k)` block k's integer lanes, `scales` the 8
/// weight scales of a whole octet, `d` one block's scale; the last `n % 8` blocks are a
/// partial octet (missing blocks: zero lanes, zero scales; the padded [`Q8Oct`] has zero
/// sums and scales there), so every row length runs the octet arithmetic and a row's
/// bits do not depend on `R`. `PF`: prefetch the weight stream ([`PREFETCH_AHEAD`]).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn octs_dot<B, const R: usize, const PF: bool>(
    w: [&[B]; R],
    x: &[BlockQ8_0],
    octs: &[Q8Oct],
    corr: bool,
    lanes: impl Fn(*const B, *const BlockQ8_0, usize) -> __m256i,
    scales: impl Fn(*const B) -> __m128i,
    d: impl Fn(&B) -> f16 + Copy,
) -> [f32; R] {
    let n = w[0].len();
    let (n8, rem) = (n / 8, n % 8);
    debug_assert!(w.iter().all(|r| r.len() == n));
    debug_assert!(x.len() >= n && octs.len() >= n.div_ceil(8));
    // SAFETY: the features are the caller's; block indices stay below n ≤ every length
    // and octet indices below n.div_ceil(8) ≤ octs.len().
    unsafe {
        let mut acc = [_mm256_setzero_ps(); R];
        for g in 0..n8 {
            let xb = x.as_ptr().add(8 * g);
            let o = &*octs.as_ptr().add(g);
            for (r, a) in acc.iter_mut().enumerate() {
                let p = w[r].as_ptr().add(8 * g);
                if PF {
                    prefetch_ahead(p.cast(), 8 * core::mem::size_of::<B>());
                }
                *a = oct_step(|k| lanes(p, xb, k), scales(p), o, corr, *a);
            }
        }
        if rem > 0 {
            let xb = x.as_ptr().add(8 * n8);
            let o = &*octs.as_ptr().add(n8);
            for (r, a) in acc.iter_mut().enumerate() {
                let p = w[r].as_ptr().add(8 * n8);
                let part = |k| if k < rem { lanes(p, xb, k) } else { zero_i() };
                *a = oct_step(part, partial_oct_scales(p, rem, d), o, corr, *a);
            }
        }
        acc.map(|a| hsum(a))
    }
}

/// Q4_0 × Q8_0 over octets of 8 blocks (one exact integer dot per block, one
/// conversion, one F16C conversion of 8 weight scales and one FMA per octet; a last
/// partial octet padded), the weight stream prefetched [`PREFETCH_AHEAD`] bytes ahead.
/// Not bit-identical to the per-block kernels (lanes are summed in another order);
/// deterministic, and [`dot4_q4_0_q8_0_octs`] gives the same bits.
///
/// # Safety
/// AVX2, FMA and F16C available; `x.len() >= w.len()` and `octs.len() >=
/// w.len().div_ceil(8)` ([`super::q8_octs`] of `x`, padded last octet included).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_0_q8_0_octs(w: &[BlockQ4_0], x: &[BlockQ8_0], octs: &[Q8Oct]) -> f32 {
    // SAFETY: the caller's contract.
    unsafe {
        octs_dot::<_, 1, true>(
            [w],
            x,
            octs,
            true,
            |p, x, k| q4_oct_lanes(p, x, k),
            |p| q4_oct_scales(p),
            |b| b.d,
        )[0]
    }
}

/// [`dot_q4_0_q8_0_octs`] for Q8_0 weights (no correction; the sign trick per block).
///
/// # Safety
/// As [`dot_q4_0_q8_0_octs`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8_0_q8_0_octs(w: &[BlockQ8_0], x: &[BlockQ8_0], octs: &[Q8Oct]) -> f32 {
    // SAFETY: the caller's contract.
    unsafe {
        octs_dot::<_, 1, true>(
            [w],
            x,
            octs,
            false,
            |p, x, k| q8_oct_lanes(p, x, k),
            |p| q8_oct_scales(p),
            |b| b.d,
        )[0]
    }
}

/// [`dot_q4_0_q8_0_octs`] of four rows of equal length, each row's operations (and so
/// its bits) those of the one-row kernel, without its prefetch (the four-row kernels serve
/// matrices that fit the cache).
///
/// # Safety
/// AVX2, FMA and F16C available; the rows have equal lengths, `x` is at least as long and
/// `octs` holds its [`super::q8_octs`] (an eighth of it, rounded up).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot4_q4_0_q8_0_octs(
    w: [&[BlockQ4_0]; 4],
    x: &[BlockQ8_0],
    octs: &[Q8Oct],
) -> [f32; 4] {
    // SAFETY: the caller's contract.
    unsafe {
        octs_dot::<_, 4, false>(
            w,
            x,
            octs,
            true,
            |p, x, k| q4_oct_lanes(p, x, k),
            |p| q4_oct_scales(p),
            |b| b.d,
        )
    }
}

/// [`dot_q8_0_q8_0_octs`] of four rows of equal length, each bit-identical to it.
///
/// # Safety
/// As [`dot4_q4_0_q8_0_octs`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot4_q8_0_q8_0_octs(
    w: [&[BlockQ8_0]; 4],
    x: &[BlockQ8_0],
    octs: &[Q8Oct],
) -> [f32; 4] {
    // SAFETY: the caller's contract.
    unsafe {
        octs_dot::<_, 4, false>(
            w,
            x,
            octs,
            false,
            |p, x, k| q8_oct_lanes(p, x, k),
            |p| q8_oct_scales(p),
            |b| b.d,
        )
    }
}

/// The activation side of an integer tile ([`super::axpy_rows_q4_0`]), 8 column blocks at
/// a time: per block `b < nb` the scale `s[b]`, `csum8[b] = 8·Σ_r c'_{r,b}`, and per row
/// pair `p` the pair `pack(c'_{2p}, c'_{2p+1})` (i32 lanes; the partner of an odd last
/// row is zero) at `pair[p·TILE_BLOCKS + b]`. `scale` gives a weight block's scale as f16
/// bits. False when the tile cannot be quantised (nothing useful written).
///
/// # Safety
/// AVX2, FMA and F16C available; `1 <= x.len() <= TILE_ROWS`, `1 <= nb <= TILE_BLOCKS`,
/// `w.len() >= (x.len() − 1)·ld + nb`; `pair` valid for `TILE_ROWS / 2 · TILE_BLOCKS`
/// writes.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_scales<B>(
    x: &[f32],
    w: &[B],
    ld: usize,
    nb: usize,
    scale: impl Fn(&B) -> u16,
    pack: impl Fn(__m256i, __m256i) -> __m256i,
    s: &mut [f32; super::TILE_BLOCKS],
    csum8: &mut [i32; super::TILE_BLOCKS],
    pair: *mut i32,
) -> bool {
    use super::{TILE_BLOCKS, TILE_ROWS, TILE_TINY};
    let rows = x.len();
    let pairs = rows.div_ceil(2);
    // 8 weight scales of row r from block 8g as f16 bits, zero past nb (c = 0 there)
    let scales8 = |r: usize, g: usize| -> [u16; 8] {
        let b0 = 8 * g;
        let row = &w[r * ld + b0..r * ld + nb];
        if let Some(full) = row.first_chunk::<8>() {
            full.each_ref().map(&scale)
        } else {
            let mut v = [0u16; 8];
            for (o, blk) in v.iter_mut().zip(row) {
                *o = scale(blk);
            }
            v
        }
    };
    // SAFETY: the features are the caller's; stores go to s/csum8 lanes 8g .. 8g+8 ≤
    // TILE_BLOCKS and to pair[p·TILE_BLOCKS + 8g ..][..8], p < pairs ≤ TILE_ROWS / 2; the
    // stack vectors c/q are read at r < rows ≤ TILE_ROWS after their writes in the same
    // group, and q at 2p + 1 ≤ rows (= rows only for an odd count, written zero first).
    unsafe {
        let sign = _mm256_set1_ps(-0.0);
        let zero = _mm256_setzero_ps();
        let c127 = _mm256_set1_ps(127.0);
        let inf = _mm256_set1_ps(f32::INFINITY);
        let tiny = _mm256_set1_ps(TILE_TINY);
        // per-row vectors of the current 8 blocks, on the stack and not zero-filled (a
        // 2 KiB memset per 8 blocks cost ~2 % of a Q4_0 decode): rows < `rows` are written
        // before they are read, and the partner of an odd last row is zeroed below
        let mut c_buf = core::mem::MaybeUninit::<[__m256; TILE_ROWS]>::uninit();
        let c = c_buf.as_mut_ptr().cast::<__m256>();
        let mut q_buf = core::mem::MaybeUninit::<[__m256i; TILE_ROWS]>::uninit();
        let q = q_buf.as_mut_ptr().cast::<__m256i>();
        if rows % 2 == 1 {
            // rows < TILE_ROWS here (TILE_ROWS is even)
            q.add(rows).write(_mm256_setzero_si256());
        }
        for g in 0..nb.div_ceil(8) {
            let mut amax = zero;
            // a non-finite c makes the sum non-finite (so may an overflowing sum of finite
            // ones: such a tile is refused too, and runs in f32)
            let mut sum = zero;
            for (r, &xr) in x.iter().enumerate() {
                let d = _mm256_cvtph_ps(_mm_loadu_si128(scales8(r, g).as_ptr().cast()));
                let cr = _mm256_mul_ps(d, _mm256_set1_ps(xr));
                c.add(r).write(cr);
                sum = _mm256_add_ps(sum, cr);
                amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, cr));
            }
            let finite = _mm256_cmp_ps::<_CMP_LT_OQ>(_mm256_andnot_ps(sign, sum), inf);
            let nonzero = _mm256_cmp_ps::<_CMP_GT_OQ>(amax, zero);
            let small = _mm256_and_ps(nonzero, _mm256_cmp_ps::<_CMP_LT_OQ>(amax, tiny));
            if _mm256_movemask_ps(finite) != 0xff || _mm256_movemask_ps(small) != 0 {
                return false;
            }
            // 127 / 0 = inf is masked to 0 (c = 0 there)
            let inv = _mm256_and_ps(_mm256_div_ps(c127, amax), nonzero);
            _mm256_storeu_ps(s.as_mut_ptr().add(8 * g), _mm256_div_ps(amax, c127));
            let mut csum = _mm256_setzero_si256();
            for r in 0..rows {
                // default rounding (to nearest, ties to even) = rintf
                let qr = _mm256_cvtps_epi32(_mm256_mul_ps(c.add(r).read(), inv));
                q.add(r).write(qr);
                csum = _mm256_add_epi32(csum, qr);
            }
            _mm256_storeu_si256(
                csum8.as_mut_ptr().add(8 * g).cast(),
                _mm256_slli_epi32::<3>(csum),
            );
            for p in 0..pairs {
                // q[2p + 1] is zero past the last row
                let v = pack(q.add(2 * p).read(), q.add(2 * p + 1).read());
                _mm256_storeu_si256(pair.add(p * TILE_BLOCKS + 8 * g).cast(), v);
            }
        }
    }
    true
}

/// Row pointers of a tile: row r at `w + r·ld`; rows past the last (an odd last row's
/// partner) repeat the last row (its `c'` partner is zero).
#[inline(always)]
fn tile_rows<B>(w: &[B], ld: usize, rows: usize) -> [*const B; super::TILE_ROWS] {
    let mut rp = [w.as_ptr(); super::TILE_ROWS];
    for (r, p) in rp.iter_mut().enumerate() {
        *p = w.as_ptr().wrapping_add(r.min(rows - 1) * ld);
    }
    rp
}

/// Prefetch (into L1) line `b` of `nb` of the memory right after a tile of `bytes`
/// bytes at `w` — the next tile of a transposed matrix usually follows this one.
#[inline(always)]
unsafe fn prefetch_next<B>(w: &[B], bytes: usize, nb: usize, b: usize) {
    let next = w.as_ptr().cast::<i8>().wrapping_add(bytes);
    let per_b = (bytes / 64).div_ceil(nb);
    for l in 0..per_b {
        // SAFETY: SSE is baseline on x86-64; prefetches never fault.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(64 * (b * per_b + l))) };
    }
}

/// [`super::axpy_rows_q4_0`], bit-identical to it: the tile's activation scales
/// (`tile_scales`), then each block's 32 outputs summed over the rows two at a time —
/// the two rows' bytes interleaved, then split into nibbles, and multiplied with the pair
/// `(c'_f, c'_g)` by `vpmaddubsw` (unsigned weights `0..15` times signed `c'`, pairs
/// summed in 16 bits), 8 pairs per 16-bit sum (exact: at most 8 × 2 × 15 × 127 = 30,480),
/// widened to 32 bits; the `− 8` of the weights is subtracted once per block as
/// `8 · Σ_r c'_r`.
///
/// # Safety
/// AVX2, FMA and F16C available; `x.len() <= TILE_ROWS`, `nb <= TILE_BLOCKS`,
/// `w.len() >= (x.len() − 1)·ld + nb` (when `x` is not empty) and `y.len() >= 32·nb`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn axpy_rows_q4_0(
    x: &[f32],
    w: &[BlockQ4_0],
    ld: usize,
    nb: usize,
    y: &mut [f32],
) -> bool {
    use super::{TILE_BLOCKS, TILE_ROWS};
    let rows = x.len();
    // checked (once per tile) so the compiler can drop the index checks below
    assert!(rows <= TILE_ROWS && nb <= TILE_BLOCKS, "tile too large");
    if rows == 0 || nb == 0 {
        return true;
    }
    debug_assert!(w.len() >= (rows - 1) * ld + nb && y.len() >= 32 * nb);
    let pairs = rows.div_ceil(2);
    let mut s = [0f32; TILE_BLOCKS];
    let mut corr = [0i32; TILE_BLOCKS];
    // per row pair (f, g) and block: the bytes c'_f, c'_g in the low 16 bits of an i32
    // (broadcast as one 16-bit lane pattern below). Not zeroed: every element read,
    // [p < pairs][b < nb], is written first (the memset cost ~2 % of a decode).
    let mut pair = core::mem::MaybeUninit::<[[i32; TILE_BLOCKS]; TILE_ROWS / 2]>::uninit();
    let pair_ptr = pair.as_mut_ptr().cast::<i32>();
    // SAFETY: the features are the caller's; the tile is within tile_scales' bounds; every
    // pointer below stays inside `pair` (p < pairs, b < nb, written by tile_scales),
    // inside `w` (row r < rows, block b < nb) and inside `y` (block b < nb writes
    // y[32b .. 32b+32]).
    unsafe {
        let low8 = _mm256_set1_epi32(0xff);
        let pack = |f: __m256i, g: __m256i| {
            _mm256_or_si256(
                _mm256_and_si256(f, low8),
                _mm256_slli_epi32::<8>(_mm256_and_si256(g, low8)),
            )
        };
        let scale = |b: &BlockQ4_0| b.d.to_bits();
        if !tile_scales(x, w, ld, nb, scale, pack, &mut s, &mut corr, pair_ptr) {
            return false;
        }
        let nib = _mm256_set1_epi8(0x0f);
        let rp = tile_rows(w, ld, rows);
        // pair p of block b into the 16-bit sums lo (outputs 0..15) and hi (16..31)
        let step = |p: usize, b: usize, lo: &mut __m256i, hi: &mut __m256i| {
            let qf = _mm_loadu_si128((*rp[2 * p].add(b)).qs.as_ptr().cast());
            let qg = _mm_loadu_si128((*rp[2 * p + 1].add(b)).qs.as_ptr().cast());
            // bytes f_j g_j interleaved: j = 0..7 in the low lane, 8..15 in the high; their
            // low nibbles are outputs j, their high nibbles outputs 16 + j
            let t = _mm256_set_m128i(_mm_unpackhi_epi8(qf, qg), _mm_unpacklo_epi8(qf, qg));
            let cp = _mm256_set1_epi16(*pair_ptr.add(p * TILE_BLOCKS + b) as i16);
            let l = _mm256_and_si256(t, nib);
            let h = _mm256_and_si256(_mm256_srli_epi16::<4>(t), nib);
            *lo = _mm256_add_epi16(*lo, _mm256_maddubs_epi16(l, cp));
            *hi = _mm256_add_epi16(*hi, _mm256_maddubs_epi16(h, cp));
        };
        let tile_bytes = rows * ld * core::mem::size_of::<BlockQ4_0>();
        for b in 0..nb {
            prefetch_next(w, tile_bytes, nb, b);
            // 32-bit sums of outputs 0..8, 8..16, 16..24, 24..32
            let mut acc = [_mm256_setzero_si256(); 4];
            for p0 in (0..pairs).step_by(8) {
                let (mut lo, mut hi) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                if p0 + 8 <= pairs {
                    for p in p0..p0 + 8 {
                        step(p, b, &mut lo, &mut hi);
                    }
                } else {
                    for p in p0..pairs {
                        step(p, b, &mut lo, &mut hi);
                    }
                }
                for (a, v) in acc.iter_mut().zip([
                    _mm256_castsi256_si128(lo),
                    _mm256_extracti128_si256::<1>(lo),
                    _mm256_castsi256_si128(hi),
                    _mm256_extracti128_si256::<1>(hi),
                ]) {
                    *a = _mm256_add_epi32(*a, _mm256_cvtepi16_epi32(v));
                }
            }
            let cv = _mm256_set1_epi32(corr[b]);
            for a in acc.iter_mut() {
                *a = _mm256_sub_epi32(*a, cv);
            }
            tile_store(acc, s[b], y.as_mut_ptr().add(32 * b));
        }
    }
    true
}

/// `y[8k .. 8k+8] += s · acc[k]` (one multiply, one add per value, as the reference).
#[inline(always)]
unsafe fn tile_store(acc: [__m256i; 4], s: f32, y: *mut f32) {
    // SAFETY: the caller guarantees AVX and 32 writable f32 at y.
    unsafe {
        let sv = _mm256_set1_ps(s);
        for (k, a) in acc.iter().enumerate() {
            let t = _mm256_mul_ps(sv, _mm256_cvtepi32_ps(*a));
            let o = y.add(8 * k);
            _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), t));
        }
    }
}
