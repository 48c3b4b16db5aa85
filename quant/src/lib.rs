//! # modula-quant
//!
//! The weight formats Modula stores and computes with. Each block format is defined once
//! (in [`blocks`]) with its formula, its bits per weight and a compile-time assertion of its
//! byte size, so that a file written by Modula is read by any GGUF tool and vice versa.
//! [`DType`] is the one table that maps GGUF/GGML type ids to element counts and byte sizes.
//!
//! [`quantize`] holds ggml's round-to-nearest quantisers (byte-identical blocks) and row
//! dequantisers; [`kernels`] the products of quantised rows with f32 activations (scalar
//! references, AVX2, AVX-512 and NEON versions that `modula-core` dispatches to at run
//! time).
//!
//! This crate is `#![no_std]` (+ `alloc`); the `std` feature (default) only switches on
//! `std` in its dependencies.
#![no_std]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod blocks;
pub mod dtype;
pub mod kernels;
pub mod quantize;

pub use blocks::{BlockQ4K, BlockQ4_0, BlockQ6K, BlockQ8K, BlockQ8_0, QK4_0, QK8_0, QK_K};
pub use dtype::{DType, GgmlTypeId};
