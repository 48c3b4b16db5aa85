//! Layer-level kernels against their baselines, measured in the same run:
//! * MoE FFN (8 experts, top-2, d = 256, hidden 256 each, 2048 tokens) vs a dense FFN with
//!   the same active FLOPs (hidden 512) — target ≤ 1.2× the dense time;
//! * EMA scan (d = 256, N = 16) time per token vs sequence length (should be flat);
//! * GAU local attention (window 64) vs full causal softmax attention, T = 1k, 4k, 16k;
//! * elementwise SIMD vs scalar.
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use modula_benches::data;
use modula_core::kernels::attention::{causal_attention_with, gau_local_with, GauFn};
use modula_core::kernels::elementwise::{gelu_tanh_with, layer_norm_with, silu_with, softmax_with};
use modula_core::kernels::ema::{ema_scan_with, EmaCoefs};
use modula_core::kernels::expert_ffn::{dense_ffn, moe_ffn, Activation, Expert, FfnScratch};
use modula_core::kernels::isa::{available, best};
use modula_core::kernels::linear::MatRef;
use modula_core::kernels::routing::route;
use std::hint::black_box;
use std::time::Duration;

fn moe(c: &mut Criterion) {
    let (n, d, h, ne, k) = (2048, 256, 256, 8, 2);
    let x = data(n * d, 1);
    let ups: Vec<Vec<f32>> = (0..ne).map(|e| data(h * d, 10 + e as u32)).collect();
    let downs: Vec<Vec<f32>> = (0..ne).map(|e| data(h * d, 20 + e as u32)).collect();
    let experts: Vec<Expert<'_>> = (0..ne)
        .map(|e| {
            Expert::new(
                MatRef::f32(&ups[e], h, d).unwrap(),
                MatRef::f32(&downs[e], h, d).unwrap(),
            )
            .unwrap()
        })
        .collect();
    let r = route(data(n * ne, 3), n, ne, k, false).unwrap();
    let (du, dd) = (data(2 * h * d, 30), data(2 * h * d, 31));
    let dense = Expert::new(
        MatRef::f32(&du, 2 * h, d).unwrap(),
        MatRef::f32(&dd, 2 * h, d).unwrap(),
    )
    .unwrap();
    let mut y = vec![0f32; n * d];
    let mut s = FfnScratch::default();
    let mut g = c.benchmark_group("ffn_2048tok_d256");
    g.throughput(Throughput::Elements(n as u64));
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    g.bench_function("dense_hidden512", |b| {
        b.iter(|| {
            dense_ffn(
                black_box(&x),
                n,
                &dense,
                Activation::GeluTanh,
                &mut y,
                &mut s,
            )
            .unwrap()
        })
    });
    g.bench_function("moe_8x256_top2", |b| {
        b.iter(|| {
            moe_ffn(
                black_box(&x),
                n,
                &experts,
                &r.experts,
                &r.gates,
                Activation::GeluTanh,
                &mut y,
                &mut s,
            )
            .unwrap()
        })
    });
    g.finish();
}

fn ema(c: &mut Criterion) {
    let (d, nn) = (256, 16);
    let r = |s| data(d * nn, s);
    let co = EmaCoefs::from_raw(d, nn, &r(1), &r(2), &r(3), &r(4)).unwrap();
    let mut g = c.benchmark_group("ema_scan_d256_N16");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    for l in [1024usize, 4096, 16384, 65536] {
        let x = data(l * d, 5);
        let mut y = vec![0f32; l * d];
        let mut st = vec![0f32; co.state_len()];
        g.throughput(Throughput::Elements(l as u64)); // tokens
        for isa in available() {
            g.bench_function(BenchmarkId::new(isa.name(), l), |b| {
                b.iter(|| ema_scan_with(isa, &co, black_box(&x), l, &mut st, &mut y).unwrap())
            });
        }
    }
    g.finish();
}

fn attention(c: &mut Criterion) {
    let (dh, w) = (64usize, 64usize);
    let isa = best();
    let mut g = c.benchmark_group("attention_dh64");
    g.sample_size(10).measurement_time(Duration::from_secs(4));
    for t in [1024usize, 4096, 16384] {
        let (q, k, v) = (data(t * dh, 1), data(t * dh, 2), data(t * dh, 3));
        let pos: Vec<u32> = (0..t as u32).collect();
        let mut out = vec![0f32; t * dh];
        let mut scratch = vec![0f32; t.max(2 * w + 1)];
        g.throughput(Throughput::Elements(t as u64));
        g.bench_function(BenchmarkId::new("gau_local_w64", t), |b| {
            b.iter(|| {
                gau_local_with(
                    isa,
                    black_box(&q),
                    &k,
                    &v,
                    &pos,
                    dh,
                    dh,
                    w,
                    true,
                    GauFn::Softmax { scale: 0.125 },
                    None,
                    &mut out,
                    &mut scratch,
                )
                .unwrap()
            })
        });
        g.bench_function(BenchmarkId::new("full_causal_softmax", t), |b| {
            b.iter(|| {
                causal_attention_with(
                    isa,
                    black_box(&q),
                    t,
                    &k,
                    &v,
                    t,
                    dh,
                    0.125,
                    &mut out,
                    &mut scratch,
                )
                .unwrap()
            })
        });
    }
    g.finish();
}

fn elementwise(c: &mut Criterion) {
    let n = 4096;
    let x = data(n, 7);
    let mut buf = x.clone();
    let mut out = vec![0f32; n];
    let mut g = c.benchmark_group("elementwise_4096");
    g.throughput(Throughput::Elements(n as u64));
    g.sample_size(30).measurement_time(Duration::from_secs(2));
    for isa in available() {
        g.bench_function(BenchmarkId::new("silu", isa.name()), |b| {
            b.iter(|| {
                buf.copy_from_slice(&x);
                silu_with(isa, black_box(&mut buf))
            })
        });
        g.bench_function(BenchmarkId::new("gelu_tanh", isa.name()), |b| {
            b.iter(|| {
                buf.copy_from_slice(&x);
                gelu_tanh_with(isa, black_box(&mut buf))
            })
        });
        g.bench_function(BenchmarkId::new("softmax", isa.name()), |b| {
            b.iter(|| {
                buf.copy_from_slice(&x);
                softmax_with(isa, black_box(&mut buf))
            })
        });
        g.bench_function(BenchmarkId::new("layer_norm", isa.name()), |b| {
            b.iter(|| layer_norm_with(isa, black_box(&x), None, None, 1e-5, &mut out).unwrap())
        });
    }
    g.finish();
}

fn emoe(c: &mut Criterion) {
    // EMoE (issue #8): a dense FFN (d 512, hidden 2048, bias) split into 16 contiguous
    // experts, top-4 by avg-k gates, run sparsely (routing included) vs the dense FFN.
    use modula_core::kernels::expert_ffn::contiguous_experts;
    use modula_core::kernels::linear::linear;
    use modula_core::kernels::routing::top_k;
    let (d, f, ne, k) = (512, 2048, 16, 4);
    let (up, down, b1) = (data(f * d, 41), data(f * d, 42), data(f, 43));
    let upm = MatRef::f32(&up, f, d).unwrap();
    let downm = MatRef::f32(&down, f, d).unwrap();
    let dense = Expert::new(upm, downm).unwrap().with_bias(&b1).unwrap();
    let experts = contiguous_experts(upm, Some(&b1), downm, ne).unwrap();
    let m = f / ne;
    let gates: Vec<f32> = (0..ne)
        .flat_map(|e| {
            let mut g = vec![0f32; d];
            for r in 0..m {
                for (gv, v) in g.iter_mut().zip(&up[(e * m + r) * d..(e * m + r + 1) * d]) {
                    *gv += v / m as f32;
                }
            }
            g
        })
        .collect();
    let gm = MatRef::f32(&gates, ne, d).unwrap();
    for n in [1usize, 64] {
        let x = data(n * d, 44);
        let mut y = vec![0f32; n * d];
        let mut s = FfnScratch::default();
        let mut scores = vec![0f32; n * ne];
        let mut chosen = vec![0u32; n * k];
        let ones = vec![1f32; n * k];
        let mut val = vec![0f32; k];
        let mut g = c.benchmark_group(format!("emoe_ffn_d512_h2048_{n}tok"));
        g.throughput(Throughput::Elements(n as u64));
        g.sample_size(30).measurement_time(Duration::from_secs(3));
        g.bench_function("dense", |b| {
            b.iter(|| {
                dense_ffn(black_box(&x), n, &dense, Activation::Gelu, &mut y, &mut s).unwrap()
            })
        });
        g.bench_function("emoe_16x128_top4", |b| {
            b.iter(|| {
                linear(black_box(&x), d, n, &gm, None, &mut scores, ne).unwrap();
                for t in 0..n {
                    top_k(
                        &scores[t * ne..(t + 1) * ne],
                        k,
                        &mut chosen[t * k..(t + 1) * k],
                        &mut val,
                    )
                    .unwrap();
                }
                moe_ffn(
                    &x,
                    n,
                    &experts,
                    &chosen,
                    &ones,
                    Activation::Gelu,
                    &mut y,
                    &mut s,
                )
                .unwrap()
            })
        });
        g.finish();
    }
}

criterion_group!(benches, emoe, moe, ema, attention, elementwise);
criterion_main!(benches);
