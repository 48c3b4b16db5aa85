//! AVX2 + FMA + F16C variants (8 f32 lanes). Every `unsafe fn` here requires those three
//! features; bounds are the caller's promise, stated per function.

use crate::kernels::linear::{MatRef, WeightData};
use core::arch::x86_64::*;
use half::{bf16, f16};

/// Weight element types that widen to 8 f32 lanes in one step.
trait Lanes8: Copy {
    /// 8 elements from `p` as f32. Requires AVX2+F16C and 8 readable elements.
    unsafe fn load8(p: *const Self) -> __m256;
    fn widen(self) -> f32;
}

impl Lanes8 for f32 {
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> __m256 {
        // SAFETY: caller guarantees AVX and 8 readable f32 at p.
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
}

impl Lanes8 for f16 {
    #[inline(always)]
    unsafe fn load8(p: *const f16) -> __m256 {
        // SAFETY: caller guarantees F16C and 8 readable halves (16 bytes) at p.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    }
    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

impl Lanes8 for bf16 {
    #[inline(always)]
    unsafe fn load8(p: *const bf16) -> __m256 {
        // SAFETY: caller guarantees AVX2 and 8 readable bf16 (16 bytes) at p. A bf16 is the
        // high half of an f32: zero-extend to 32 bits and shift left by 16.
        unsafe {
            let h = _mm_loadu_si128(p.cast());
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
        }
    }
    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

/// Sum of the 8 lanes. Requires AVX.
#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    // SAFETY: caller guarantees AVX (SSE3 is implied).
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
}

/// Skinny `y = x · wᵀ` (see `linear::linear_with`, which checked every extent).
///
/// # Safety
/// AVX2, FMA and F16C must be available; `x` holds `m` rows of `w.cols()` (`ldx` apart), `y`
/// holds `m` rows of `w.rows()` (`ldy` apart).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn linear(
    x: &[f32],
    ldx: usize,
    m: usize,
    w: &MatRef<'_>,
    y: &mut [f32],
    ldy: usize,
) {
    let (n, k, ldw) = (w.rows(), w.cols(), w.ld());
    // SAFETY: features and extents are the caller's promise (see above).
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
    #[target_feature(enable = "avx2,fma,f16c")]
    fn rows<T: Lanes8>,
    tile
);

/// One `R x C` output block: `y[r][c] = Σ_k x[r][k] w[c][k]`, 8 lanes at a time with
/// `R*C` independent FMA chains, the `k % 8` tail in scalar.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn tile<T: Lanes8, const R: usize, const C: usize>(
    x: *const f32,
    ldx: usize,
    w: *const T,
    ldw: usize,
    k: usize,
    y: *mut f32,
    ldy: usize,
) {
    // SAFETY: R rows of x (k each, ldx apart), C rows of w (k each, ldw apart) and the
    // R x C block of y are in bounds (caller); AVX2/FMA/F16C are enabled on this function.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let mut kk = 0;
        while kk + 8 <= k {
            let mut wv = [_mm256_setzero_ps(); C];
            for (c, v) in wv.iter_mut().enumerate() {
                *v = T::load8(w.add(c * ldw + kk));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let xv = _mm256_loadu_ps(x.add(r * ldx + kk));
                for (a, wc) in row.iter_mut().zip(&wv) {
                    *a = _mm256_fmadd_ps(xv, *wc, *a);
                }
            }
            kk += 8;
        }
        for (r, row) in acc.iter().enumerate() {
            for (c, a) in row.iter().enumerate() {
                let mut s = hsum(*a);
                for t in kk..k {
                    s += *x.add(r * ldx + t) * (*w.add(c * ldw + t)).widen();
                }
                *y.add(r * ldy + c) = s;
            }
        }
    }
}

/// The AVX2 vector type for the generic kernels in `kernels::simd`.
pub(crate) struct Avx2;

impl crate::kernels::simd::Simd for Avx2 {
    const LANES: usize = 8;
    type V = __m256;
    // SAFETY (all methods): callers hold AVX2+FMA (the `simd_wrappers!` functions enable
    // them); loads and stores are unaligned and the caller guarantees 8 valid lanes.
    #[inline(always)]
    unsafe fn splat(x: f32) -> __m256 {
        // SAFETY: the caller holds AVX2+FMA and guarantees the lanes it touches.
        unsafe { _mm256_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m256 {
        // SAFETY: the caller holds AVX2+FMA and guarantees the lanes it touches.
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m256) {
        // SAFETY: the caller holds AVX2+FMA and guarantees the lanes it touches.
        unsafe { _mm256_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn add(a: __m256, b: __m256) -> __m256 {
        // SAFETY: the caller holds AVX2+FMA and guarantees the lanes it touches.
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn sub(a: __m256, b: __m256) -> __m256 {
        // SAFETY: the caller holds AVX2+FMA and guarantees the lanes it touches.
        unsafe { _mm256_sub_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn mul(a: __m256, b: __m256) -> __m256 {
        // SAFETY: the caller holds AVX2+FMA and guarantees the lanes it touches.
        unsafe { _mm256_mul_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn div(a: __m256, b: __m256) -> __m256 {
        // SAFETY: the caller holds AVX2+FMA and guarantees the lanes it touches.
        unsafe { _mm256_div_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
        // SAFETY: the caller holds AVX2+FMA and guarantees the lanes it touches.
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn max(a: __m256, b: __m256) -> __m256 {
        // SAFETY: the caller holds AVX2+FMA and guarantees the lanes it touches.
        unsafe { _mm256_max_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn min(a: __m256, b: __m256) -> __m256 {
        // SAFETY: the caller holds AVX2+FMA and guarantees the lanes it touches.
        unsafe { _mm256_min_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn abs(a: __m256) -> __m256 {
        // SAFETY: the caller holds AVX2+FMA and guarantees the lanes it touches.
        unsafe { _mm256_andnot_ps(_mm256_set1_ps(-0.0), a) }
    }
    #[inline(always)]
    unsafe fn with_sign_of(a: __m256, s: __m256) -> __m256 {
        // SAFETY: the caller holds AVX2+FMA and guarantees the lanes it touches.
        unsafe { _mm256_or_ps(a, _mm256_and_ps(s, _mm256_set1_ps(-0.0))) }
    }
    #[inline(always)]
    unsafe fn zero_below(v: __m256, x: __m256, limit: f32) -> __m256 {
        // SAFETY: the caller holds AVX2+FMA and guarantees the lanes it touches.
        unsafe { _mm256_and_ps(v, _mm256_cmp_ps::<_CMP_NLT_UQ>(x, _mm256_set1_ps(limit))) }
    }
    #[inline(always)]
    unsafe fn round(a: __m256) -> __m256 {
        // SAFETY: the caller holds AVX2+FMA and guarantees the lanes it touches.
        unsafe { _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a) }
    }
    #[inline(always)]
    unsafe fn pow2i(n: __m256) -> __m256 {
        // SAFETY: the caller holds AVX2+FMA and guarantees the lanes it touches.
        unsafe {
            let i = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
            _mm256_castsi256_ps(_mm256_slli_epi32::<23>(i))
        }
    }
    #[inline(always)]
    unsafe fn hsum(a: __m256) -> f32 {
        // SAFETY: the caller holds AVX2+FMA and guarantees the lanes it touches.
        unsafe { hsum(a) }
    }
    #[inline(always)]
    unsafe fn hmax(a: __m256) -> f32 {
        // SAFETY: the caller holds AVX2+FMA and guarantees the lanes it touches.
        unsafe {
            let m = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            let m = _mm_max_ss(m, _mm_movehdup_ps(m));
            _mm_cvtss_f32(m)
        }
    }
}

crate::kernels::simd::simd_wrappers!(Avx2, "avx2,fma");

/// `y[i,:] += Σ_f x[i,f] w[f,:]` for `m <= 16` rows, 4 weight rows at a time, 8 columns per
/// vector, the column tail in scalar.
///
/// # Safety
/// AVX2, FMA and F16C must be available; `x` holds `m` rows of `w.rows()` (ldx apart), `y`
/// `m` rows of `w.cols()` (ldy apart).
#[target_feature(enable = "avx2,fma,f16c")]
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

#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn axpy_rows<T: Lanes8>(
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
            // SAFETY: rows f..f+r of w (n columns each, ldw apart) and row i of y (n
            // columns) are in bounds; c + 8 <= n for vector accesses.
            unsafe {
                let av = [
                    _mm256_set1_ps(a[0]),
                    _mm256_set1_ps(a[1]),
                    _mm256_set1_ps(a[2]),
                    _mm256_set1_ps(a[3]),
                ];
                let yr = yp.add(i * ldy);
                let mut c = 0;
                while c + 8 <= n {
                    let mut yv = _mm256_loadu_ps(yr.add(c));
                    for (q, aq) in av.iter().enumerate().take(r) {
                        yv = _mm256_fmadd_ps(*aq, T::load8(w.add((f + q) * ldw + c)), yv);
                    }
                    _mm256_storeu_ps(yr.add(c), yv);
                    c += 8;
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
