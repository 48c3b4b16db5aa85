//! Compute kernels shared by the on-device engine and the trainer.
//!
//! The one idea: every kernel has a plain scalar reference (the test oracle, next to its
//! public entry point) and SIMD variants (`x86_64/`, `aarch64/`), chosen through
//! [`isa::active`] once per process; `*_with(isa, ..)` forms let tests run every variant the
//! host supports. Shapes are checked at the entry point and reported as [`KernelError`];
//! the SIMD code below it is `unsafe` only for the CPU features, never for bounds.
//!
//! Not here: threading (callers split coarsely across experts, heads or sequences) and
//! allocation in the steady-state decode path.

// Kernels take shapes and strides explicitly, BLAS style; bundling them into structs would
// hide the one thing a reader of a kernel call needs to see.
#![allow(clippy::too_many_arguments)]

pub mod attention;
pub mod elementwise;
pub mod ema;
pub mod expert_ffn;
pub mod isa;
pub mod linear;
pub mod par;
pub mod routing;
// The generic SIMD layer serves the x86-64 and aarch64 variants; other targets (Cortex-M,
// …) run the scalar kernels only.
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code, unused_macros, unused_imports)
)]
mod simd;

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "x86_64")]
mod x86_64;

pub use isa::Isa;

#[cfg(test)]
mod testutil;

use core::fmt;

/// A kernel was called with inconsistent shapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelError {
    /// Which kernel.
    pub kernel: &'static str,
    /// What is inconsistent.
    pub what: &'static str,
    /// The size needed.
    pub expected: usize,
    /// The size given.
    pub got: usize,
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} must be {}, got {}",
            self.kernel, self.what, self.expected, self.got
        )
    }
}

impl core::error::Error for KernelError {}

/// `Err` unless `got >= expected` (buffers may be longer than needed).
pub(crate) fn need(
    kernel: &'static str,
    what: &'static str,
    expected: usize,
    got: usize,
) -> Result<(), KernelError> {
    if got >= expected {
        Ok(())
    } else {
        Err(KernelError {
            kernel,
            what,
            expected,
            got,
        })
    }
}

/// `Err` unless `got == expected`.
pub(crate) fn exactly(
    kernel: &'static str,
    what: &'static str,
    expected: usize,
    got: usize,
) -> Result<(), KernelError> {
    if got == expected {
        Ok(())
    } else {
        Err(KernelError {
            kernel,
            what,
            expected,
            got,
        })
    }
}
