//! Round-to-nearest quantisers, exactly ggml's reference ones (`quantize_row_q8_0_ref`,
//! `quantize_row_q4_0_ref`), so a block quantised here is byte-identical to one quantised by
//! llama.cpp from the same f32 values; and whole-row dequantisers.

use crate::blocks::{BlockQ4_0, BlockQ8_0, QK4_0, QK8_0};
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
