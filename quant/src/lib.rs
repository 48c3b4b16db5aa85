//! # modula-quant
//!
//! The weight formats Modula stores and computes with. Each block format is defined once
//! (in [`blocks`]) with its formula, its bits per weight and a compile-time assertion of its
//! byte size, so that a file written by Modula is read by any GGUF tool and vice versa.
//! [`DType`] is the one table that maps GGUF/GGML type ids to element counts and byte sizes.
//!
//! This crate is `#![no_std]` (+ `alloc`); the `std` feature (default) only switches on
//! `std` in its dependencies. Quantisers and dot-product kernels arrive with the
//! quantisation issue; this foundation holds the layouts that the container needs.
#![no_std]
#![warn(missing_docs)]

#[cfg(feature = "std")]
extern crate std;

pub mod blocks;
pub mod dtype;

pub use blocks::{BlockQ4_0, BlockQ8_0, QK4_0, QK8_0};
pub use dtype::{DType, GgmlTypeId};
