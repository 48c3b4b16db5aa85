//! NEON variants (4 f32 lanes). NEON is part of the aarch64 baseline; bounds are the
//! caller's promise, stated per function.

use crate::kernels::linear::{MatRef, WeightData};
use core::arch::aarch64::*;
use half::{bf16, f16};

/// Weight element types that widen to 4 f32 lanes.
trait Lanes4: Copy {
    /// 4 elements from `p` as f32. Requires 4 readable elements.
    unsafe fn load4(p: *const Self) -> float32x4_t;
    fn widen(self) -> f32;
}

impl Lanes4 for f32 {
    #[inline(always)]
    unsafe fn load4(p: *const f32) -> float32x4_t {
        // SAFETY: caller guarantees 4 readable f32.
        unsafe { vld1q_f32(p) }
    }
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
}

impl Lanes4 for bf16 {
    #[inline(always)]
    unsafe fn load4(p: *const bf16) -> float32x4_t {
        // SAFETY: caller guarantees 4 readable bf16; bf16 is the high half of an f32.
        unsafe { vreinterpretq_f32_u32(vshll_n_u16::<16>(vld1_u16(p.cast()))) }
    }
    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

impl Lanes4 for f16 {
    /// Half to single with integer ops only (no FP16 extension needed): shift exponent and
    /// mantissa into place, rescale by 2^112 (which also normalises subnormals), restore
    /// Inf/NaN exponents, then the sign.
    #[inline(always)]
    unsafe fn load4(p: *const f16) -> float32x4_t {
        // SAFETY: caller guarantees 4 readable halves.
        unsafe {
            let h = vmovl_u16(vld1_u16(p.cast()));
            let sign = vshlq_n_u32::<16>(vandq_u32(h, vdupq_n_u32(0x8000)));
            let em = vshlq_n_u32::<13>(vandq_u32(h, vdupq_n_u32(0x7fff)));
            let f = vmulq_f32(
                vreinterpretq_f32_u32(em),
                vdupq_n_f32(f32::from_bits(0x7780_0000)),
            );
            let infnan = vcgeq_f32(f, vdupq_n_f32(65536.0));
            let bits = vorrq_u32(
                vreinterpretq_u32_f32(f),
                vandq_u32(infnan, vdupq_n_u32(0x7f80_0000)),
            );
            vreinterpretq_f32_u32(vorrq_u32(bits, sign))
        }
    }
    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

/// Skinny `y = x · wᵀ` (see `linear::linear_with`, which checked every extent).
///
/// # Safety
/// `x` holds `m` rows of `w.cols()` (`ldx` apart), `y` holds `m` rows of `w.rows()`
/// (`ldy` apart).
pub(crate) unsafe fn linear(
    x: &[f32],
    ldx: usize,
    m: usize,
    w: &MatRef<'_>,
    y: &mut [f32],
    ldy: usize,
) {
    let (n, k, ldw) = (w.rows(), w.cols(), w.ld());
    // SAFETY: extents are the caller's promise.
    unsafe {
        match w.data() {
            WeightData::F32(d) => rows::<f32>(x, ldx, m, d.as_ptr(), ldw, n, k, y, ldy),
            WeightData::F16(d) => rows::<f16>(x, ldx, m, d.as_ptr(), ldw, n, k, y, ldy),
            WeightData::BF16(d) => rows::<bf16>(x, ldx, m, d.as_ptr(), ldw, n, k, y, ldy),
            // quantised weights take `linear::skinny_quant` before reaching here
            WeightData::Q8_0(_) | WeightData::Q4_0(_) | WeightData::Q4K(_) | WeightData::Q6K(_) => {
                crate::kernels::linear::linear_scalar(x, ldx, m, w, y, ldy)
            }
        }
    }
}

crate::kernels::linear::tiled_rows!(
    /// Walk the output in tiles of up to 3 rows of x by 4 rows of w.
    fn rows<T: Lanes4>,
    tile
);

#[inline]
unsafe fn tile<T: Lanes4, const R: usize, const C: usize>(
    x: *const f32,
    ldx: usize,
    w: *const T,
    ldw: usize,
    k: usize,
    y: *mut f32,
    ldy: usize,
) {
    // SAFETY: R rows of x, C rows of w (k each) and the R x C block of y are in bounds.
    unsafe {
        let mut acc = [[vdupq_n_f32(0.0); C]; R];
        let mut kk = 0;
        while kk + 4 <= k {
            let mut wv = [vdupq_n_f32(0.0); C];
            for (c, v) in wv.iter_mut().enumerate() {
                *v = T::load4(w.add(c * ldw + kk));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let xv = vld1q_f32(x.add(r * ldx + kk));
                for (a, wc) in row.iter_mut().zip(&wv) {
                    *a = vfmaq_f32(*a, xv, *wc);
                }
            }
            kk += 4;
        }
        for (r, row) in acc.iter().enumerate() {
            for (c, a) in row.iter().enumerate() {
                let mut s = vaddvq_f32(*a);
                for t in kk..k {
                    s += *x.add(r * ldx + t) * (*w.add(c * ldw + t)).widen();
                }
                *y.add(r * ldy + c) = s;
            }
        }
    }
}

/// The NEON vector type for the generic kernels in `kernels::simd`.
pub(crate) struct Neon;

impl crate::kernels::simd::Simd for Neon {
    const LANES: usize = 4;
    type V = float32x4_t;
    // SAFETY (all methods): NEON is baseline on aarch64; the caller guarantees 4 valid
    // lanes for loads and stores.
    #[inline(always)]
    unsafe fn splat(x: f32) -> float32x4_t {
        // SAFETY: NEON is baseline; the caller guarantees the lanes it touches.
        unsafe { vdupq_n_f32(x) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> float32x4_t {
        // SAFETY: NEON is baseline; the caller guarantees the lanes it touches.
        unsafe { vld1q_f32(p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: float32x4_t) {
        // SAFETY: NEON is baseline; the caller guarantees the lanes it touches.
        unsafe { vst1q_f32(p, v) }
    }
    #[inline(always)]
    unsafe fn add(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // SAFETY: NEON is baseline; the caller guarantees the lanes it touches.
        unsafe { vaddq_f32(a, b) }
    }
    #[inline(always)]
    unsafe fn sub(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // SAFETY: NEON is baseline; the caller guarantees the lanes it touches.
        unsafe { vsubq_f32(a, b) }
    }
    #[inline(always)]
    unsafe fn mul(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // SAFETY: NEON is baseline; the caller guarantees the lanes it touches.
        unsafe { vmulq_f32(a, b) }
    }
    #[inline(always)]
    unsafe fn div(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // SAFETY: NEON is baseline; the caller guarantees the lanes it touches.
        unsafe { vdivq_f32(a, b) }
    }
    #[inline(always)]
    unsafe fn fma(a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t {
        // SAFETY: NEON is baseline; the caller guarantees the lanes it touches.
        unsafe { vfmaq_f32(c, a, b) }
    }
    #[inline(always)]
    unsafe fn max(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // SAFETY: NEON is baseline; the caller guarantees the lanes it touches.
        unsafe { vmaxq_f32(a, b) }
    }
    #[inline(always)]
    unsafe fn min(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // SAFETY: NEON is baseline; the caller guarantees the lanes it touches.
        unsafe { vminq_f32(a, b) }
    }
    #[inline(always)]
    unsafe fn abs(a: float32x4_t) -> float32x4_t {
        // SAFETY: NEON is baseline; the caller guarantees the lanes it touches.
        unsafe { vabsq_f32(a) }
    }
    #[inline(always)]
    unsafe fn with_sign_of(a: float32x4_t, s: float32x4_t) -> float32x4_t {
        // SAFETY: NEON is baseline; the caller guarantees the lanes it touches.
        unsafe {
            let sign = vandq_u32(vreinterpretq_u32_f32(s), vdupq_n_u32(0x8000_0000));
            vreinterpretq_f32_u32(vorrq_u32(vreinterpretq_u32_f32(a), sign))
        }
    }
    #[inline(always)]
    unsafe fn zero_below(v: float32x4_t, x: float32x4_t, limit: f32) -> float32x4_t {
        // SAFETY: NEON is baseline; the caller guarantees the lanes it touches.
        unsafe {
            let keep = vmvnq_u32(vcltq_f32(x, vdupq_n_f32(limit)));
            vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(v), keep))
        }
    }
    #[inline(always)]
    unsafe fn round(a: float32x4_t) -> float32x4_t {
        // SAFETY: NEON is baseline; the caller guarantees the lanes it touches.
        unsafe { vrndnq_f32(a) }
    }
    #[inline(always)]
    unsafe fn pow2i(n: float32x4_t) -> float32x4_t {
        // SAFETY: NEON is baseline; the caller guarantees the lanes it touches.
        unsafe {
            let i = vaddq_s32(vcvtnq_s32_f32(n), vdupq_n_s32(127));
            vreinterpretq_f32_s32(vshlq_n_s32::<23>(i))
        }
    }
    #[inline(always)]
    unsafe fn hsum(a: float32x4_t) -> f32 {
        // SAFETY: NEON is baseline; the caller guarantees the lanes it touches.
        unsafe { vaddvq_f32(a) }
    }
    #[inline(always)]
    unsafe fn hmax(a: float32x4_t) -> f32 {
        // SAFETY: NEON is baseline; the caller guarantees the lanes it touches.
        unsafe { vmaxvq_f32(a) }
    }
}

crate::kernels::simd::simd_wrappers!(Neon, "neon");

/// `y[i,:] += Σ_f x[i,f] w[f,:]` for `m <= 16` rows, 4 weight rows at a time.
///
/// # Safety
/// `x` holds `m` rows of `w.rows()` (ldx apart), `y` `m` rows of `w.cols()` (ldy apart).
pub(crate) unsafe fn matmul_rows(
    x: &[f32],
    ldx: usize,
    m: usize,
    w: &MatRef<'_>,
    y: &mut [f32],
    ldy: usize,
) {
    // SAFETY: the caller's promise (see above).
    unsafe {
        match w.data() {
            WeightData::F32(d) => {
                axpy_rows::<f32>(x, ldx, m, d.as_ptr(), w.ld(), w.rows(), w.cols(), y, ldy)
            }
            WeightData::F16(d) => {
                axpy_rows::<f16>(x, ldx, m, d.as_ptr(), w.ld(), w.rows(), w.cols(), y, ldy)
            }
            WeightData::BF16(d) => {
                axpy_rows::<bf16>(x, ldx, m, d.as_ptr(), w.ld(), w.rows(), w.cols(), y, ldy)
            }
            // quantised weights take `linear::rows_kernel`'s own path before reaching here
            WeightData::Q8_0(_) | WeightData::Q4_0(_) | WeightData::Q4K(_) | WeightData::Q6K(_) => {
                crate::kernels::linear::matmul_rows_scalar(x, ldx, m, w, y, ldy)
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
unsafe fn axpy_rows<T: Lanes4>(
    x: &[f32],
    ldx: usize,
    m: usize,
    w: *const T,
    ldw: usize,
    k: usize,
    n: usize,
    y: &mut [f32],
    ldy: usize,
) {
    let yp = y.as_mut_ptr();
    let mut f = 0;
    while f < k {
        let r = (k - f).min(4);
        for i in 0..m {
            let mut a = [0f32; 4];
            a[..r].copy_from_slice(&x[i * ldx + f..i * ldx + f + r]);
            // SAFETY: rows f..f+r of w and row i of y are in bounds; c + 4 <= n for vectors.
            unsafe {
                let yr = yp.add(i * ldy);
                let mut c = 0;
                while c + 4 <= n {
                    let mut yv = vld1q_f32(yr.add(c));
                    for (q, &aq) in a.iter().enumerate().take(r) {
                        yv = vfmaq_n_f32(yv, T::load4(w.add((f + q) * ldw + c)), aq);
                    }
                    vst1q_f32(yr.add(c), yv);
                    c += 4;
                }
                while c < n {
                    let mut s = *yr.add(c);
                    for (q, aq) in a.iter().enumerate().take(r) {
                        s += aq * (*w.add((f + q) * ldw + c)).widen();
                    }
                    *yr.add(c) = s;
                    c += 1;
                }
            }
        }
        f += r;
    }
}
