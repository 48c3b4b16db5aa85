//! AVX-512 versions of the quantised dot products (16 f32 / 64 byte lanes), in two
//! flavours: **AVX-512BW** (`vpmaddubsw` + `vpmaddwd`, as the AVX2 kernels but twice as
//! wide) and **AVX-512 VNNI** (`vpdpbusd`: four byte products summed into an i32 lane in one
//! instruction). Every function requires AVX-512F, BW and VL plus FMA and F16C (the
//! `_vnni` ones also AVX512-VNNI); the caller checks them at run time.
//!
//! No machine of this project's CI executes AVX-512, so these kernels are tested there by
//! running them in an instruction-set emulator (Bochs's CPU, models Cannon Lake — AVX-512
//! without VNNI — and Tiger Lake — with VNNI) against the scalar references:
//! `tools/avx512-emu` and `scripts/test-avx512.sh`. They also passed every workspace test
//! natively once, on a Xeon (scripts/experiments/device_x86.sh), where they were slower than
//! the AVX2 kernels — so the dispatch uses them only when `MODULA_SIMD` asks
//! (`modula_core::kernels::isa::avx512`).
//!
//! Layout: one 512-bit step covers **two blocks** — their 32-byte halves side by side —
//! giving 16 i32 lanes (8 per block), converted to f32 and multiplied by the two blocks'
//! scale products `d_w·d_x` (lanes 0..8 and 8..16) into one of two accumulators (even and
//! odd steps). An odd last block runs as a step whose second block has scale zero. The
//! order of operations depends only on the length, so a result is deterministic and the
//! four-row kernels give each row exactly the one-row kernel's bits.

use crate::blocks::{BlockQ4_0, BlockQ8_0};
use core::arch::x86_64::*;
use half::f16;

/// A block scale to f32 with the F16C instruction. Requires F16C.
#[inline(always)]
unsafe fn h2f(h: f16) -> f32 {
    // SAFETY: the caller guarantees F16C.
    unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h.to_bits())))) }
}

/// Two 256-bit halves as one 512-bit vector (`lo` in lanes 0..8 of i32).
#[inline(always)]
unsafe fn join(lo: __m256i, hi: __m256i) -> __m512i {
    // SAFETY: the caller guarantees AVX-512F.
    unsafe { _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi) }
}

/// The 32 activation bytes of two Q8_0 blocks.
#[inline(always)]
unsafe fn act2(x0: &BlockQ8_0, x1: &BlockQ8_0) -> __m512i {
    // SAFETY: the caller guarantees AVX-512F; a Q8_0 block holds 32 bytes.
    unsafe {
        join(
            _mm256_loadu_si256(x0.qs.as_ptr().cast()),
            _mm256_loadu_si256(x1.qs.as_ptr().cast()),
        )
    }
}

/// The scale vector of a step: `s0` in lanes 0..8, `s1` in lanes 8..16.
#[inline(always)]
unsafe fn scales2(s0: f32, s1: f32) -> __m512 {
    // SAFETY: the caller guarantees AVX-512F.
    unsafe { _mm512_mask_blend_ps(0xff00, _mm512_set1_ps(s0), _mm512_set1_ps(s1)) }
}

/// Sum of 4 byte products per i32 lane, `u` unsigned and `c` signed: `vpdpbusd` with
/// VNNI, `vpmaddubsw` + `vpmaddwd` without (the i16 pair sums are exact for the operands
/// used here: `|u| ≤ 128`, `|c| ≤ 127`, so a pair is at most 32,512 < 2^15).
#[inline(always)]
unsafe fn dot_u8i8<const VNNI: bool>(u: __m512i, c: __m512i) -> __m512i {
    // SAFETY: the caller guarantees AVX-512BW, and VNNI when VNNI.
    unsafe {
        if VNNI {
            _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, c)
        } else {
            _mm512_madd_epi16(_mm512_maddubs_epi16(u, c), _mm512_set1_epi16(1))
        }
    }
}

/// Integer lanes of a Q8_0 × Q8_0 step: `|w| · (c with w's sign)` (`|−128|` reads as the
/// unsigned 128, so every weight byte of a hostile file is still exact).
#[inline(always)]
unsafe fn lanes_q8<const VNNI: bool>(b0: &BlockQ8_0, b1: &BlockQ8_0, c: __m512i) -> __m512i {
    // SAFETY: the caller guarantees AVX-512BW (+VNNI); a Q8_0 block holds 32 bytes.
    unsafe {
        let w = act2(b0, b1);
        let neg = _mm512_movepi8_mask(w);
        let sc = _mm512_mask_sub_epi8(c, neg, _mm512_setzero_si512(), c);
        dot_u8i8::<VNNI>(_mm512_abs_epi8(w), sc)
    }
}

/// Integer lanes of a Q4_0 × Q8_0 step: the unsigned nibbles (0..16) times the activation
/// bytes, minus `8 ×` the activation bytes (Q4_0's offset), per lane of 4.
#[inline(always)]
unsafe fn lanes_q4<const VNNI: bool>(b0: &BlockQ4_0, b1: &BlockQ4_0, c: __m512i) -> __m512i {
    // SAFETY: the caller guarantees AVX-512BW (+VNNI); a Q4_0 block holds 16 bytes.
    unsafe {
        // each block's 16 bytes in two 128-bit lanes (broadcast loads), the second copy's
        // quadwords shifted right by 4 bits (the bits from the next byte are masked off):
        // values 0..16 (low nibbles), then 16..32 (high), block b0 then b1
        let both =
            |b: &BlockQ4_0| _mm256_broadcastsi128_si256(_mm_loadu_si128(b.qs.as_ptr().cast()));
        let shift = _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0);
        let u = _mm512_and_si512(
            _mm512_srlv_epi64(join(both(b0), both(b1)), shift),
            _mm512_set1_epi8(0x0f),
        );
        let eight = _mm512_set1_epi8(8);
        if VNNI {
            _mm512_sub_epi32(dot_u8i8::<true>(u, c), dot_u8i8::<true>(eight, c))
        } else {
            // in i16: |15·c + 15·c'| ≤ 3,810 and |8·c + 8·c'| ≤ 2,032, no overflow
            let p = _mm512_sub_epi16(_mm512_maddubs_epi16(u, c), _mm512_maddubs_epi16(eight, c));
            _mm512_madd_epi16(p, _mm512_set1_epi16(1))
        }
    }
}

/// 64 bytes at `p`, loaded by an `asm!` block the compiler cannot see into. With plain
/// loads, LLVM noticed that these bytes overlap the blocks' other loads and rebuilt those
/// from the 64-byte registers with chains of `vpermt2w`/`vpunpcklqdq` — more shuffles than
/// the scalar scale loads this replaces (seen in the disassembly).
///
/// # Safety
/// AVX-512F; `p` valid for reading 64 bytes.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn opaque_load(p: *const u8) -> __m512i {
    let v: __m512i;
    // SAFETY: the caller's contract; the instruction only reads those 64 bytes.
    unsafe {
        core::arch::asm!(
            "vmovdqu64 {v}, [{p}]",
            v = out(zmm_reg) v,
            p = in(reg) p,
            options(pure, readonly, nostack, preserves_flags)
        );
    }
    v
}

/// The scales `d` of 8 consecutive blocks of `B` (a `#[repr(C)]` block of `S` bytes whose
/// first two bytes are its F16 scale: 18 for Q4_0, 34 for Q8_0) as f32 in lanes 0..8 (lanes
/// 8..16 hold copies): the 16-bit words at `S/2 · j` picked out of 128-byte windows with
/// one `vpermt2w` per window — in place of 8 scalar loads and conversions.
///
/// # Safety
/// AVX-512F/BW; `p` valid for reading 8 blocks (`8·S ≥ 128`, and `≥ 256` when `S > 18`).
#[inline(always)]
unsafe fn scales8<const S: usize>(p: *const u8) -> __m512 {
    // SAFETY: the caller's contract; every load lies inside the 8 blocks.
    unsafe {
        let w = S as i16 / 2; // words per block
        let idx = |base: i16| {
            let j = |k: i16| {
                let v = w * k - base;
                if (0..64).contains(&v) {
                    v
                } else {
                    0
                }
            };
            _mm512_set_epi16(
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                j(7),
                j(6),
                j(5),
                j(4),
                j(3),
                j(2),
                j(1),
                j(0),
            )
        };
        let window = |off: usize| (opaque_load(p.add(off)), opaque_load(p.add(off + 64)));
        let (a, b) = window(0);
        let mut h = _mm512_permutex2var_epi16(a, idx(0), b);
        if 7 * w >= 64 {
            // the blocks whose scale lies in the second 128 bytes
            let (c, d) = window(128);
            let hi = _mm512_permutex2var_epi16(c, idx(64), d);
            let m = (0..8).fold(0u32, |m, k| if w * k >= 64 { m | 1 << k } else { m });
            h = _mm512_mask_blend_epi16(m, h, hi);
        }
        _mm512_cvtph_ps(_mm512_castsi512_si256(h))
    }
}

/// The driver: `R` rows of equal length against one row of Q8_0 activation blocks, two
/// blocks per step (`lanes` gives a step's 16 i32 lanes for weight blocks `b0, b1` and the
/// activation vector), each row's operations those of the one-row case. Whole groups of 8
/// blocks take their 8 scale products from one vector ([`scales8`] of the weights times
/// that of the activations, spread to a step's two blocks by one `vpermps`); the last
/// `n % 8` blocks convert scales one by one. Both give the same products, and the steps
/// alternate between the same two accumulators, so the result depends only on the length.
#[inline(always)]
unsafe fn rows_dot<const R: usize, const S: usize, B>(
    w: [&[B]; R],
    x: &[BlockQ8_0],
    lanes: impl Fn(&B, &B, __m512i) -> __m512i,
    d: impl Fn(&B) -> f16,
) -> [f32; R] {
    let n = w[0].len();
    debug_assert!(w.iter().all(|r| r.len() == n) && x.len() >= n);
    debug_assert_eq!(core::mem::size_of::<B>(), S);
    // SAFETY: the features are the caller's; indices stay below n (groups: 8·g + 7 < n).
    unsafe {
        let (mut even, mut odd) = ([_mm512_setzero_ps(); R], [_mm512_setzero_ps(); R]);
        let xp = x.as_ptr();
        // lanes 0..8 ← scale product of the step's first block (2k), 8..16 ← second (2k+1)
        let spread = |k: i32| {
            _mm512_set_epi32(
                2 * k + 1,
                2 * k + 1,
                2 * k + 1,
                2 * k + 1,
                2 * k + 1,
                2 * k + 1,
                2 * k + 1,
                2 * k + 1,
                2 * k,
                2 * k,
                2 * k,
                2 * k,
                2 * k,
                2 * k,
                2 * k,
                2 * k,
            )
        };
        let groups = n / 8;
        for g in 0..groups {
            let i = 8 * g;
            let sx = scales8::<34>(xp.add(i).cast());
            let mut sw = [_mm512_setzero_ps(); R];
            for (r, v) in sw.iter_mut().enumerate() {
                *v = _mm512_mul_ps(scales8::<S>(w[r].as_ptr().add(i).cast()), sx);
            }
            macro_rules! step {
                ($k:expr, $acc:ident) => {{
                    let i0 = i + 2 * $k;
                    let c = act2(&*xp.add(i0), &*xp.add(i0 + 1));
                    let idx = spread($k);
                    for r in 0..R {
                        let wr = w[r].as_ptr();
                        let z = _mm512_cvtepi32_ps(lanes(&*wr.add(i0), &*wr.add(i0 + 1), c));
                        let sv = _mm512_permutexvar_ps(idx, sw[r]);
                        $acc[r] = _mm512_fmadd_ps(z, sv, $acc[r]);
                    }
                }};
            }
            step!(0, even);
            step!(1, odd);
            step!(2, even);
            step!(3, odd);
        }
        // the tail: steps of two blocks; an odd last block is a step of its own whose second
        // block is a copy of it scaled by zero
        let mut i0 = 8 * groups;
        let mut into_even = true;
        while i0 < n {
            let pair = i0 + 1 < n;
            let i1 = if pair { i0 + 1 } else { i0 };
            let (x0, x1) = (&x[i0], &x[i1]);
            let c = act2(x0, x1);
            let (dx0, dx1) = (h2f(x0.d), h2f(x1.d));
            let acc = if into_even { &mut even } else { &mut odd };
            for (r, a) in acc.iter_mut().enumerate() {
                let (b0, b1) = (&w[r][i0], &w[r][i1]);
                let z = _mm512_cvtepi32_ps(lanes(b0, b1, c));
                let s1 = if pair { h2f(d(b1)) * dx1 } else { 0.0 };
                let sv = scales2(h2f(d(b0)) * dx0, s1);
                *a = _mm512_fmadd_ps(z, sv, *a);
            }
            i0 += 2;
            into_even = !into_even;
        }
        let mut out = [0f32; R];
        for (r, o) in out.iter_mut().enumerate() {
            *o = _mm512_reduce_add_ps(_mm512_add_ps(even[r], odd[r]));
        }
        out
    }
}

macro_rules! dot_kernels {
    ($vnni:literal, $features:literal, $q8:ident, $q8x4:ident, $q4:ident, $q4x4:ident) => {
        /// [`super::dot_q8_0_q8_0`] (see the module documentation for the features).
        ///
        /// # Safety
        /// The module's features available; `x.len() >= w.len()`.
        #[target_feature(enable = $features)]
        pub unsafe fn $q8(w: &[BlockQ8_0], x: &[BlockQ8_0]) -> f32 {
            // SAFETY: the caller's contract.
            unsafe {
                rows_dot::<1, 34, _>([w], x, |a, b, c| lanes_q8::<$vnni>(a, b, c), |b| b.d)[0]
            }
        }

        /// The one-row Q8_0 × Q8_0 kernel of this module for four rows of equal length,
        /// each bit-identical to it; the activation blocks are loaded once.
        ///
        /// # Safety
        /// The module's features available; equal row lengths, `x` at least as long.
        #[target_feature(enable = $features)]
        pub unsafe fn $q8x4(w: [&[BlockQ8_0]; 4], x: &[BlockQ8_0]) -> [f32; 4] {
            // SAFETY: the caller's contract.
            unsafe { rows_dot::<4, 34, _>(w, x, |a, b, c| lanes_q8::<$vnni>(a, b, c), |b| b.d) }
        }

        /// [`super::dot_q4_0_q8_0`] (see the module documentation for the features).
        ///
        /// # Safety
        /// The module's features available; `x.len() >= w.len()`.
        #[target_feature(enable = $features)]
        pub unsafe fn $q4(w: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
            // SAFETY: the caller's contract.
            unsafe {
                rows_dot::<1, 18, _>([w], x, |a, b, c| lanes_q4::<$vnni>(a, b, c), |b| b.d)[0]
            }
        }

        /// The one-row Q4_0 × Q8_0 kernel of this module for four rows of equal length,
        /// each bit-identical to it; the activation blocks are loaded once.
        ///
        /// # Safety
        /// The module's features available; equal row lengths, `x` at least as long.
        #[target_feature(enable = $features)]
        pub unsafe fn $q4x4(w: [&[BlockQ4_0]; 4], x: &[BlockQ8_0]) -> [f32; 4] {
            // SAFETY: the caller's contract.
            unsafe { rows_dot::<4, 18, _>(w, x, |a, b, c| lanes_q4::<$vnni>(a, b, c), |b| b.d) }
        }
    };
}

dot_kernels!(
    false,
    "avx512f,avx512bw,avx512vl,avx2,fma,f16c",
    dot_q8_0_q8_0,
    dot4_q8_0_q8_0,
    dot_q4_0_q8_0,
    dot4_q4_0_q8_0
);
dot_kernels!(
    true,
    "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c",
    dot_q8_0_q8_0_vnni,
    dot4_q8_0_q8_0_vnni,
    dot_q4_0_q8_0_vnni,
    dot4_q4_0_q8_0_vnni
);

/// The 32 weights of a Q8_0 block as two vectors of 16 f32. Requires AVX-512F.
#[inline(always)]
unsafe fn widen_q8(b: &BlockQ8_0) -> [__m512; 2] {
    // SAFETY: the caller guarantees AVX-512F; a Q8_0 block holds 32 bytes.
    unsafe {
        let p = b.qs.as_ptr();
        [
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.cast()))),
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(16).cast()))),
        ]
    }
}

/// The 32 weights of a Q4_0 block, minus 8, as two vectors of 16 f32 (weights 0..16 from
/// the low nibbles, 16..32 from the high). Requires AVX-512F.
#[inline(always)]
unsafe fn widen_q4(b: &BlockQ4_0) -> [__m512; 2] {
    // SAFETY: the caller guarantees AVX-512F.
    unsafe {
        let (lo, hi) = super::avx2::q4_signed_halves(b);
        [
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo)),
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi)),
        ]
    }
}

/// `Σ d·(q · x)` over the blocks with f32 activations (two accumulators, even and odd
/// blocks).
#[inline(always)]
unsafe fn dot_f32<B>(
    w: &[B],
    x: &[f32],
    widen: impl Fn(&B) -> [__m512; 2],
    d: impl Fn(&B) -> f16,
) -> f32 {
    debug_assert!(x.len() >= w.len() * 32);
    // SAFETY: the features are the caller's; block i reads x[32i .. 32i + 32].
    unsafe {
        let (even, odd) = even_odd!(w.len(), _mm512_setzero_ps(), |i, acc| {
            let b = &w[i];
            let q = widen(b);
            let p = x.as_ptr().add(32 * i);
            let s = _mm512_fmadd_ps(
                q[1],
                _mm512_loadu_ps(p.add(16)),
                _mm512_mul_ps(q[0], _mm512_loadu_ps(p)),
            );
            _mm512_fmadd_ps(_mm512_set1_ps(h2f(d(b))), s, acc)
        });
        _mm512_reduce_add_ps(_mm512_add_ps(even, odd))
    }
}

/// `out = dequant(w)` block by block (one multiply per value, as the scalar dequantiser:
/// the same bits).
#[inline(always)]
unsafe fn dequantize<B>(
    w: &[B],
    out: &mut [f32],
    widen: impl Fn(&B) -> [__m512; 2],
    d: impl Fn(&B) -> f16,
) {
    assert!(out.len() >= w.len() * 32);
    // SAFETY: the features are the caller's; block i writes out[32i .. 32i + 32].
    unsafe {
        for (i, b) in w.iter().enumerate() {
            let s = _mm512_set1_ps(h2f(d(b)));
            let p = out.as_mut_ptr().add(32 * i);
            for (k, q) in widen(b).iter().enumerate() {
                _mm512_storeu_ps(p.add(16 * k), _mm512_mul_ps(*q, s));
            }
        }
    }
}

/// [`crate::quantize::dequantize_row_q8_0`], bit-identical.
///
/// # Safety
/// AVX-512F, FMA and F16C available; `out.len() >= w.len() * 32`.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub unsafe fn dequantize_q8_0(w: &[BlockQ8_0], out: &mut [f32]) {
    // SAFETY: the caller's contract.
    unsafe { dequantize(w, out, |b| widen_q8(b), |b| b.d) }
}

/// [`crate::quantize::dequantize_row_q4_0`], bit-identical.
///
/// # Safety
/// AVX-512F, FMA and F16C available; `out.len() >= w.len() * 32`.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub unsafe fn dequantize_q4_0(w: &[BlockQ4_0], out: &mut [f32]) {
    // SAFETY: the caller's contract.
    unsafe { dequantize(w, out, |b| widen_q4(b), |b| b.d) }
}

/// `y += a · dequant(w)` block by block.
#[inline(always)]
unsafe fn axpy_f32<B>(
    a: f32,
    w: &[B],
    y: &mut [f32],
    widen: impl Fn(&B) -> [__m512; 2],
    d: impl Fn(&B) -> f16,
) {
    debug_assert!(y.len() >= w.len() * 32);
    // SAFETY: the features are the caller's; block i writes y[32i .. 32i + 32].
    unsafe {
        for (i, b) in w.iter().enumerate() {
            let s = _mm512_set1_ps(a * h2f(d(b)));
            let p = y.as_mut_ptr().add(32 * i);
            for (k, q) in widen(b).iter().enumerate() {
                let o = p.add(16 * k);
                _mm512_storeu_ps(o, _mm512_fmadd_ps(*q, s, _mm512_loadu_ps(o)));
            }
        }
    }
}

/// [`super::dot_q8_0`] (f32 activations).
///
/// # Safety
/// AVX-512F, FMA and F16C available; `x.len() >= w.len() * 32`.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub unsafe fn dot_q8_0(w: &[BlockQ8_0], x: &[f32]) -> f32 {
    // SAFETY: the caller's contract.
    unsafe { dot_f32(w, x, |b| widen_q8(b), |b| b.d) }
}

/// [`super::dot_q4_0`] (f32 activations).
///
/// # Safety
/// AVX-512F, FMA and F16C available; `x.len() >= w.len() * 32`.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub unsafe fn dot_q4_0(w: &[BlockQ4_0], x: &[f32]) -> f32 {
    // SAFETY: the caller's contract.
    unsafe { dot_f32(w, x, |b| widen_q4(b), |b| b.d) }
}

/// [`super::axpy_q8_0`].
///
/// # Safety
/// AVX-512F, FMA and F16C available; `y.len() >= w.len() * 32`.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub unsafe fn axpy_q8_0(a: f32, w: &[BlockQ8_0], y: &mut [f32]) {
    // SAFETY: the caller's contract.
    unsafe { axpy_f32(a, w, y, |b| widen_q8(b), |b| b.d) }
}

/// [`super::axpy_q4_0`].
///
/// # Safety
/// AVX-512F, FMA and F16C available; `y.len() >= w.len() * 32`.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub unsafe fn axpy_q4_0(a: f32, w: &[BlockQ4_0], y: &mut [f32]) {
    // SAFETY: the caller's contract.
    unsafe { axpy_f32(a, w, y, |b| widen_q4(b), |b| b.d) }
}
