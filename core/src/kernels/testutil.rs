//! Test helpers for kernels: deterministic random data and a tolerance comparison.
#![allow(clippy::unwrap_used)]

use alloc::vec::Vec;

/// SplitMix64-based values in [-1, 1).
pub(crate) fn rand_vec(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
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
