//! Fuzz the GGUF reader: any byte string must give `Ok` or a typed error, never a panic,
//! an out-of-bounds read (ASan), a hang or an allocation beyond the input's size. Accepted
//! inputs are walked completely (metadata, every tensor view, page groups).
//!
//! Run: `cargo +nightly fuzz run gguf_reader fuzz/seeds -- -max_total_time=60`
//! (seeds: `tests/corpus/hostile/` plus valid files; see `scripts/fuzz.sh`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use modula_core::Model;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Model::from_bytes(data) {
        for (k, v) in m.metadata() {
            let _ = (k.len(), v.type_description());
            if let Some(a) = v.as_array() {
                let _ = a.iter().count();
            }
        }
        for t in m.tensors() {
            let _ = t.as_f32().map(|a| a.len());
            let _ = t.as_f16().map(|a| a.len());
            let _ = t.as_bf16().map(|a| a.len());
            let _ = t.as_q8_0().map(|r| r.prefix_rows(r.rows).map(|b| b.len()));
            let _ = t.as_q4_0().map(|r| r.row(0).map(|b| b.len()));
            assert!(m.tensor(t.name()).is_ok());
        }
        for g in m.page_groups() {
            let _ = g.bytes().len();
        }
    }
});
