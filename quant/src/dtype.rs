//! The element types a Modula tensor can have, and their GGML/GGUF type ids.
//!
//! One table ([`DType::info`]) gives each type's id, name, block size and bytes per block;
//! every size computation in the workspace goes through it. Type ids are the standard GGML
//! ones, so files interoperate with llama.cpp's `gguf` tooling.

use core::fmt;

/// A raw GGML type id as stored in a GGUF tensor-info record.
pub type GgmlTypeId = u32;

/// Element types supported by Modula.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// IEEE-754 binary32. GGML id 0.
    F32,
    /// IEEE-754 binary16. GGML id 1.
    F16,
    /// bfloat16. GGML id 30.
    BF16,
    /// 8-bit blocks of 32 with an f16 scale (see [`crate::BlockQ8_0`]). GGML id 8.
    Q8_0,
    /// 4-bit blocks of 32 with an f16 scale (see [`crate::BlockQ4_0`]). GGML id 2.
    Q4_0,
    /// 4-bit K-quant super-blocks of 256 (see [`crate::BlockQ4K`]). GGML id 12.
    Q4K,
    /// 6-bit K-quant super-blocks of 256 (see [`crate::BlockQ6K`]). GGML id 14.
    Q6K,
}

/// Static facts about one [`DType`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DTypeInfo {
    /// GGML type id.
    pub id: GgmlTypeId,
    /// Canonical GGML name (`"q8_0"`, ...).
    pub name: &'static str,
    /// Elements per block (1 for plain float types).
    pub block_len: usize,
    /// Bytes per block.
    pub block_bytes: usize,
}

impl DType {
    /// Every supported type, in id order.
    pub const ALL: [DType; 7] = [
        DType::F32,
        DType::F16,
        DType::Q4_0,
        DType::Q8_0,
        DType::Q4K,
        DType::Q6K,
        DType::BF16,
    ];

    /// The static facts of this type.
    pub const fn info(self) -> DTypeInfo {
        match self {
            DType::F32 => DTypeInfo {
                id: 0,
                name: "f32",
                block_len: 1,
                block_bytes: 4,
            },
            DType::F16 => DTypeInfo {
                id: 1,
                name: "f16",
                block_len: 1,
                block_bytes: 2,
            },
            DType::Q4_0 => DTypeInfo {
                id: 2,
                name: "q4_0",
                block_len: 32,
                block_bytes: 18,
            },
            DType::Q8_0 => DTypeInfo {
                id: 8,
                name: "q8_0",
                block_len: 32,
                block_bytes: 34,
            },
            DType::Q4K => DTypeInfo {
                id: 12,
                name: "q4_k",
                block_len: 256,
                block_bytes: 144,
            },
            DType::Q6K => DTypeInfo {
                id: 14,
                name: "q6_k",
                block_len: 256,
                block_bytes: 210,
            },
            DType::BF16 => DTypeInfo {
                id: 30,
                name: "bf16",
                block_len: 1,
                block_bytes: 2,
            },
        }
    }

    /// The type with GGML id `id`, if Modula supports it.
    pub fn from_ggml_id(id: GgmlTypeId) -> Option<DType> {
        DType::ALL.into_iter().find(|t| t.info().id == id)
    }

    /// The type whose canonical name is `name` (case-insensitive).
    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL
            .into_iter()
            .find(|t| t.info().name.eq_ignore_ascii_case(name))
    }

    /// GGML id.
    pub const fn ggml_id(self) -> GgmlTypeId {
        self.info().id
    }

    /// Elements per block.
    pub const fn block_len(self) -> usize {
        self.info().block_len
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        self.info().block_bytes
    }

    /// True for block-quantised types.
    pub const fn is_quantized(self) -> bool {
        self.info().block_len > 1
    }

    /// Bytes taken by `n` elements, `None` if `n` is not a whole number of blocks or the
    /// size overflows `u64`.
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        let bl = self.block_len() as u64;
        if !n.is_multiple_of(bl) {
            return None;
        }
        (n / bl).checked_mul(self.block_bytes() as u64)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.info().name)
    }
}

/// The GGML name of a type id Modula does not support, for error messages
/// (`None` if the id is not a GGML type at all).
pub fn ggml_name_of_unsupported(id: GgmlTypeId) -> Option<&'static str> {
    const NAMES: [(u32, &str); 22] = [
        (3, "q4_1"),
        (6, "q5_0"),
        (7, "q5_1"),
        (9, "q8_1"),
        (10, "q2_k"),
        (11, "q3_k"),
        (13, "q5_k"),
        (15, "q8_k"),
        (16, "iq2_xxs"),
        (17, "iq2_xs"),
        (18, "iq3_xxs"),
        (19, "iq1_s"),
        (20, "iq4_nl"),
        (21, "iq3_s"),
        (22, "iq2_s"),
        (23, "iq4_xs"),
        (24, "i8"),
        (25, "i16"),
        (26, "i32"),
        (27, "i64"),
        (28, "f64"),
        (29, "iq1_m"),
    ];
    NAMES.iter().find(|(i, _)| *i == id).map(|(_, n)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_sizes() {
        for t in DType::ALL {
            assert_eq!(DType::from_ggml_id(t.ggml_id()), Some(t));
            assert_eq!(DType::from_name(t.info().name), Some(t));
        }
        assert_eq!(DType::Q8_0.bytes_for(64), Some(68));
        assert_eq!(DType::Q4_0.bytes_for(64), Some(36));
        assert_eq!(DType::Q4_0.bytes_for(33), None);
        assert_eq!(DType::F32.bytes_for(u64::MAX), None);
        assert_eq!(DType::from_ggml_id(3), None);
        assert_eq!(ggml_name_of_unsupported(3), Some("q4_1"));
    }
}
