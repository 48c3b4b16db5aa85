//! AVX2 versions of the K-quant × Q8_K products: `vpmaddubsw` (unsigned codes × signed
//! activations into i16 pairs) then `vpmaddwd` by the sub-block scales into i32, summed
//! per super-block and combined by the references' f32 formula — bit-identical results.
//! The scales are widened once per super-block and broadcast per sub-block with a byte
//! shuffle; the Q4_K mins and the Q6_K offset of 32 meet the activation sums in one
//! `vpmaddwd` each.

use super::{acc_q4_k, acc_q6_k, q4k_unpack};
use crate::blocks::{BlockQ4K, BlockQ6K, BlockQ8K};
use core::arch::x86_64::*;

/// The sum of the eight i32 lanes (wrapping; the callers' sums are exact in i32).
#[inline(always)]
unsafe fn hsum_i32(v: __m256i) -> i32 {
    // SAFETY: the caller guarantees AVX2.
    unsafe {
        hsum_i32x4(_mm_add_epi32(
            _mm256_castsi256_si128(v),
            _mm256_extracti128_si256::<1>(v),
        ))
    }
}

/// The sum of the four i32 lanes (SSE2).
#[inline(always)]
unsafe fn hsum_i32x4(s: __m128i) -> i32 {
    // SAFETY: SSE2 is part of x86-64.
    unsafe {
        let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01>(s));
        _mm_cvtsi128_si32(s)
    }
}

/// A block scale to f32 with the F16C instruction (`half`'s portable conversion does not
/// inline into these loops). Requires F16C.
#[inline(always)]
unsafe fn h2f(h: half::f16) -> f32 {
    // SAFETY: the caller guarantees F16C.
    unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h.to_bits())))) }
}

/// Byte-shuffle masks (for `vpshufb` on a 128-bit half broadcast to both lanes) that
/// broadcast i16 lane `lo` to the low 128-bit lane and lane `hi` to the high one.
const fn pick16(lo: u8, hi: u8) -> [u8; 32] {
    let mut m = [0u8; 32];
    let mut i = 0;
    while i < 16 {
        m[i] = 2 * lo + (i as u8 & 1);
        m[16 + i] = 2 * hi + (i as u8 & 1);
        i += 1;
    }
    m
}

/// Q4_K: sub-block `s`'s scale in every lane.
static PICK_Q4K: [[u8; 32]; 8] = {
    let mut t = [[0u8; 32]; 8];
    let mut s = 0;
    while s < 8 {
        t[s] = pick16(s as u8, s as u8);
        s += 1;
    }
    t
};

/// Q6_K: group `k` of a half — sub-block `2k` (its first 16 weights) in the low lane,
/// `2k + 1` in the high one.
static PICK_Q6K: [[u8; 32]; 4] = {
    let mut t = [[0u8; 32]; 4];
    let mut k = 0;
    while k < 4 {
        t[k] = pick16(2 * k as u8, 2 * k as u8 + 1);
        k += 1;
    }
    t
};

/// Mask `i` of a table (an unaligned 32-byte load; the tables stay in L1).
#[inline(always)]
unsafe fn mask(t: &[[u8; 32]], i: usize) -> __m256i {
    // SAFETY: the caller guarantees AVX; `t[i]` holds 32 bytes.
    unsafe { _mm256_loadu_si256(t[i].as_ptr().cast()) }
}

/// [`super::dot_q4_k_q8_k`], bit-identical.
///
/// # Safety
/// AVX2 available; `x.len() >= w.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_k_q8_k(w: &[BlockQ4K], x: &[BlockQ8K]) -> f32 {
    debug_assert!(x.len() >= w.len());
    // SAFETY: AVX2 is the caller's; every load reads within a block (32 of the 128 nibble
    // bytes at 32g, 32 of the 256 activation bytes at 64g and 64g + 32, the 32 bytes of
    // the activation sums).
    unsafe {
        let low = _mm256_set1_epi8(0x0f);
        let mut acc = 0f32;
        for (b, y) in w.iter().zip(x) {
            let u = q4k_unpack(&b.scales);
            // lanes 0..8: the scales, 8..16: the mins (i16)
            let sm = _mm256_cvtepu8_epi16(_mm_set_epi32(
                u[3] as i32,
                u[2] as i32,
                u[1] as i32,
                u[0] as i32,
            ));
            // the mins times the activation sums: sums of 32 (pairs of the 16 sums of 16)
            let bs = _mm256_loadu_si256(y.bsums.as_ptr().cast());
            let bs32 = _mm_hadd_epi16(
                _mm256_castsi256_si128(bs),
                _mm256_extracti128_si256::<1>(bs),
            );
            let summ = hsum_i32x4(_mm_madd_epi16(_mm256_extracti128_si256::<1>(sm), bs32));
            let scales = _mm256_broadcastsi128_si256(_mm256_castsi256_si128(sm));
            let mut sum = _mm256_setzero_si256();
            for g in 0..4 {
                let q = _mm256_loadu_si256(b.qs.as_ptr().add(32 * g).cast());
                let lo = _mm256_and_si256(q, low);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), low);
                let y0 = _mm256_loadu_si256(y.qs.as_ptr().add(64 * g).cast());
                let y1 = _mm256_loadu_si256(y.qs.as_ptr().add(64 * g + 32).cast());
                // codes ≤ 15, |q8| ≤ 128: pair sums within ±3,840 (no saturation)
                let p0 = _mm256_maddubs_epi16(lo, y0);
                let p1 = _mm256_maddubs_epi16(hi, y1);
                let s0 = _mm256_madd_epi16(p0, _mm256_shuffle_epi8(scales, mask(&PICK_Q4K, 2 * g)));
                let s1 =
                    _mm256_madd_epi16(p1, _mm256_shuffle_epi8(scales, mask(&PICK_Q4K, 2 * g + 1)));
                sum = _mm256_add_epi32(sum, _mm256_add_epi32(s0, s1));
            }
            acc = acc_q4_k(acc, h2f(b.d), h2f(b.dmin), y, hsum_i32(sum), summ);
        }
        acc
    }
}

/// [`super::dot_q6_k_q8_k`], bit-identical.
///
/// # Safety
/// AVX2 available; `x.len() >= w.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q6_k_q8_k(w: &[BlockQ6K], x: &[BlockQ8K]) -> f32 {
    debug_assert!(x.len() >= w.len());
    // SAFETY: AVX2 is the caller's; per half h the loads read ql[64h..64h + 64],
    // qh[32h..32h + 32] and activations [128h..128h + 128], all within the blocks, and
    // the 16 scale bytes and 32 bytes of activation sums.
    unsafe {
        let low = _mm256_set1_epi8(0x0f);
        let two = _mm256_set1_epi8(0x03);
        let mut acc = 0f32;
        for (b, y) in w.iter().zip(x) {
            let sc = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.scales.as_ptr().cast()));
            let bs = _mm256_loadu_si256(y.bsums.as_ptr().cast());
            // the offset of 32 the unsigned codes carry: −32 · Σ scales·sums
            let mut sum = _mm256_sub_epi32(
                _mm256_setzero_si256(),
                _mm256_slli_epi32::<5>(_mm256_madd_epi16(sc, bs)),
            );
            for h in 0..2 {
                let half = if h == 0 {
                    _mm256_castsi256_si128(sc)
                } else {
                    _mm256_extracti128_si256::<1>(sc)
                };
                let sch = _mm256_broadcastsi128_si256(half);
                let ql0 = _mm256_loadu_si256(b.ql.as_ptr().add(64 * h).cast());
                let ql1 = _mm256_loadu_si256(b.ql.as_ptr().add(64 * h + 32).cast());
                let qh = _mm256_loadu_si256(b.qh.as_ptr().add(32 * h).cast());
                // the four groups of 32 weights: low nibbles of ql0, ql1, then high ones,
                // with bits (0,1), (2,3), (4,5), (6,7) of qh on top
                let top = |v: __m256i| _mm256_slli_epi16::<4>(_mm256_and_si256(v, two));
                let codes = [
                    _mm256_or_si256(_mm256_and_si256(ql0, low), top(qh)),
                    _mm256_or_si256(_mm256_and_si256(ql1, low), top(_mm256_srli_epi16::<2>(qh))),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), low),
                        top(_mm256_srli_epi16::<4>(qh)),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), low),
                        top(_mm256_srli_epi16::<6>(qh)),
                    ),
                ];
                for (k, c) in codes.into_iter().enumerate() {
                    let yv = _mm256_loadu_si256(y.qs.as_ptr().add(128 * h + 32 * k).cast());
                    // codes ≤ 63, |q8| ≤ 128: pair sums within ±16,128 (no saturation)
                    let p = _mm256_maddubs_epi16(c, yv);
                    let s = _mm256_shuffle_epi8(sch, mask(&PICK_Q6K, k));
                    sum = _mm256_add_epi32(sum, _mm256_madd_epi16(p, s));
                }
            }
            acc = acc_q6_k(acc, h2f(b.d), y, hsum_i32(sum));
        }
        acc
    }
}
