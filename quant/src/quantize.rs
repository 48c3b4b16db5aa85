//! Round-to-nearest quantisers, exactly ggml's reference ones (`quantize_row_q8_0_ref`,
//! `quantize_row_q4_0_ref`), so a block quantised here is byte-identical to one quantised by
//! llama.cpp from the same f32 values; and whole-row dequantisers.

use crate::blocks::{BlockQ4K, BlockQ4_0, BlockQ6K, BlockQ8_0, QK4_0, QK8_0, QK_K};
use half::f16;

/// Why a row could not be quantised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QuantError {
    /// The row length is not a whole number of blocks (or the output has the wrong size).
    Shape {
        /// Values in the row.
        values: usize,
        /// Output blocks.
        blocks: usize,
        /// Weights per block.
        block: usize,
    },
    /// A value is NaN or infinite.
    NonFinite {
        /// Its index in the row.
        index: usize,
    },
}

impl core::fmt::Display for QuantError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            QuantError::Shape {
                values,
                blocks,
                block,
            } => write!(
                f,
                "{values} values do not fill {blocks} blocks of {block} (rows must be whole blocks)"
            ),
            QuantError::NonFinite { index } => {
                write!(f, "value {index} is NaN or infinite; refusing to quantise")
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for QuantError {}

fn check(x: &[f32], blocks: usize, block: usize) -> Result<(), QuantError> {
    if x.len() != blocks * block {
        return Err(QuantError::Shape {
            values: x.len(),
            blocks,
            block,
        });
    }
    match x.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(QuantError::NonFinite { index }),
        None => Ok(()),
    }
}

/// Q8_0: per block `d = max|x| / 127`, `q = round(x / d)` (half away from zero).
pub fn quantize_row_q8_0(x: &[f32], out: &mut [BlockQ8_0]) -> Result<(), QuantError> {
    check(x, out.len(), QK8_0)?;
    for (b, xb) in out.iter_mut().zip(x.chunks_exact(QK8_0)) {
        quantize_block_q8_0(xb, b);
    }
    Ok(())
}

/// One Q8_0 block's stored scale and the multiplier of its values from the block's
/// largest magnitude: `d = amax / 127` (as f16) and `1 / d` (0 when `d` is 0). Shared with
/// the SIMD quantisers (`kernels::*::quantize_q8_0`), which must give these bits.
#[inline]
pub(crate) fn q8_0_scales(amax: f32) -> (f16, f32) {
    let d = amax / 127.0;
    (f16::from_f32(d), if d != 0.0 { 1.0 / d } else { 0.0 })
}

/// One block of [`quantize_row_q8_0`] (32 finite values).
#[inline]
pub(crate) fn quantize_block_q8_0(xb: &[f32], b: &mut BlockQ8_0) {
    let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
    let (d, id) = q8_0_scales(amax);
    b.d = d;
    for (q, &v) in b.qs.iter_mut().zip(xb) {
        *q = libm::roundf(v * id) as i8;
    }
}

/// Q4_0: per block the value of largest magnitude `m` (with its sign), `d = m / −8`,
/// `q = min(15, trunc(x / d + 8.5))`.
pub fn quantize_row_q4_0(x: &[f32], out: &mut [BlockQ4_0]) -> Result<(), QuantError> {
    check(x, out.len(), QK4_0)?;
    for (b, xb) in out.iter_mut().zip(x.chunks_exact(QK4_0)) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in xb {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f16::from_f32(d);
        let q = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
        for j in 0..QK4_0 / 2 {
            b.qs[j] = q(xb[j]) | (q(xb[j + QK4_0 / 2]) << 4);
        }
    }
    Ok(())
}

/// Dequantise a row of Q8_0 blocks into `out` (`blocks × 32` values).
pub fn dequantize_row_q8_0(blocks: &[BlockQ8_0], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK8_0)) {
        if let Ok(o) = <&mut [f32; QK8_0]>::try_from(o) {
            b.dequantize(o);
        }
    }
}

/// Dequantise a row of Q4_0 blocks into `out` (`blocks × 32` values).
pub fn dequantize_row_q4_0(blocks: &[BlockQ4_0], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK4_0)) {
        if let Ok(o) = <&mut [f32; QK4_0]>::try_from(o) {
            b.dequantize(o);
        }
    }
}

/// Round half away from zero (libm-free, as the `no_std` build needs).
fn round(v: f32) -> f32 {
    if v >= 0.0 {
        (v + 0.5) as i32 as f32
    } else {
        -((-v + 0.5) as i32 as f32)
    }
}

/// Q4_K, round to nearest: per sub-block of 32 the range `[min(x, 0), max(x)]` in 15 steps;
/// the eight scales and mins to 6 bits on the super-block's `d = max scale / 63`,
/// `dmin = max min / 63`; each weight to the nearest of its sub-block's 16 levels. (ggml's
/// own quantiser searches the scale; this one does not, so its blocks differ from ggml's
/// but are read by any GGUF tool — dequantisation is the format.)
pub fn quantize_row_q4_k(x: &[f32], out: &mut [BlockQ4K]) -> Result<(), QuantError> {
    check(x, out.len(), QK_K)?;
    for (b, xb) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
        let (mut sc, mut mn) = ([0f32; 8], [0f32; 8]);
        for s in 0..8 {
            let v = &xb[32 * s..32 * s + 32];
            let lo = v.iter().fold(0f32, |m, &a| m.min(a));
            let hi = v.iter().fold(lo, |m, &a| m.max(a));
            sc[s] = (hi - lo) / 15.0;
            mn[s] = -lo;
        }
        let smax = sc.iter().fold(0f32, |m, &a| m.max(a));
        let mmax = mn.iter().fold(0f32, |m, &a| m.max(a));
        let d = smax / 63.0;
        let dmin = mmax / 63.0;
        b.d = f16::from_f32(d);
        b.dmin = f16::from_f32(dmin);
        let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
        let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
        for s in 0..8 {
            ls[s] = if d > 0.0 {
                round(sc[s] / d).clamp(0.0, 63.0) as u8
            } else {
                0
            };
            lm[s] = if dmin > 0.0 {
                round(mn[s] / dmin).clamp(0.0, 63.0) as u8
            } else {
                0
            };
        }
        b.scales = [0; 12];
        for j in 0..8 {
            if j < 4 {
                b.scales[j] = ls[j];
                b.scales[j + 4] = lm[j];
            } else {
                b.scales[j + 4] = (ls[j] & 0x0f) | ((lm[j] & 0x0f) << 4);
                b.scales[j - 4] |= (ls[j] >> 4) << 6;
                b.scales[j] |= (lm[j] >> 4) << 6;
            }
        }
        let mut q = [0u8; QK_K];
        for s in 0..8 {
            let (ds, ms) = (d * f32::from(ls[s]), dmin * f32::from(lm[s]));
            for l in 0..32 {
                let v = xb[32 * s + l];
                q[32 * s + l] = if ds > 0.0 {
                    round((v + ms) / ds).clamp(0.0, 15.0) as u8
                } else {
                    0
                };
            }
        }
        for g in 0..4 {
            for l in 0..32 {
                b.qs[32 * g + l] = q[64 * g + l] | (q[64 * g + 32 + l] << 4);
            }
        }
    }
    Ok(())
}

/// Q6_K, round to nearest: per sub-block of 16 `scale = max|x| / 31`; the sixteen scales to
/// signed bytes on the super-block's `d = max scale / 127`; each weight to
/// `round(x / (d·scale))` in `-32..=31`.
pub fn quantize_row_q6_k(x: &[f32], out: &mut [BlockQ6K]) -> Result<(), QuantError> {
    check(x, out.len(), QK_K)?;
    for (b, xb) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
        let mut sc = [0f32; 16];
        for (s, v) in xb.chunks_exact(16).enumerate() {
            sc[s] = v.iter().fold(0f32, |m, &a| m.max(a.abs())) / 31.0;
        }
        let smax = sc.iter().fold(0f32, |m, &a| m.max(a));
        b.d = f16::from_f32(smax / 127.0);
        let d = b.d.to_f32();
        let mut q = [0u8; QK_K];
        for s in 0..16 {
            let l = if d > 0.0 {
                round(sc[s] / d).clamp(-128.0, 127.0) as i8
            } else {
                0
            };
            b.scales[s] = l;
            let ds = d * f32::from(l);
            for r in 0..16 {
                let v = xb[16 * s + r];
                let qv = if ds != 0.0 {
                    round(v / ds).clamp(-32.0, 31.0)
                } else {
                    0.0
                };
                q[16 * s + r] = (qv as i32 + 32) as u8;
            }
        }
        for h in 0..2 {
            for l in 0..32 {
                let at = |k: usize| q[128 * h + 32 * k + l];
                let (q1, q2, q3, q4) = (at(0), at(1), at(2), at(3));
                b.ql[64 * h + l] = (q1 & 0x0f) | ((q3 & 0x0f) << 4);
                b.ql[64 * h + 32 + l] = (q2 & 0x0f) | ((q4 & 0x0f) << 4);
                b.qh[32 * h + l] =
                    (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
            }
        }
    }
    Ok(())
}

/// Dequantise a row of Q4_K blocks into `out` (`blocks × 256` values).
pub fn dequantize_row_q4_k(blocks: &[BlockQ4K], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        if let Ok(o) = <&mut [f32; QK_K]>::try_from(o) {
            b.dequantize(o);
        }
    }
}

/// Dequantise a row of Q6_K blocks into `out` (`blocks × 256` values).
pub fn dequantize_row_q6_k(blocks: &[BlockQ6K], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        if let Ok(o) = <&mut [f32; QK_K]>::try_from(o) {
            b.dequantize(o);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    fn row(seed: u64, n: usize, scale: f32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((s >> 40) as f32 / 16_777_216.0 - 0.5) * scale
            })
            .collect()
    }

    #[test]
    fn round_trip_within_half_a_step() {
        // (scales whose block scale d is a normal f16; below ~6e-5·127 the f16 scale is
        // subnormal and loses relative precision, as in ggml)
        for (seed, scale) in [(1, 1.0), (2, 0.05), (3, 300.0)] {
            let x = row(seed, 256, scale);
            let mut q8 = vec![
                BlockQ8_0 {
                    d: f16::ZERO,
                    qs: [0; 32]
                };
                8
            ];
            let mut q4 = vec![
                BlockQ4_0 {
                    d: f16::ZERO,
                    qs: [0; 16]
                };
                8
            ];
            quantize_row_q8_0(&x, &mut q8).unwrap();
            quantize_row_q4_0(&x, &mut q4).unwrap();
            let (mut y8, mut y4) = (vec![0f32; 256], vec![0f32; 256]);
            dequantize_row_q8_0(&q8, &mut y8);
            dequantize_row_q4_0(&q4, &mut y4);
            for (b, xb) in x.chunks_exact(32).enumerate() {
                let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
                for j in 0..32 {
                    let i = b * 32 + j;
                    // half a quantisation step, plus the f16 rounding of the scale
                    let e8 = amax / 127.0 * 0.5 + amax * 1e-3;
                    let e4 = amax / 8.0 * 0.5 + amax * 1e-3;
                    assert!((y8[i] - x[i]).abs() <= e8, "q8 {i}: {} vs {}", y8[i], x[i]);
                    // q4's top code (15) is one step short of +8: error up to a full step there
                    assert!(
                        (y4[i] - x[i]).abs() <= 2.0 * e4,
                        "q4 {i}: {} vs {}",
                        y4[i],
                        x[i]
                    );
                }
            }
        }
    }

    #[test]
    fn matches_ggml_reference_bytes() {
        // hand-computed with ggml's formulas: x = [-4, -3.5, ..., 11.5] (32 values)
        let x: Vec<f32> = (0..32).map(|i| -4.0 + 0.5 * i as f32).collect();
        let mut q8 = [BlockQ8_0 {
            d: f16::ZERO,
            qs: [0; 32],
        }];
        quantize_row_q8_0(&x, &mut q8).unwrap();
        assert_eq!(q8[0].d, f16::from_f32(11.5 / 127.0));
        assert_eq!(q8[0].qs[0], -44); // round(-4 * 127 / 11.5) = round(-44.17)
        assert_eq!(q8[0].qs[31], 127);
        let mut q4 = [BlockQ4_0 {
            d: f16::ZERO,
            qs: [0; 16],
        }];
        quantize_row_q4_0(&x, &mut q4).unwrap();
        // max = 11.5 (largest magnitude), d = -1.4375, x/d + 8.5 for x = -4: 11.28 -> 11;
        // x = 11.5: 0.5 -> 0
        assert_eq!(q4[0].d, f16::from_f32(-1.4375));
        assert_eq!(q4[0].qs[0] & 0x0f, 11);
        assert_eq!(q4[0].qs[15] >> 4, 0);
        // zeros give d = 0 and the middle code
        let mut z = [BlockQ4_0 {
            d: f16::ONE,
            qs: [0; 16],
        }];
        quantize_row_q4_0(&[0.0; 32], &mut z).unwrap();
        assert_eq!((z[0].d, z[0].qs[3]), (f16::ZERO, 0x88));
    }

    #[test]
    fn bad_rows_are_refused() {
        let mut q8 = [BlockQ8_0 {
            d: f16::ZERO,
            qs: [0; 32],
        }];
        assert!(matches!(
            quantize_row_q8_0(&[0.0; 31], &mut q8),
            Err(QuantError::Shape { values: 31, .. })
        ));
        let mut x = [0.5f32; 32];
        x[7] = f32::NAN;
        assert_eq!(
            quantize_row_q8_0(&x, &mut q8),
            Err(QuantError::NonFinite { index: 7 })
        );
        let mut q4 = [BlockQ4_0 {
            d: f16::ZERO,
            qs: [0; 16],
        }];
        x[7] = f32::INFINITY;
        assert!(quantize_row_q4_0(&x, &mut q4).is_err());
    }
}
