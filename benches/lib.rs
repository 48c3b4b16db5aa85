//! Shared helpers for the benchmarks in this folder (one file per benchmark group).
#![warn(missing_docs)]

use modula_core::gguf::GgufWriter;
use modula_quant::DType;

/// `n` deterministic pseudo-random values in [−0.5, 0.5) (a multiplicative hash of the
/// index, so every benchmark sees the same data).
pub fn data(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 9) as f32 / 8_388_608.0
                - 0.5
        })
        .collect()
}

/// A GGUF file with `n` F32 tensors of `elems` elements each, every 8th in its own page
/// group, as bytes.
pub fn synthetic_file(n: usize, elems: usize) -> Vec<u8> {
    let data: Vec<u8> = (0..elems * 4).map(|i| i as u8).collect();
    let mut w = GgufWriter::new();
    for i in 0..n {
        let grouped = i % 8 == 0;
        if grouped {
            w.begin_group(&format!("g{i}")).expect("fresh group name");
        }
        w.add_tensor(
            &format!("t.{i}.weight"),
            DType::F32,
            &[elems],
            data.as_slice(),
        )
        .expect("valid tensor");
        if grouped {
            w.end_group().expect("group is open");
        }
    }
    w.to_bytes().expect("layout succeeds")
}

/// `y[m, n] = x[m, k] · w[n, k]ᵀ` with `matrixmultiply` alone (the baseline our kernels are
/// compared with). Panics if a buffer is too short.
pub fn matrixmultiply_xwt(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, y: &mut [f32]) {
    assert!(x.len() >= m * k && w.len() >= n * k && y.len() >= m * n);
    // SAFETY: the extents were asserted above; x is m x k (row stride k), w is n x k read
    // as its transpose (row stride 1, column stride k), y is m x n (row stride n).
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            x.as_ptr(),
            k as isize,
            1,
            w.as_ptr(),
            1,
            k as isize,
            0.0,
            y.as_mut_ptr(),
            n as isize,
            1,
        )
    }
}
