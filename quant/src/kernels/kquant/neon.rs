//! NEON versions of the K-quant × Q8_K products: widening `i8 × i8 → i16` multiplies
//! (`smull`/`smull2`), pairwise sums into i32 and a multiply by the sub-block scale, summed
//! per super-block and combined by the references' f32 formula — bit-identical results.

use super::{acc_q4_k, acc_q6_k, q4k_min_sum, q4k_scales_mins, q6k_offset_sum};
use crate::blocks::{BlockQ4K, BlockQ6K, BlockQ8K};
use core::arch::aarch64::*;

/// `Σ a·b` over 16 signed bytes as 4 i32 lanes (widening multiplies; no `dotprod`). The
/// products of one 16-byte group fit i16 (`|a| ≤ 63`, `|b| ≤ 128`; two per lane summed).
#[inline(always)]
unsafe fn dot16(a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: NEON is the caller's.
    unsafe {
        let lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
        let hi = vmull_high_s8(a, b);
        vaddq_s32(vpaddlq_s16(lo), vpaddlq_s16(hi))
    }
}

/// [`super::dot_q4_k_q8_k`], bit-identical.
///
/// # Safety
/// NEON available; `x.len() >= w.len()`.
#[target_feature(enable = "neon")]
pub unsafe fn dot_q4_k_q8_k(w: &[BlockQ4K], x: &[BlockQ8K]) -> f32 {
    debug_assert!(x.len() >= w.len());
    // SAFETY: NEON is the caller's; loads read 16 bytes at offsets within the blocks
    // (nibbles 32g, 32g + 16 of 128; activations 64g + 16t of 256).
    unsafe {
        let low = vdupq_n_u8(0x0f);
        let mut acc = 0f32;
        for (b, y) in w.iter().zip(x) {
            let (sc, mn) = q4k_scales_mins(b);
            let mut sum = vdupq_n_s32(0);
            for g in 0..4 {
                let qa = vld1q_u8(b.qs.as_ptr().add(32 * g));
                let qb = vld1q_u8(b.qs.as_ptr().add(32 * g + 16));
                let yp = y.qs.as_ptr().add(64 * g);
                let lo = vaddq_s32(
                    dot16(vreinterpretq_s8_u8(vandq_u8(qa, low)), vld1q_s8(yp)),
                    dot16(vreinterpretq_s8_u8(vandq_u8(qb, low)), vld1q_s8(yp.add(16))),
                );
                let hi = vaddq_s32(
                    dot16(
                        vreinterpretq_s8_u8(vshrq_n_u8::<4>(qa)),
                        vld1q_s8(yp.add(32)),
                    ),
                    dot16(
                        vreinterpretq_s8_u8(vshrq_n_u8::<4>(qb)),
                        vld1q_s8(yp.add(48)),
                    ),
                );
                sum = vmlaq_n_s32(sum, lo, i32::from(sc[2 * g]));
                sum = vmlaq_n_s32(sum, hi, i32::from(sc[2 * g + 1]));
            }
            acc = acc_q4_k(
                acc,
                b.d.to_f32(),
                b.dmin.to_f32(),
                y,
                vaddvq_s32(sum),
                q4k_min_sum(&mn, y),
            );
        }
        acc
    }
}

/// [`super::dot_q6_k_q8_k`], bit-identical.
///
/// # Safety
/// NEON available; `x.len() >= w.len()`.
#[target_feature(enable = "neon")]
pub unsafe fn dot_q6_k_q8_k(w: &[BlockQ6K], x: &[BlockQ8K]) -> f32 {
    debug_assert!(x.len() >= w.len());
    // SAFETY: NEON is the caller's; per half h and 16-weight column t the loads read
    // ql[64h + 16t ..][..16] and [+32], qh[32h + 16t..][..16] and activations within
    // [128h..128h + 128].
    unsafe {
        let low = vdupq_n_u8(0x0f);
        let two = vdupq_n_u8(0x03);
        let mut acc = 0f32;
        for (b, y) in w.iter().zip(x) {
            let mut sum = vdupq_n_s32(0);
            for h in 0..2 {
                // t: which 16 of each group's 32 weights (sub-block 8h + 2k + t)
                for t in 0..2 {
                    let ql0 = vld1q_u8(b.ql.as_ptr().add(64 * h + 16 * t));
                    let ql1 = vld1q_u8(b.ql.as_ptr().add(64 * h + 32 + 16 * t));
                    let qh = vld1q_u8(b.qh.as_ptr().add(32 * h + 16 * t));
                    let codes = [
                        vorrq_u8(vandq_u8(ql0, low), vshlq_n_u8::<4>(vandq_u8(qh, two))),
                        vorrq_u8(
                            vandq_u8(ql1, low),
                            vshlq_n_u8::<4>(vandq_u8(vshrq_n_u8::<2>(qh), two)),
                        ),
                        vorrq_u8(
                            vshrq_n_u8::<4>(ql0),
                            vshlq_n_u8::<4>(vandq_u8(vshrq_n_u8::<4>(qh), two)),
                        ),
                        vorrq_u8(vshrq_n_u8::<4>(ql1), vshlq_n_u8::<4>(vshrq_n_u8::<6>(qh))),
                    ];
                    for (k, c) in codes.into_iter().enumerate() {
                        let yv = vld1q_s8(y.qs.as_ptr().add(128 * h + 32 * k + 16 * t));
                        let p = dot16(vreinterpretq_s8_u8(c), yv);
                        sum = vmlaq_n_s32(sum, p, i32::from(b.scales[8 * h + 2 * k + t]));
                    }
                }
            }
            acc = acc_q6_k(
                acc,
                b.d.to_f32(),
                y,
                vaddvq_s32(sum) - 32 * q6k_offset_sum(b, y),
            );
        }
        acc
    }
}
