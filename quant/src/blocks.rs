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

/// Weights per K-quant super-block ([`BlockQ4K`], [`BlockQ6K`]).
pub const QK_K: usize = 256;

/// `Q4_K`: 256 weights in 8 sub-blocks of 32; sub-block `s` has a 6-bit scale `sc[s]` and a
/// 6-bit min `m[s]` (packed in `scales`), `w = d·sc[s]·q − dmin·m[s]` with 4-bit `q`.
/// 144 bytes per 256 weights = 4.5 bits per weight. GGML type id 12 (the bulk of a Q4_K_M
/// file).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ4K {
    /// Super-block scale of the scales (f16).
    pub d: f16,
    /// Super-block scale of the mins (f16).
    pub dmin: f16,
    /// Eight 6-bit scales and eight 6-bit mins, packed as ggml's `get_scale_min_k4`.
    pub scales: [u8; 12],
    /// Nibbles: in each 64-weight group, byte `l` holds weight `l` (low) and `l + 32` (high).
    pub qs: [u8; QK_K / 2],
}

/// `Q6_K`: 256 weights in 16 sub-blocks of 16 with signed 8-bit scales,
/// `w = d·scales[s]·(q − 32)` with 6-bit `q` (low 4 bits in `ql`, high 2 in `qh`).
/// 210 bytes per 256 weights = 6.5625 bits per weight. GGML type id 14 (Q4_K_M's output
/// and half of its FFN down projections).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ6K {
    /// Low 4 bits of the quants.
    pub ql: [u8; QK_K / 2],
    /// High 2 bits of the quants.
    pub qh: [u8; QK_K / 4],
    /// Sub-block scales.
    pub scales: [i8; QK_K / 16],
    /// Super-block scale (f16).
    pub d: f16,
}

/// `Q8_K`: the activation side of the K-quant products (ggml's `block_q8_K`, never stored
/// in files): 256 values as `x ≈ d·q` with signed 8-bit `q`, and the sums of each 16
/// consecutive `q` (`bsums`), which the Q4_K mins and the Q6_K offset of 32 multiply.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8K {
    /// Scale (f32).
    pub d: f32,
    /// Quants.
    pub qs: [i8; QK_K],
    /// `bsums[j] = Σ qs[16j .. 16j + 16]`.
    pub bsums: [i16; QK_K / 16],
}

impl BlockQ8K {
    /// All zero (scale 0).
    pub const ZERO: BlockQ8K = BlockQ8K {
        d: 0.0,
        qs: [0; QK_K],
        bsums: [0; QK_K / 16],
    };
}

const _: () = assert!(core::mem::size_of::<BlockQ4K>() == 144);
const _: () = assert!(core::mem::size_of::<BlockQ6K>() == 210);
const _: () = assert!(core::mem::align_of::<BlockQ4K>() == 2);
const _: () = assert!(core::mem::align_of::<BlockQ6K>() == 2);

const _: () = assert!(core::mem::size_of::<BlockQ8K>() == 292);

// SAFETY: repr(C), two f16 then byte arrays, size 144 = the fields' sizes (asserted): no
// padding; every bit pattern is a valid value.
unsafe impl bytemuck::Zeroable for BlockQ4K {}
// SAFETY: as above.
unsafe impl bytemuck::Pod for BlockQ4K {}
// SAFETY: repr(C), byte arrays then one f16 at offset 208 (2-aligned), size 210 asserted:
// no padding; every bit pattern is a valid value.
unsafe impl bytemuck::Zeroable for BlockQ6K {}
// SAFETY: as above.
unsafe impl bytemuck::Pod for BlockQ6K {}

/// Sub-block `j`'s (scale, min) of a Q4_K block (ggml's `get_scale_min_k4`).
#[inline]
pub fn q4k_scale_min(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

impl BlockQ4K {
    /// Dequantise into `out` (exactly [`QK_K`] values), as ggml's `dequantize_row_q4_K`.
    pub fn dequantize(&self, out: &mut [f32; QK_K]) {
        let (d, min) = (self.d.to_f32(), self.dmin.to_f32());
        for g in 0..4 {
            let (s1, m1) = q4k_scale_min(2 * g, &self.scales);
            let (s2, m2) = q4k_scale_min(2 * g + 1, &self.scales);
            let (d1, m1) = (d * f32::from(s1), min * f32::from(m1));
            let (d2, m2) = (d * f32::from(s2), min * f32::from(m2));
            let q = &self.qs[32 * g..32 * g + 32];
            let o = &mut out[64 * g..64 * g + 64];
            for l in 0..32 {
                o[l] = d1 * f32::from(q[l] & 0x0f) - m1;
                o[32 + l] = d2 * f32::from(q[l] >> 4) - m2;
            }
        }
    }
}

impl BlockQ6K {
    /// Dequantise into `out` (exactly [`QK_K`] values), as ggml's `dequantize_row_q6_K`.
    pub fn dequantize(&self, out: &mut [f32; QK_K]) {
        let d = self.d.to_f32();
        for h in 0..2 {
            let (ql, qh) = (&self.ql[64 * h..64 * h + 64], &self.qh[32 * h..32 * h + 32]);
            let sc = &self.scales[8 * h..8 * h + 8];
            let o = &mut out[128 * h..128 * h + 128];
            for l in 0..32 {
                let is = l / 16;
                let q1 = i32::from((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) - 32;
                let q2 = i32::from((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
                let q3 = i32::from((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                let q4 = i32::from((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                o[l] = d * f32::from(sc[is]) * q1 as f32;
                o[l + 32] = d * f32::from(sc[is + 2]) * q2 as f32;
                o[l + 64] = d * f32::from(sc[is + 4]) * q3 as f32;
                o[l + 96] = d * f32::from(sc[is + 6]) * q4 as f32;
            }
        }
    }
}
