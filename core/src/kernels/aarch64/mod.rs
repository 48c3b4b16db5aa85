//! aarch64 SIMD variants (NEON is baseline on aarch64).

pub(crate) mod neon;
