//! x86-64 SIMD variants. Each function here requires the CPU features its module names;
//! callers (the dispatchers next to each scalar reference) check them first.

pub(crate) mod avx2;
