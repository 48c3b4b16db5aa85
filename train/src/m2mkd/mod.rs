//! m2mKD — module-to-module knowledge distillation (`../shared/papers/spec_m2mkd.md`):
//! modular networks built from modules that can be swapped in and out of a shallow meta
//! model ([`net`]), the losses ([`loss`]), the hybrid training jobs ([`job`]) and the
//! phases of the whole procedure with its baselines ([`pipeline`]).
pub mod job;
pub mod loss;
pub mod net;
pub mod pipeline;
