//! Shared helpers for the benchmarks in this folder (one file per benchmark group).
#![warn(missing_docs)]

use modula_core::gguf::GgufWriter;
use modula_quant::DType;

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
