//! Layers as explicit forward/backward pairs (the llm.c pattern): each forward records what
//! its backward needs (or the caller keeps its inputs), each backward is derived by hand and
//! *accumulates* into the gradients (so shared parameters and gradient accumulation need no
//! special case). Forwards call the same `modula-core` kernels the engine runs, so trainer
//! and engine compute the same numbers. Shapes are in comments on every argument.

pub mod activation;
pub mod attention;
pub mod ema;
pub mod linear;
pub mod loss;
pub mod mha;
pub mod norm;
pub mod router;
pub mod stickbreak;

/// Test helper: deterministic values in [-1, 1).
#[cfg(test)]
pub(crate) fn rand_vec(seed: u64, n: usize) -> Vec<f32> {
    let mut r = modula_core::rng::SplitMix64(seed);
    (0..n).map(|_| 2.0 * r.next_f32() - 1.0).collect()
}
