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

/// `out[0..32] = d · q` for one block (one multiply per value, as the scalar dequantiser:
/// the same bits).
#[inline(always)]
unsafe fn block_store(h: [int8x16_t; 2], d: f32, out: *mut f32) {
    // SAFETY: NEON is the caller's; 32 writable f32 at out.
    unsafe {
        for (k, half) in h.iter().enumerate() {
            for (j, q) in widen16(*half).iter().enumerate() {
                vst1q_f32(out.add(16 * k + 4 * j), vmulq_n_f32(*q, d));
            }
        }
    }
}

/// [`crate::quantize::dequantize_row_q8_0`], bit-identical.
///
/// # Safety
/// NEON available; `out.len() >= w.len() * 32`.
#[target_feature(enable = "neon")]
pub unsafe fn dequantize_q8_0(w: &[BlockQ8_0], out: &mut [f32]) {
    assert!(out.len() >= w.len() * 32);
    // SAFETY: block i writes out[32i .. 32i + 32], in bounds.
    unsafe {
        for (i, b) in w.iter().enumerate() {
            block_store(halves_q8(b), b.d.to_f32(), out.as_mut_ptr().add(32 * i));
        }
    }
}

/// [`crate::quantize::dequantize_row_q4_0`], bit-identical.
///
/// # Safety
/// NEON available; `out.len() >= w.len() * 32`.
#[target_feature(enable = "neon")]
pub unsafe fn dequantize_q4_0(w: &[BlockQ4_0], out: &mut [f32]) {
    assert!(out.len() >= w.len() * 32);
    // SAFETY: as for dequantize_q8_0.
    unsafe {
        for (i, b) in w.iter().enumerate() {
            block_store(halves_q4(b), b.d.to_f32(), out.as_mut_ptr().add(32 * i));
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

/// Four F16 values (raw bits) as f32 with one `FCVTL` — base Armv8.0 Advanced SIMD, so
/// cores without the `fp16` arithmetic extension (Cortex-A53/A72) convert in hardware
/// instead of `half`'s software path. Written out: `vcvt_f32_f16` needs Rust's unstable
/// `float16x4_t`.
#[inline(always)]
unsafe fn f16x4_to_f32(bits: [u16; 4]) -> float32x4_t {
    // SAFETY: NEON is the caller's; 4 readable u16 in `bits`.
    unsafe { fcvtl(vld1_u16(bits.as_ptr())) }
}

/// `FCVTL`: four F16 values (raw bits) as f32.
#[inline(always)]
unsafe fn fcvtl(h: uint16x4_t) -> float32x4_t {
    let out: float32x4_t;
    // SAFETY: NEON is the caller's; the instruction only reads and writes two vector
    // registers.
    unsafe {
        core::arch::asm!(
            "fcvtl {o:v}.4s, {h:v}.4h",
            h = in(vreg) h,
            o = lateout(vreg) out,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    out
}

/// `Σ_blocks d_w·d_x·(Σ q_w·q_x)` over weight blocks `B` against Q8_0 activation blocks:
/// `halves` gives a block's 32 signed weights and its scale, `dot` the i32 lanes of a
/// 16-byte product (their sum over lanes is the exact integer). Blocks go in groups of 4
/// (as the AVX2 kernels do): pairwise adds reduce each block's lanes to its exact
/// integer, and the 4 blocks share one int→float conversion, one conversion of the 4
/// weight and 4 activation scales (`FCVTL`) and one FMA; the `len % 4` tail blocks go one
/// at a time.
#[inline(always)]
unsafe fn qq_dot<B>(
    w: &[B],
    x: &[BlockQ8_0],
    halves: impl Fn(&B) -> ([int8x16_t; 2], half::f16),
    dot: impl Fn(int32x4_t, int8x16_t, int8x16_t) -> int32x4_t,
) -> f32 {
    // SAFETY: NEON (and whatever `dot` needs) is the caller's; each Q8_0 block holds 32
    // bytes; the index ranges are within the slices (x.len() >= w.len()).
    unsafe {
        let block = |b: &B, xb: &BlockQ8_0| -> (int32x4_t, u16, u16) {
            let ([a0, a1], dw) = halves(b);
            let [c0, c1] = halves_q8(xb);
            let s = dot(dot(vdupq_n_s32(0), a0, c0), a1, c1);
            (s, dw.to_bits(), xb.d.to_bits())
        };
        let groups = w.len() / 4;
        let (even, odd) = even_odd!(groups, vdupq_n_f32(0.0), |g, acc| {
            let (s0, w0, x0) = block(&w[4 * g], &x[4 * g]);
            let (s1, w1, x1) = block(&w[4 * g + 1], &x[4 * g + 1]);
            let (s2, w2, x2) = block(&w[4 * g + 2], &x[4 * g + 2]);
            let (s3, w3, x3) = block(&w[4 * g + 3], &x[4 * g + 3]);
            // [Σ s0, Σ s1, Σ s2, Σ s3]: each block's exact integer
            let t = vpaddq_s32(vpaddq_s32(s0, s1), vpaddq_s32(s2, s3));
            let sc = vmulq_f32(
                f16x4_to_f32([w0, w1, w2, w3]),
                f16x4_to_f32([x0, x1, x2, x3]),
            );
            vfmaq_f32(acc, vcvtq_f32_s32(t), sc)
        });
        let mut tail = vdupq_n_f32(0.0);
        for (b, xb) in w[4 * groups..].iter().zip(&x[4 * groups..]) {
            let (s, dw, dx) = block(b, xb);
            let d = f16x4_to_f32([dw, dx, 0, 0]);
            let sc = vgetq_lane_f32::<0>(d) * vgetq_lane_f32::<1>(d);
            tail = vfmaq_n_f32(tail, vcvtq_f32_s32(s), sc);
        }
        vaddvq_f32(vaddq_f32(even, odd)) + vaddvq_f32(tail)
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
            |b| (halves_q8(b), b.d),
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
            |b| (halves_q4(b), b.d),
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
    unsafe { qq_dot(w, x, |b| (halves_q8(b), b.d), |acc, a, c| sdot(acc, a, c)) }
}

/// [`super::dot_q4_0_q8_0`] with `SDOT` (see [`dot_q8_0_q8_0_dotprod`]).
///
/// # Safety
/// NEON and `dotprod` available; `x.len() >= w.len()`.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn dot_q4_0_q8_0_dotprod(w: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
    debug_assert!(x.len() >= w.len());
    // SAFETY: NEON and dotprod are the caller's; blocks hold 16 (Q4_0) or 32 (Q8_0) bytes.
    unsafe { qq_dot(w, x, |b| (halves_q4(b), b.d), |acc, a, c| sdot(acc, a, c)) }
}

/// The activation side of an integer tile ([`super::axpy_rows_q4_0`]), 4 column blocks at
/// a time (scales widened by `FCVTL`, `FCVTNS` rounding to nearest, ties to even, as
/// `rintf`): per block `b < nb` the scale `s[b]` and `c'_{r,b}` at `cq[b][r]`. `scale`
/// gives a weight block's scale as f16 bits. False when the tile cannot be quantised.
///
/// # Safety
/// NEON available; `1 <= x.len() <= TILE_ROWS`, `1 <= nb <= TILE_BLOCKS`,
/// `w.len() >= (x.len() − 1)·ld + nb`.
#[inline(always)]
unsafe fn tile_scales<B>(
    x: &[f32],
    w: &[B],
    ld: usize,
    nb: usize,
    scale: impl Fn(&B) -> u16,
    s: &mut [f32; super::TILE_BLOCKS],
    cq: &mut [[i8; super::TILE_ROWS]; super::TILE_BLOCKS],
) -> bool {
    use super::{TILE_ROWS, TILE_TINY};
    let rows = x.len();
    // SAFETY: NEON is the caller's; stores go to s lanes 4g .. 4g+4 ≤ TILE_BLOCKS; the
    // stack vectors c are read at r < rows ≤ TILE_ROWS after their writes in the group.
    unsafe {
        let c127 = vdupq_n_f32(127.0);
        // not zero-filled per group (as on AVX2, where that memset cost ~2 % of a decode)
        let mut c_buf = core::mem::MaybeUninit::<[float32x4_t; TILE_ROWS]>::uninit();
        let c = c_buf.as_mut_ptr().cast::<float32x4_t>();
        for g in 0..nb.div_ceil(4) {
            let mut amax = vdupq_n_f32(0.0);
            // a non-finite c makes the sum non-finite (so may an overflowing sum of finite
            // ones: such a tile is refused too)
            let mut sum = vdupq_n_f32(0.0);
            for r in 0..rows {
                // 4 scales from block 4g, zero past nb (c = 0 there)
                let mut bits = [0u16; 4];
                for (k, v) in bits.iter_mut().enumerate().take(nb - 4 * g) {
                    *v = scale(&w[r * ld + 4 * g + k]);
                }
                let cr = vmulq_n_f32(f16x4_to_f32(bits), x[r]);
                c.add(r).write(cr);
                sum = vaddq_f32(sum, cr);
                amax = vmaxq_f32(amax, vabsq_f32(cr));
            }
            let finite = vcltq_f32(vabsq_f32(sum), vdupq_n_f32(f32::INFINITY));
            let nonzero = vcgtq_f32(amax, vdupq_n_f32(0.0));
            let small = vandq_u32(nonzero, vcltq_f32(amax, vdupq_n_f32(TILE_TINY)));
            if vminvq_u32(finite) == 0 || vmaxvq_u32(small) != 0 {
                return false;
            }
            // 127 / 0 = inf is masked to 0 (c = 0 there)
            let inv = vreinterpretq_f32_u32(vandq_u32(
                vreinterpretq_u32_f32(vdivq_f32(c127, amax)),
                nonzero,
            ));
            vst1q_f32(s.as_mut_ptr().add(4 * g), vdivq_f32(amax, c127));
            for r in 0..rows {
                let q = vcvtnq_s32_f32(vmulq_f32(c.add(r).read(), inv));
                let mut lanes = [0i32; 4];
                vst1q_s32(lanes.as_mut_ptr(), q);
                for (k, v) in lanes.iter().enumerate().take(nb - 4 * g) {
                    cq[4 * g + k][r] = *v as i8;
                }
            }
        }
    }
    true
}

/// `y[4k .. 4k+4] += s · acc` for the 8 lanes-of-4 of a block's 32-bit sums.
#[inline(always)]
unsafe fn tile_store(acc: [int32x4_t; 8], s: f32, y: *mut f32) {
    // SAFETY: NEON is the caller's; 32 writable f32 at y.
    unsafe {
        let sv = vdupq_n_f32(s);
        for (k, a) in acc.iter().enumerate() {
            let o = y.add(4 * k);
            vst1q_f32(o, vaddq_f32(vld1q_f32(o), vmulq_f32(sv, vcvtq_f32_s32(*a))));
        }
    }
}

/// [`super::axpy_rows_q4_0`], bit-identical to it: the tile's activation scales
/// (`tile_scales`), then per block and row the 32 signed weights `q − 8` times `c'_r`
/// accumulated in 16 bits by `SMLAL` (exact: at most 32 rows × 8 × 127 = 32,512), widened
/// to 32 bits, converted and added as `y += s_b · sum`.
///
/// # Safety
/// NEON available; `x.len() <= TILE_ROWS`, `nb <= TILE_BLOCKS`,
/// `w.len() >= (x.len() − 1)·ld + nb` (when `x` is not empty) and `y.len() >= 32·nb`.
#[target_feature(enable = "neon")]
pub unsafe fn axpy_rows_q4_0(
    x: &[f32],
    w: &[BlockQ4_0],
    ld: usize,
    nb: usize,
    y: &mut [f32],
) -> bool {
    use super::{TILE_BLOCKS, TILE_ROWS};
    let rows = x.len();
    assert!(rows <= TILE_ROWS && nb <= TILE_BLOCKS, "tile too large");
    if rows == 0 || nb == 0 {
        return true;
    }
    debug_assert!(w.len() >= (rows - 1) * ld + nb && y.len() >= 32 * nb);
    let mut s = [0f32; TILE_BLOCKS];
    let mut cq = [[0i8; TILE_ROWS]; TILE_BLOCKS];
    // SAFETY: NEON is the caller's; the tile is within tile_scales' bounds; reads stay
    // inside `w` (row r < rows, block b < nb), writes inside `y` (y[32b .. 32b+32]).
    unsafe {
        if !tile_scales(x, w, ld, nb, |b| b.d.to_bits(), &mut s, &mut cq) {
            return false;
        }
        for b in 0..nb {
            // 16-bit sums of outputs 0..8, 8..16, 16..24, 24..32
            let mut acc = [vdupq_n_s16(0); 4];
            for r in 0..rows {
                let [lo, hi] = halves_q4(&*w.as_ptr().add(r * ld + b));
                let cv = vdup_n_s8(cq[b][r]);
                acc[0] = vmlal_s8(acc[0], vget_low_s8(lo), cv);
                acc[1] = vmlal_s8(acc[1], vget_high_s8(lo), cv);
                acc[2] = vmlal_s8(acc[2], vget_low_s8(hi), cv);
                acc[3] = vmlal_s8(acc[3], vget_high_s8(hi), cv);
            }
            let mut wide = [vdupq_n_s32(0); 8];
            for (k, a) in acc.iter().enumerate() {
                wide[2 * k] = vmovl_s16(vget_low_s16(*a));
                wide[2 * k + 1] = vmovl_s16(vget_high_s16(*a));
            }
            tile_store(wide, s[b], y.as_mut_ptr().add(32 * b));
        }
    }
    true
}

/// Four F16 values (raw bits) from four addresses, as f32 (4 lane loads, one `FCVTL`).
#[inline(always)]
unsafe fn f16x4_gather(p: [*const u16; 4]) -> float32x4_t {
    // SAFETY: NEON is the caller's; the four addresses are readable (the caller's).
    unsafe {
        let mut h = vld1_dup_u16(p[0]);
        h = vld1_lane_u16::<1>(p[1], h);
        h = vld1_lane_u16::<2>(p[2], h);
        h = vld1_lane_u16::<3>(p[3], h);
        fcvtl(h)
    }
}

/// `Σ a·b` over two pairs of 16 signed bytes as 4 i32 lanes, without `dotprod`: per pair
/// one `SMULL` and one `SMLAL2` (two products per 16-bit lane: exact while `b` is in
/// `[−127, 127]`, as [`crate::quantize::quantize_row_q8_0`] writes, since then each product
/// is at most 128 · 127 in magnitude), then `SADDLP` + `SADALP` into the 32-bit lanes.
/// Written out: from the intrinsics LLVM rebuilt Q4_0's codes (known to be small) as
/// zero-extensions and 16-bit multiplies, and in the 4-row kernels split `SMLAL2` into
/// `EXT` + `SMLAL` (seen in the disassembly).
#[inline(always)]
unsafe fn mul_pairs(a: [int8x16_t; 2], b: [int8x16_t; 2]) -> int32x4_t {
    let acc: int32x4_t;
    // SAFETY: NEON is the caller's; the instructions only read and write vector
    // registers.
    unsafe {
        core::arch::asm!(
            "smull {t0:v}.8h, {a0:v}.8b, {b0:v}.8b",
            "smull {t1:v}.8h, {a1:v}.8b, {b1:v}.8b",
            "smlal2 {t0:v}.8h, {a0:v}.16b, {b0:v}.16b",
            "smlal2 {t1:v}.8h, {a1:v}.16b, {b1:v}.16b",
            "saddlp {acc:v}.4s, {t0:v}.8h",
            "sadalp {acc:v}.4s, {t1:v}.8h",
            a0 = in(vreg) a[0],
            a1 = in(vreg) a[1],
            b0 = in(vreg) b[0],
            b1 = in(vreg) b[1],
            t0 = out(vreg) _,
            t1 = out(vreg) _,
            acc = out(vreg) acc,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
}

/// `Σ a·b` over two pairs of 16 signed bytes with `SDOT` (any values).
#[inline(always)]
unsafe fn sdot_pairs(a: [int8x16_t; 2], b: [int8x16_t; 2]) -> int32x4_t {
    // SAFETY: `dotprod` is the caller's.
    unsafe { sdot(sdot(vdupq_n_s32(0), a[0], b[0]), a[1], b[1]) }
}

/// `[Σ v[0], Σ v[1], Σ v[2], Σ v[3]]` (each over its 4 lanes) by three `ADDP`. Written
/// out: from `vpaddq_s32` LLVM built the second level from `UZP1` + `UZP2` + `ADD` (seen
/// in the disassembly).
#[inline(always)]
unsafe fn addp4(v: [int32x4_t; 4]) -> int32x4_t {
    let out: int32x4_t;
    // SAFETY: NEON is the caller's; the instructions only read and write vector
    // registers.
    unsafe {
        core::arch::asm!(
            "addp {t0:v}.4s, {a:v}.4s, {b:v}.4s",
            "addp {t1:v}.4s, {c:v}.4s, {d:v}.4s",
            "addp {o:v}.4s, {t0:v}.4s, {t1:v}.4s",
            a = in(vreg) v[0],
            b = in(vreg) v[1],
            c = in(vreg) v[2],
            d = in(vreg) v[3],
            t0 = out(vreg) _,
            t1 = out(vreg) _,
            o = out(vreg) out,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    out
}

/// [`crate::quantize::quantize_row_q8_0`] of an activation row, bit-identical to it:
/// the block's largest magnitude by `FMAXV`, its scales by the scalar code
/// (`q8_0_scales`), then per value `v · (1/d)` converted by `FCVTAS` (round half away from
/// zero, as `roundf`) and narrowed with signed saturation (as `as i8`). A block whose
/// `1/d` overflows (subnormal scales) runs the scalar code. False (with `out`
/// unspecified) when a value is not finite, where the scalar code returns an error.
///
/// # Safety
/// NEON available; `x.len() == 32 · out.len()`.
#[target_feature(enable = "neon")]
pub unsafe fn quantize_q8_0(x: &[f32], out: &mut [BlockQ8_0]) -> bool {
    debug_assert_eq!(x.len(), 32 * out.len());
    // SAFETY: NEON is the caller's; block i reads x[32i .. 32i + 32], within `x`.
    unsafe {
        let inf = vdupq_n_f32(f32::INFINITY);
        for (i, b) in out.iter_mut().enumerate() {
            let p = x.as_ptr().add(32 * i);
            let v: [float32x4_t; 8] = core::array::from_fn(|k| vld1q_f32(p.add(4 * k)));
            let a = v.map(|v| vabsq_f32(v));
            let mut finite = vcltq_f32(a[0], inf);
            let mut m = a[0];
            for a in &a[1..] {
                finite = vandq_u32(finite, vcltq_f32(*a, inf));
                m = vmaxq_f32(m, *a);
            }
            if vminvq_u32(finite) != u32::MAX {
                return false;
            }
            let (d, id) = crate::quantize::q8_0_scales(vmaxvq_f32(m));
            if !id.is_finite() {
                crate::quantize::quantize_block_q8_0(core::slice::from_raw_parts(p, 32), b);
                continue;
            }
            b.d = d;
            let q = v.map(|v| vcvtaq_s32_f32(vmulq_n_f32(v, id)));
            let h: [int16x8_t; 4] = core::array::from_fn(|k| {
                vcombine_s16(vqmovn_s32(q[2 * k]), vqmovn_s32(q[2 * k + 1]))
            });
            vst1q_s8(
                b.qs.as_mut_ptr(),
                vcombine_s8(vqmovn_s16(h[0]), vqmovn_s16(h[1])),
            );
            vst1q_s8(
                b.qs.as_mut_ptr().add(16),
                vcombine_s8(vqmovn_s16(h[2]), vqmovn_s16(h[3])),
            );
        }
        true
    }
}

/// A Q4_0 block's 32 *unsigned* codes (0..=15) as two 16-byte halves; the kernels
/// subtract `8 · Σx` per block afterwards (the [`super::Q8Oct`] correction).
#[inline(always)]
unsafe fn codes_q4(b: *const BlockQ4_0) -> [int8x16_t; 2] {
    // SAFETY: NEON is the caller's; the block holds 16 bytes of nibbles.
    unsafe {
        let v = vld1q_u8((*b).qs.as_ptr());
        [
            vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0f))),
            vreinterpretq_s8_u8(vshrq_n_u8::<4>(v)),
        ]
    }
}

#[inline(always)]
unsafe fn codes_q8(b: *const BlockQ8_0) -> [int8x16_t; 2] {
    // SAFETY: NEON is the caller's; the block holds 32 bytes.
    unsafe {
        [
            vld1q_s8((*b).qs.as_ptr()),
            vld1q_s8((*b).qs.as_ptr().add(16)),
        ]
    }
}

/// The octet kernels' driver (the AVX2 kernels' structure, `avx2::dot_q4_0_q8_0_octs`):
/// `R` weight rows against one Q8_0 activation row, 8 blocks ("octet") per step. Each
/// block's integer dot goes into its own 4 lanes (`dot`), pairwise adds (`ADDP`) reduce
/// the even blocks 0, 2, 4, 6 into one vector and the odd ones into another — the lane
/// order of [`super::Q8Oct`] ([`super::OCT_LANES`]) — so each lane holds one block's exact
/// integer; Q4_0 (`q4`) then subtracts the octet's `8 · Σx`. The 8 weight scales are
/// gathered by lane loads and widened by two `FCVTL`, the 8 activation scales come as f32
/// from the `Q8Oct`, and each vector takes one conversion, one multiply of the scales and
/// one FMA. The activation blocks are loaded once per octet for all `R` rows, and each
/// row's operations do not depend on `R` (so the 4-row kernels give the 1-row bits). A
/// last partial octet runs with zero lanes and zero weight scales for the missing blocks
/// (nothing past the rows read; the `Q8Oct` is zero-padded by [`super::q8_octs`]).
///
/// # Safety
/// NEON (and what `dot` needs) available; every row of `w` has `n = w[0].len()` blocks,
/// `x.len() >= n`, `octs.len() >= n.div_ceil(8)`.
#[inline(always)]
unsafe fn octs_dot<B, const R: usize>(
    w: [&[B]; R],
    x: &[BlockQ8_0],
    octs: &[super::Q8Oct],
    q4: bool,
    codes: impl Fn(*const B) -> [int8x16_t; 2],
    scale: impl Fn(*const B) -> *const u16,
    dot: impl Fn([int8x16_t; 2], [int8x16_t; 2]) -> int32x4_t,
) -> [f32; R] {
    let n = w[0].len();
    debug_assert!(w.iter().all(|r| r.len() == n));
    debug_assert!(x.len() >= n && octs.len() >= n.div_ceil(8));
    // SAFETY: NEON (and `dot`'s extension) are the caller's; octet `g` covers blocks
    // `8g .. 8g + len` with `8g + len <= n`, within every row and `x`, and
    // `g < n.div_ceil(8)`, within `octs`.
    unsafe {
        let mut acc = [[vdupq_n_f32(0.0); 2]; R];
        let full = n / 8;
        for g in 0..full {
            oct_step(&mut acc, &w, x, octs, g, 8, q4, &codes, &scale, &dot);
        }
        match n % 8 {
            0 => {}
            // half an octet (rows of 128, 384, … values): its own copy, the checks
            // folded away
            4 => oct_step(&mut acc, &w, x, octs, full, 4, q4, &codes, &scale, &dot),
            len => oct_step(&mut acc, &w, x, octs, full, len, q4, &codes, &scale, &dot),
        }
        acc.map(|[e, o]| vaddvq_f32(vaddq_f32(e, o)))
    }
}

/// One octet of `octs_dot`: blocks `8g .. 8g + len` (`len <= 8`; a constant 8 in the
/// main loop, where the checks against it fold away).
///
/// # Safety
/// As `octs_dot`, and `8g + len <= n`, `g < octs.len()`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn oct_step<B, const R: usize>(
    acc: &mut [[float32x4_t; 2]; R],
    w: &[&[B]; R],
    x: &[BlockQ8_0],
    octs: &[super::Q8Oct],
    g: usize,
    len: usize,
    q4: bool,
    codes: &impl Fn(*const B) -> [int8x16_t; 2],
    scale: &impl Fn(*const B) -> *const u16,
    dot: &impl Fn([int8x16_t; 2], [int8x16_t; 2]) -> int32x4_t,
) {
    // SAFETY: the caller's contract: blocks below `8g + len` exist in every row and `x`.
    unsafe {
        let xp = x.as_ptr().add(8 * g);
        let o = &*octs.as_ptr().add(g);
        let xs = [
            vld1q_f32(o.scale.as_ptr()),
            vld1q_f32(o.scale.as_ptr().add(4)),
        ];
        let corr = [
            vld1q_s32(o.corr.as_ptr()),
            vld1q_s32(o.corr.as_ptr().add(4)),
        ];
        // with several rows, the octet's activation halves loaded once for all of them
        // (one row loads each where it uses it: fewer live registers, no spills)
        let mut xh = [[vdupq_n_s8(0); 2]; 8];
        if R > 1 {
            for (k, h) in xh.iter_mut().enumerate().take(len) {
                *h = codes_q8(xp.add(k));
            }
        }
        let zero = 0u16;
        for (r, a) in acc.iter_mut().enumerate() {
            let p = w[r].as_ptr().add(8 * g);
            let block = |k: usize| {
                if k < len {
                    let xk = if R > 1 { xh[k] } else { codes_q8(xp.add(k)) };
                    dot(codes(p.add(k)), xk)
                } else {
                    vdupq_n_s32(0)
                }
            };
            for (half, a) in a.iter_mut().enumerate() {
                // blocks half, half + 2, half + 4, half + 6: the lanes of `Q8Oct`
                let b = [0, 2, 4, 6].map(|j| j + half);
                let mut s = addp4([block(b[0]), block(b[1]), block(b[2]), block(b[3])]);
                if q4 {
                    s = vsubq_s32(s, corr[half]);
                }
                let ws = f16x4_gather(b.map(|k| {
                    if k < len {
                        scale(p.add(k))
                    } else {
                        &zero as *const u16
                    }
                }));
                *a = vfmaq_f32(*a, vcvtq_f32_s32(s), vmulq_f32(ws, xs[half]));
            }
        }
    }
}

/// The octet kernels' public forms: one row or four, over `octs_dot`.
macro_rules! octs_kernels {
    ($($(#[$doc:meta])* $name:ident($feat:literal, $B:ty, $R:tt, $q4:literal, $codes:ident, $dot:ident);)*) => {$(
        $(#[$doc])*
        #[target_feature(enable = $feat)]
        pub unsafe fn $name(
            w: octs_kernels!(@rows $R, $B),
            x: &[BlockQ8_0],
            octs: &[super::Q8Oct],
        ) -> octs_kernels!(@out $R) {
            // SAFETY: the caller's contract (the target features, equal row lengths,
            // `x` and `octs` long enough).
            let r = unsafe {
                octs_dot(
                    octs_kernels!(@arr $R, w),
                    x,
                    octs,
                    $q4,
                    |b| $codes(b),
                    |b| core::ptr::addr_of!((*b).d).cast::<u16>(),
                    |p, q| $dot(p, q),
                )
            };
            octs_kernels!(@ret $R, r)
        }
    )*};
    (@rows 1, $B:ty) => { &[$B] };
    (@rows 4, $B:ty) => { [&[$B]; 4] };
    (@out 1) => { f32 };
    (@out 4) => { [f32; 4] };
    (@arr 1, $w:ident) => { [$w] };
    (@arr 4, $w:ident) => { $w };
    (@ret 1, $r:ident) => { $r[0] };
    (@ret 4, $r:ident) => { $r };
}

octs_kernels! {
    /// Q4_0 × Q8_0 over octets of 8 blocks (`octs`: [`super::q8_octs`] of `x`), the NEON
    /// form of `avx2::dot_q4_0_q8_0_octs` (see `octs_dot` in this module's source),
    /// base Armv8.0 (`SMULL`/`SMLAL2`/`SADALP`; the unsigned codes, minus `8 · Σx` per
    /// block). Agrees with the per-block kernels to f32 rounding; deterministic, and
    /// [`dot4_q4_0_q8_0_octs`] gives each row the same bits. `x`'s values must lie in
    /// `[−127, 127]`, as [`crate::quantize::quantize_row_q8_0`] writes them (a −128 could
    /// wrap a 16-bit sum).
    ///
    /// # Safety
    /// NEON available; `x.len() >= w.len()`, `octs.len() >= w.len().div_ceil(8)`.
    dot_q4_0_q8_0_octs("neon", BlockQ4_0, 1, true, codes_q4, mul_pairs);
    /// [`dot_q4_0_q8_0_octs`] for Q8_0 weights (no correction).
    ///
    /// # Safety
    /// As [`dot_q4_0_q8_0_octs`].
    dot_q8_0_q8_0_octs("neon", BlockQ8_0, 1, false, codes_q8, mul_pairs);
    /// [`dot_q4_0_q8_0_octs`] with `SDOT` (Armv8.2 `dotprod`; any `x`).
    ///
    /// # Safety
    /// NEON and `dotprod` available; lengths as [`dot_q4_0_q8_0_octs`].
    dot_q4_0_q8_0_octs_dotprod("neon,dotprod", BlockQ4_0, 1, true, codes_q4, sdot_pairs);
    /// [`dot_q8_0_q8_0_octs`] with `SDOT`.
    ///
    /// # Safety
    /// As [`dot_q4_0_q8_0_octs_dotprod`].
    dot_q8_0_q8_0_octs_dotprod("neon,dotprod", BlockQ8_0, 1, false, codes_q8, sdot_pairs);
    /// [`dot_q4_0_q8_0_octs`] of four rows of equal length (the activation blocks loaded
    /// once for the four), each row's bits those of the one-row kernel.
    ///
    /// # Safety
    /// NEON available; the rows have equal lengths, `x` is at least as long, and `octs`
    /// holds its [`super::q8_octs`] (an eighth of it, rounded up).
    dot4_q4_0_q8_0_octs("neon", BlockQ4_0, 4, true, codes_q4, mul_pairs);
    /// [`dot_q8_0_q8_0_octs`] of four rows, as [`dot4_q4_0_q8_0_octs`].
    ///
    /// # Safety
    /// As [`dot4_q4_0_q8_0_octs`].
    dot4_q8_0_q8_0_octs("neon", BlockQ8_0, 4, false, codes_q8, mul_pairs);
    /// [`dot_q4_0_q8_0_octs_dotprod`] of four rows, as [`dot4_q4_0_q8_0_octs`].
    ///
    /// # Safety
    /// NEON and `dotprod` available; otherwise as [`dot4_q4_0_q8_0_octs`].
    dot4_q4_0_q8_0_octs_dotprod("neon,dotprod", BlockQ4_0, 4, true, codes_q4, sdot_pairs);
    /// [`dot_q8_0_q8_0_octs_dotprod`] of four rows, as [`dot4_q4_0_q8_0_octs`].
    ///
    /// # Safety
    /// As [`dot4_q4_0_q8_0_octs_dotprod`].
    dot4_q8_0_q8_0_octs_dotprod("neon,dotprod", BlockQ8_0, 4, false, codes_q8, sdot_pairs);
}
