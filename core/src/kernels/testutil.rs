//! Test helpers for kernels: deterministic random data and a tolerance comparison.
#![allow(clippy::unwrap_used)]

use alloc::vec::Vec;

/// Deterministic values in [-1, 1).
pub(crate) fn rand_vec(seed: u64, n: usize) -> Vec<f32> {
    let mut r = crate::rng::SplitMix64(seed);
    (0..n).map(|_| 2.0 * r.next_f32() - 1.0).collect()
}

/// Assert `|a - b| <= tol[i]` elementwise with a message naming the first failure.
pub(crate) fn assert_close(what: &str, a: &[f32], b: &[f32], tol: impl Fn(usize) -> f32) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for i in 0..a.len() {
        let t = tol(i);
        assert!(
            (a[i] - b[i]).abs() <= t || (a[i].is_nan() && b[i].is_nan()),
            "{what}: element {i}: {} vs {} (tolerance {t})",
            a[i],
            b[i]
        );
    }
}
