//! Interoperability: a file written by llama.cpp's own GGUF writer (the `gguf` Python
//! package, `tests/reference/gguf_interop.py write`, committed as a fixture) is read by
//! Modula with the right shapes, types, metadata and values. The reverse direction (gguf-py
//! reading Modula's files) is `gguf_interop.py check`, run by `.ci/run` when pip works.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use modula_core::{Model, Value};
use modula_quant::DType;

fn expected(i: usize) -> f32 {
    i as f32 / 64.0 - 4.0
}

#[test]
fn gguf_py_fixture_reads_correctly() {
    let m = Model::open(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/gguf_py_written.gguf"
    ))
    .unwrap();
    assert_eq!(
        m.alignment(),
        32,
        "no general.alignment key: GGUF's default of 32 applies"
    );
    assert_eq!(m.architecture(), Some("modula"));
    assert_eq!(m.get_u32("modula.block_count").unwrap(), 3);
    assert_eq!(m.get("modula.ssm.bidirectional"), Some(Value::Bool(true)));
    assert_eq!(m.get("test.i64"), Some(Value::I64(-7)));
    let depths = m.get("modula.nested.depths").unwrap().as_array().unwrap();
    assert_eq!(depths.to_u64_vec().unwrap(), vec![1, 2, 3]);

    let f32s = m.tensor("f32").unwrap().as_f32().unwrap();
    assert_eq!(f32s.shape(), &[8, 64]);
    for (i, v) in f32s.iter().enumerate() {
        assert_eq!(*v, expected(i));
    }
    let f16s = m.tensor("f16").unwrap().as_f16().unwrap();
    assert_eq!(f16s.shape(), &[8, 64]);
    for (i, v) in f16s.iter().enumerate() {
        assert_eq!(v.to_f32(), expected(i));
    }
    let bf = m.tensor("bf16").unwrap().as_bf16().unwrap();
    for (i, v) in bf.iter().enumerate() {
        assert_eq!(*v, half::bf16::from_f32(expected(i)), "bf16 element {i}");
    }
    let q8 = m.tensor("q8_0").unwrap();
    assert_eq!((q8.dtype(), q8.shape()), (DType::Q8_0, vec![8, 64]));
    let rows = q8.as_q8_0().unwrap();
    assert_eq!((rows.rows, rows.blocks_per_row), (8, 2));
    let mut out = [0f32; 32];
    for (b, blk) in rows.blocks.iter().enumerate() {
        blk.dequantize(&mut out);
        let d = blk.d.to_f32().abs();
        for (j, v) in out.iter().enumerate() {
            let x = expected(b * 32 + j);
            // round-to-nearest (d/2) plus the f16 rounding of the scale (|q| d 2^-11)
            assert!(
                (v - x).abs() <= d * (0.5 + 127.0 / 2048.0) + 1e-6,
                "q8_0 block {b} elem {j}: {v} vs {x}"
            );
        }
    }
    let rows = m.tensor("q4_0").unwrap().as_q4_0().unwrap();
    for (b, blk) in rows.blocks.iter().enumerate() {
        blk.dequantize(&mut out);
        let d = blk.d.to_f32().abs();
        for (j, v) in out.iter().enumerate() {
            let x = expected(b * 32 + j);
            // nibble range clamps at 15, so the end of the range may be off by up to d
            assert!(
                (v - x).abs() <= d * (1.0 + 8.0 / 2048.0) + 1e-6,
                "q4_0 block {b} elem {j}: {v} vs {x}"
            );
        }
    }
}
