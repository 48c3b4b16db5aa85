//! NEON versions of the quantised products (4 f32 lanes). NEON is part of every aarch64
//! target Modula supports, but the caller still checks it at run time like every ISA;
//! lengths as documented on the references: `x`/`y` hold `w.len() × 32` values.

use crate::blocks::{BlockQ4_0, BlockQ8_0};
use core::arch::aarch64::*;

/// 16 signed bytes as four vectors of 4 f32.
#[inline(always)]
unsafe fn widen16(v: int8x16_t) -> [float32x4_t; 4] {
    // SAFETY: NEON is the caller's.
    unsafe {
        let lo = vmovl_s8(vget_low_s8(v));
        let hi = vmovl_s8(vget_high_s8(v));
        [
            vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo))),
            vcvtq_f32_s32(vmovl_s16(vget_high_s16(lo))),
            vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi))),
            vcvtq_f32_s32(vmovl_s16(vget_high_s16(hi))),
        ]
    }
}

/// A block's 32 weights (Q8_0 values, or Q4_0 codes minus 8) as two 16-byte halves.
#[inline(always)]
unsafe fn halves_q8(b: &BlockQ8_0) -> [int8x16_t; 2] {
    // SAFETY: NEON is the caller's; the block holds 32 bytes.
    unsafe { [vld1q_s8(b.qs.as_ptr()), vld1q_s8(b.qs.as_ptr().add(16))] }
}

#[inline(always)]
unsafe fn halves_q4(b: &BlockQ4_0) -> [int8x16_t; 2] {
    // SAFETY: NEON is the caller's; the block holds 16 bytes of nibbles.
    unsafe {
        let v = vld1q_u8(b.qs.as_ptr());
        let eight = vdupq_n_s8(8);
        let lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0f))), eight);
        let hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8::<4>(v)), eight);
        [lo, hi]
    }
}

#[inline(always)]
unsafe fn block_dot(h: [int8x16_t; 2], x: *const f32) -> float32x4_t {
    // SAFETY: NEON is the caller's; 32 readable f32 at x.
    unsafe {
        let mut s = vdupq_n_f32(0.0);
        for (k, half) in h.iter().enumerate() {
            for (j, q) in widen16(*half).iter().enumerate() {
                s = vfmaq_f32(s, *q, vld1q_f32(x.add(16 * k + 4 * j)));
            }
        }
        s
    }
}

#[inline(always)]
unsafe fn block_axpy(h: [int8x16_t; 2], s: f32, y: *mut f32) {
    // SAFETY: NEON is the caller's; 32 writable f32 at y.
    unsafe {
        for (k, half) in h.iter().enumerate() {
            for (j, q) in widen16(*half).iter().enumerate() {
                let p = y.add(16 * k + 4 * j);
                vst1q_f32(p, vfmaq_n_f32(vld1q_f32(p), *q, s));
            }
        }
    }
}

/// [`super::dot_q8_0`].
///
/// # Safety
/// NEON available; `x.len() >= w.len() * 32`.
#[target_feature(enable = "neon")]
pub unsafe fn dot_q8_0(w: &[BlockQ8_0], x: &[f32]) -> f32 {
    debug_assert!(x.len() >= w.len() * 32);
    // SAFETY: block i reads x[32i..32i+32], in bounds.
    unsafe {
        let mut acc = vdupq_n_f32(0.0);
        for (i, b) in w.iter().enumerate() {
            let s = block_dot(halves_q8(b), x.as_ptr().add(32 * i));
            acc = vfmaq_n_f32(acc, s, b.d.to_f32());
        }
        vaddvq_f32(acc)
    }
}

/// [`super::dot_q4_0`].
///
/// # Safety
/// NEON available; `x.len() >= w.len() * 32`.
#[target_feature(enable = "neon")]
pub unsafe fn dot_q4_0(w: &[BlockQ4_0], x: &[f32]) -> f32 {
    debug_assert!(x.len() >= w.len() * 32);
    // SAFETY: as for dot_q8_0.
    unsafe {
        let mut acc = vdupq_n_f32(0.0);
        for (i, b) in w.iter().enumerate() {
            let s = block_dot(halves_q4(b), x.as_ptr().add(32 * i));
            acc = vfmaq_n_f32(acc, s, b.d.to_f32());
        }
        vaddvq_f32(acc)
    }
}

/// [`super::axpy_q8_0`].
///
/// # Safety
/// NEON available; `y.len() >= w.len() * 32`.
#[target_feature(enable = "neon")]
pub unsafe fn axpy_q8_0(a: f32, w: &[BlockQ8_0], y: &mut [f32]) {
    debug_assert!(y.len() >= w.len() * 32);
    // SAFETY: block i writes y[32i..32i+32], in bounds.
    unsafe {
        for (i, b) in w.iter().enumerate() {
            block_axpy(halves_q8(b), a * b.d.to_f32(), y.as_mut_ptr().add(32 * i));
        }
    }
}

/// [`super::axpy_q4_0`].
///
/// # Safety
/// NEON available; `y.len() >= w.len() * 32`.
#[target_feature(enable = "neon")]
pub unsafe fn axpy_q4_0(a: f32, w: &[BlockQ4_0], y: &mut [f32]) {
    debug_assert!(y.len() >= w.len() * 32);
    // SAFETY: as for axpy_q8_0.
    unsafe {
        for (i, b) in w.iter().enumerate() {
            block_axpy(halves_q4(b), a * b.d.to_f32(), y.as_mut_ptr().add(32 * i));
        }
    }
}

/// `Σ_blocks d_w·d_x·(Σ q_w·q_x)` over weight blocks `B` against Q8_0 activation blocks:
/// `halves` gives a block's 32 signed weights and its scale, `dot` the i32 lanes of a
/// 16-byte product (their sum over lanes is the exact integer).
#[inline(always)]
unsafe fn qq_dot<B>(
    w: &[B],
    x: &[BlockQ8_0],
    halves: impl Fn(&B) -> ([int8x16_t; 2], f32),
    dot: impl Fn(int32x4_t, int8x16_t, int8x16_t) -> int32x4_t,
) -> f32 {
    // SAFETY: NEON (and whatever `dot` needs) is the caller's; each Q8_0 block holds 32
    // bytes.
    unsafe {
        let mut acc = vdupq_n_f32(0.0);
        for (b, xb) in w.iter().zip(x) {
            let ([a0, a1], dw) = halves(b);
            let [c0, c1] = halves_q8(xb);
            let s = dot(dot(vdupq_n_s32(0), a0, c0), a1, c1);
            acc = vfmaq_n_f32(acc, vcvtq_f32_s32(s), dw * xb.d.to_f32());
        }
        vaddvq_f32(acc)
    }
}

/// `acc + Σ a·b` over 16 signed bytes as 4 i32 lanes (widening multiplies; no `dotprod`).
#[inline(always)]
unsafe fn mul_acc_i8x16(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: NEON is the caller's.
    unsafe {
        let lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
        let hi = vmull_high_s8(a, b);
        vaddq_s32(acc, vaddq_s32(vpaddlq_s16(lo), vpaddlq_s16(hi)))
    }
}

/// [`super::dot_q8_0_q8_0`].
///
/// # Safety
/// NEON available; `x.len() >= w.len()`.
#[target_feature(enable = "neon")]
pub unsafe fn dot_q8_0_q8_0(w: &[BlockQ8_0], x: &[BlockQ8_0]) -> f32 {
    debug_assert!(x.len() >= w.len());
    // SAFETY: NEON is the caller's; blocks hold 32 bytes.
    unsafe {
        qq_dot(
            w,
            x,
            |b| (halves_q8(b), b.d.to_f32()),
            |acc, a, c| mul_acc_i8x16(acc, a, c),
        )
    }
}

/// [`super::dot_q4_0_q8_0`].
///
/// # Safety
/// NEON available; `x.len() >= w.len()`.
#[target_feature(enable = "neon")]
pub unsafe fn dot_q4_0_q8_0(w: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
    debug_assert!(x.len() >= w.len());
    // SAFETY: NEON is the caller's; blocks hold 16 (Q4_0) or 32 (Q8_0) bytes.
    unsafe {
        qq_dot(
            w,
            x,
            |b| (halves_q4(b), b.d.to_f32()),
            |acc, a, c| mul_acc_i8x16(acc, a, c),
        )
    }
}

/// `SDOT`: lane `j` of `acc` plus `Σ a[4j..4j+4]·b[4j..4j+4]` (the `dotprod` extension;
/// `vdotq_s32` is not stable Rust yet, so the instruction is written out).
#[inline(always)]
unsafe fn sdot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: the caller guarantees `dotprod`; the instruction only reads and writes the
    // three vector registers.
    unsafe {
        core::arch::asm!(
            ".arch_extension dotprod",
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
}

/// [`super::dot_q8_0_q8_0`] with `SDOT` (Armv8.2 `dotprod`: Cortex-A55/A76 and later,
/// Raspberry Pi 5, Apple M1): one instruction per 16 byte products instead of widening
/// multiplies and pairwise adds. Agrees with the other versions to f32 rounding (its
/// lanes hold other partial sums of the same exact block integer).
///
/// # Safety
/// NEON and `dotprod` available; `x.len() >= w.len()`.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn dot_q8_0_q8_0_dotprod(w: &[BlockQ8_0], x: &[BlockQ8_0]) -> f32 {
    debug_assert!(x.len() >= w.len());
    // SAFETY: NEON and dotprod are the caller's; blocks hold 32 bytes.
    unsafe {
        qq_dot(
            w,
            x,
            |b| (halves_q8(b), b.d.to_f32()),
            |acc, a, c| sdot(acc, a, c),
        )
    }
}

/// [`super::dot_q4_0_q8_0`] with `SDOT` (see [`dot_q8_0_q8_0_dotprod`]).
///
/// # Safety
/// NEON and `dotprod` available; `x.len() >= w.len()`.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn dot_q4_0_q8_0_dotprod(w: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
    debug_assert!(x.len() >= w.len());
    // SAFETY: NEON and dotprod are the caller's; blocks hold 16 (Q4_0) or 32 (Q8_0) bytes.
    unsafe {
        qq_dot(
            w,
            x,
            |b| (halves_q4(b), b.d.to_f32()),
            |acc, a, c| sdot(acc, a, c),
        )
    }
}
