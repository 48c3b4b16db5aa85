//! SeqBoat inference (issue #6), every figure against a baseline measured in the same run:
//! * one-layer prefill time vs sequence length T = 1k…64k for SeqBoat (learned gate,
//!   window 64 in activated tokens), the same layer with every token activated and a
//!   window of 64 (local attention, MEGA-chunk analogue), and the same layer with every
//!   token activated and a window covering the whole sequence — exact full causal softmax
//!   attention of the same width (T ≤ 16k: it is quadratic);
//! * streaming decode: the time of one token step after 1k vs after 64k tokens of context
//!   (constant state, so it should not grow);
//! * the EMA scan (d = 256, N = 16, 16k tokens) against a memory copy moving the bytes a
//!   memory-bound scan would move per token — the state read and written once, the input
//!   read, the output written: `(2·N·d + 2·d)·4` bytes. Copy time / scan time is the
//!   fraction of the memory-bandwidth bound the scan reaches.
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use modula_core::engine::SbEngine;
use modula_core::kernels::ema::{ema_scan, EmaCoefs};
use modula_core::Model;
use modula_train::model::seqboat::{SbAttn, SbConfig, SbGate, SbModel};
use std::hint::black_box;
use std::time::Duration;

const D: usize = 64;

fn file(gate: SbGate, window: usize) -> Vec<u8> {
    let cfg = SbConfig {
        vocab: 16,
        classes: 0,
        d: D,
        layers: 1,
        ndim: 16,
        z: 32,
        e: 2 * D,
        window,
        causal: true,
        attn: SbAttn::Softmax,
        prenorm: true,
        temp_scale: 1.0,
        max_pos: 2048,
        gate,
        pad: None,
        nested_depths: 0,
    };
    let m = SbModel::new(cfg, 7).unwrap();
    m.writer(1 << 17, "bench").unwrap().to_bytes().unwrap()
}

fn tokens(t: usize) -> Vec<u32> {
    (0..t).map(|i| ((i * 7 + i / 5) % 16) as u32).collect()
}

fn prefill(c: &mut Criterion) {
    let mut g = c.benchmark_group("seqboat_layer_prefill_d64");
    g.sample_size(10).measurement_time(Duration::from_secs(6));
    let lens = [1024usize, 4096, 16384, 65536];
    let full_lens = [1024usize, 4096, 16384];
    for &t in &lens {
        let toks = tokens(t);
        g.throughput(Throughput::Elements(t as u64));
        let mut arms = vec![
            ("seqboat_w64", file(SbGate::Learned, 64)),
            ("local_w64", file(SbGate::AlwaysOn, 64)),
        ];
        if full_lens.contains(&t) {
            arms.push(("full_attention", file(SbGate::AlwaysOn, t)));
        }
        for (name, bytes) in arms {
            let model = Model::from_bytes(bytes).unwrap();
            let mut e = SbEngine::new(&model).unwrap();
            e.prefill(&toks).unwrap();
            let (act, seen) = e.activations();
            eprintln!(
                "{name} T={t}: activation ratio {:.3}",
                act[0] as f64 / seen as f64
            );
            g.bench_function(BenchmarkId::new(name, t), |b| {
                b.iter(|| {
                    e.reset();
                    black_box(e.prefill(black_box(&toks)).unwrap()[0])
                })
            });
        }
    }
    g.finish();
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("seqboat_decode_step_d64");
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    let bytes = file(SbGate::Learned, 64);
    let model = Model::from_bytes(bytes).unwrap();
    for ctx in [1024usize, 65536] {
        let mut e = SbEngine::new(&model).unwrap();
        e.prefill(&tokens(ctx)).unwrap();
        eprintln!("decode after {ctx}: state {} bytes", e.state_bytes());
        let mut i = 0u32;
        g.bench_function(BenchmarkId::new("after_context", ctx), |b| {
            b.iter(|| {
                i = (i + 5) % 16;
                black_box(e.step(i).unwrap()[0])
            })
        });
    }
    g.finish();
}

fn ema_vs_bandwidth(c: &mut Criterion) {
    let (d, n, t) = (256usize, 16usize, 16384usize);
    let raw = |seed: u32| modula_benches::data(d * n, seed);
    let co = EmaCoefs::from_raw(d, n, &raw(1), &raw(2), &raw(3), &raw(4)).unwrap();
    let x = modula_benches::data(t * d, 5);
    let mut y = vec![0f32; t * d];
    let mut state = vec![0f32; n * d];
    let bytes = t * (2 * n * d + 2 * d) * 4;
    let src = vec![1f32; bytes / 8];
    let mut dst = vec![0f32; bytes / 8];
    let mut g = c.benchmark_group("ema_scan_vs_memory_bound_d256_n16_t16k");
    g.sample_size(10).measurement_time(Duration::from_secs(4));
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("ema_scan", |b| {
        b.iter(|| {
            state.fill(0.0);
            ema_scan(&co, black_box(&x), t, &mut state, &mut y).unwrap();
        })
    });
    g.bench_function("memcpy_same_bytes", |b| {
        b.iter(|| dst.copy_from_slice(black_box(&src)))
    });
    g.finish();
}

criterion_group!(benches, prefill, decode, ema_vs_bandwidth);
criterion_main!(benches);
