//! GGUF-standard quantisation blocks, byte for byte as ggml defines them
//! (`ggml-common.h`): a block is `QK` consecutive weights of one row that share one scale.
//!
//! Both blocks are `#[repr(C)]`, contain only `u8`/`i8` and one IEEE half, have no padding,
//! and accept every bit pattern, so a byte slice from a mapped file can be viewed as a slice
//! of blocks without copying (see [`bytemuck`]); they need 2-byte alignment, which every
//! tensor in a Modula/GGUF file has (tensor data are 64-byte aligned).

use half::f16;

/// Weights per [`BlockQ8_0`].
pub const QK8_0: usize = 32;
/// Weights per [`BlockQ4_0`].
pub const QK4_0: usize = 32;

/// `Q8_0`: 32 weights, `w[i] = d * qs[i]`, `d` an f16 scale, `qs` signed bytes.
/// 34 bytes per 32 weights = 8.5 bits per weight. GGML type id 8.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8_0 {
    /// Scale `d` (f16).
    pub d: f16,
    /// Quantised weights, `w[i] = d * qs[i]`.
    pub qs: [i8; QK8_0],
}

/// `Q4_0`: 32 weights, `w[i] = d * (q[i] - 8)` with 4-bit `q[i]` in `0..16`.
/// Byte `qs[j]` holds weight `j` in its low nibble and weight `j + 16` in its high nibble.
/// 18 bytes per 32 weights = 4.5 bits per weight. GGML type id 2.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ4_0 {
    /// Scale `d` (f16).
    pub d: f16,
    /// Packed nibbles: low nibble = weight `j`, high nibble = weight `j + 16`.
    pub qs: [u8; QK4_0 / 2],
}

const _: () = assert!(core::mem::size_of::<BlockQ8_0>() == 2 + QK8_0);
const _: () = assert!(core::mem::size_of::<BlockQ4_0>() == 2 + QK4_0 / 2);
const _: () = assert!(core::mem::align_of::<BlockQ8_0>() == 2);
const _: () = assert!(core::mem::align_of::<BlockQ4_0>() == 2);

// SAFETY: repr(C), fields are f16 (Pod) and byte arrays, size == sum of field sizes
// (asserted above), so there is no padding; every bit pattern is a valid value.
unsafe impl bytemuck::Zeroable for BlockQ8_0 {}
// SAFETY: as above.
unsafe impl bytemuck::Pod for BlockQ8_0 {}
// SAFETY: repr(C), f16 + [u8; 16], size 18 asserted above: no padding, all bit patterns valid.
unsafe impl bytemuck::Zeroable for BlockQ4_0 {}
// SAFETY: as above.
unsafe impl bytemuck::Pod for BlockQ4_0 {}

impl BlockQ8_0 {
    /// Dequantise into `out` (exactly [`QK8_0`] values).
    pub fn dequantize(&self, out: &mut [f32; QK8_0]) {
        let d = self.d.to_f32();
        for (o, &q) in out.iter_mut().zip(self.qs.iter()) {
            *o = d * f32::from(q);
        }
    }
}

impl BlockQ4_0 {
    /// Dequantise into `out` (exactly [`QK4_0`] values).
    pub fn dequantize(&self, out: &mut [f32; QK4_0]) {
        let d = self.d.to_f32();
        let (lo, hi) = out.split_at_mut(QK4_0 / 2);
        for (j, &b) in self.qs.iter().enumerate() {
            lo[j] = d * (i32::from(b & 0x0f) - 8) as f32;
            hi[j] = d * (i32::from(b >> 4) - 8) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_layout_matches_ggml_bytes() {
        // d = 0.5 (f16 0x3800, little endian), qs = 0..32 - 16
        let mut bytes = [0u8; 34];
        bytes[0] = 0x00;
        bytes[1] = 0x38;
        for i in 0..32 {
            bytes[2 + i] = (i as i8 - 16) as u8;
        }
        let b: &BlockQ8_0 = bytemuck::from_bytes(&bytes);
        let mut out = [0.0f32; 32];
        b.dequantize(&mut out);
        for (i, v) in out.iter().enumerate() {
            assert_eq!(*v, 0.5 * (i as f32 - 16.0));
        }
    }

    #[test]
    fn q4_0_nibble_order_matches_ggml() {
        let mut bytes = [0u8; 18];
        bytes[1] = 0x3c; // d = 1.0
        for j in 0..16 {
            bytes[2 + j] = (j as u8) | ((15 - j as u8) << 4);
        }
        let b: &BlockQ4_0 = bytemuck::from_bytes(&bytes);
        let mut out = [0.0f32; 32];
        b.dequantize(&mut out);
        for j in 0..16 {
            assert_eq!(out[j], j as f32 - 8.0);
            assert_eq!(out[j + 16], (15 - j) as f32 - 8.0);
        }
    }
}
