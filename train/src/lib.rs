//! # modula-train
//!
//! The std-only trainer. For now it holds nothing but the crate boundary: the training
//! engine (explicit forward/backward pairs, AdamW, data, checkpoints) lands with the
//! training-engine issue. The crate exists so that the dependency direction
//! `quant <- core <- train <- edge-demo` is fixed from the start.
#![warn(missing_docs)]

pub use modula_core as core;
