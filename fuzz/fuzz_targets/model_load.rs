//! Fuzz model construction on top of the container: any byte string that parses as GGUF
//! must, through the one loader (`ModelDesc::from_model`, `check_tensors`), the nested views
//! (`Model::submodel`) and every engine (`engine::open`: dense/EMoE, ModuleFormer, SeqBoat;
//! a short prefill, decode steps, a nested size, a reset), give `Ok` or a typed error —
//! never a panic, an out-of-bounds read (ASan), a hang or an allocation beyond what the
//! file's own tensors bound.
//!
//! Run: `cargo +nightly fuzz run model_load fuzz/seeds-model -- -max_total_time=60`
//! (seeds: small model files of every family; see `scripts/fuzz.sh`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use modula_core::{engine, Model, ModelDesc, NestedSpec};

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Model::from_bytes(data) else {
        return;
    };
    let Ok(desc) = ModelDesc::from_model(&m) else {
        return;
    };
    let _ = desc.check_tensors(&m);
    let _ = desc.tensors().len();
    let _ = m.submodel(NestedSpec::default()).map(|s| s.weight_bytes());
    let _ = m
        .submodel(NestedSpec {
            depth: Some(1),
            ffn: Some(32),
            ..Default::default()
        })
        .map(|s| s.weight_bytes());
    let context = match desc.family {
        modula_core::arch::Family::SeqBoat => None,
        _ => Some(16),
    };
    let Ok(mut e) = engine::open(&m, context, None) else {
        return;
    };
    let vocab = e.vocab().max(1) as u32;
    let prompt: Vec<u32> = (0..5u32).map(|i| (i * 7 + 1) % vocab).collect();
    let _ = e.prefill(&prompt);
    for t in 0..3u32 {
        let _ = e.step(t % vocab);
    }
    let _ = e.prefill(&[vocab]); // outside the vocabulary: an error
    let _ = e.arena_bytes();
    let sizes = e.sizes();
    if let Some(&s) = sizes.first() {
        if e.set_size(s).is_ok() {
            let _ = e.step(0);
        }
    }
    e.reset();
    let _ = e.step(vocab - 1);
});
