//! # modula-train
//!
//! The std-only trainer, built the llm.c way: explicit forward/backward pairs per layer
//! ([`layers`]), every backward checked against finite differences ([`gradcheck`]).
//! Forwards call the same `modula-core` kernels as the on-device engine.
//!
//! This is the first slice of the training engine: the gradient-check harness, linear,
//! LayerNorm, activations and softmax cross-entropy, the flat parameter store ([`params`])
//! and AdamW with clipping and the warm-up + cosine schedule ([`optim`]). Data,
//! checkpoints, the dense baseline model and the CLI come next (`docs/training.md`).
#![warn(missing_docs)]

pub mod checkpoint;
pub mod data;
pub mod gradcheck;
pub mod layers;
pub mod model;
pub mod optim;
pub mod params;
pub mod plot;
pub mod tasks;
pub mod trainer;

pub use modula_core as core;
