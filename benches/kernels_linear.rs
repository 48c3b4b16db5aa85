//! Skinny products `y = x·Wᵀ` against (a) the machine's memory bandwidth, measured in the
//! same run with a copy and a triad over a buffer of the weight's size, (b) the scalar
//! reference, and (c) `matrixmultiply` alone. Throughput is reported in bytes of weight
//! streamed per second, so `GB/s(kernel) / GB/s(copy)` is the fraction of the bound.
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::{bf16, f16};
use modula_benches::data;
use modula_benches::matrixmultiply_xwt;
use modula_core::kernels::isa::available;
use modula_core::kernels::linear::{
    linear_mode, linear_with, matmul_rows_mode, widen_row_with, MatRef, WeightData, SKINNY_MAX_ROWS,
};
use modula_core::kernels::Isa;
use modula_quant::blocks::{BlockQ4K, BlockQ4_0, BlockQ6K, BlockQ8_0, QK_K};
use modula_quant::quantize::{
    quantize_row_q4_0, quantize_row_q4_k, quantize_row_q6_k, quantize_row_q8_0,
};
use std::hint::black_box;
use std::time::Duration;

fn bandwidth(c: &mut Criterion) {
    // Baselines over 64 MiB (twice the L3): bytes moved per second, all streams counted.
    // `read` is the bound for a weight-streaming kernel: a sum with 32 independent
    // accumulators (vectorisable, not latency-bound).
    let n = 4096 * 4096;
    let a = data(n, 1);
    let b = data(n, 2);
    let mut dst = vec![0f32; n];
    let mut g = c.benchmark_group("membw_64MiB");
    g.sample_size(20).measurement_time(Duration::from_secs(4));
    g.throughput(Throughput::Bytes((n * 4) as u64));
    g.bench_function("read", |bch| {
        bch.iter(|| {
            let mut acc = [0f32; 32];
            for ch in black_box(&a).chunks_exact(32) {
                for (s, v) in acc.iter_mut().zip(ch) {
                    *s += v;
                }
            }
            acc.iter().sum::<f32>()
        })
    });
    // The same read on every core (each thread sums its own contiguous part): the bound
    // for the multi-threaded decode GEMV.
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    g.bench_function(format!("read_{cores}threads"), |bch| {
        bch.iter(|| {
            let part = n.div_ceil(cores);
            std::thread::scope(|s| {
                let hs: Vec<_> = black_box(&a)
                    .chunks(part)
                    .map(|chunk| {
                        s.spawn(move || {
                            let mut acc = [0f32; 32];
                            for ch in chunk.chunks_exact(32) {
                                for (x, v) in acc.iter_mut().zip(ch) {
                                    *x += v;
                                }
                            }
                            acc.iter().sum::<f32>()
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap_or(0.0)).sum::<f32>()
            })
        })
    });
    g.throughput(Throughput::Bytes((2 * n * 4) as u64));
    g.bench_function("copy_read_plus_write", |bch| {
        bch.iter(|| dst.copy_from_slice(black_box(&a)))
    });
    g.throughput(Throughput::Bytes((3 * n * 4) as u64));
    g.bench_function("triad_2reads_1write", |bch| {
        bch.iter(|| {
            for ((d, x), y) in dst.iter_mut().zip(black_box(&a)).zip(&b) {
                *d = x + 0.5 * y;
            }
        })
    });
    g.finish();
}

/// `wf` quantised to Q8_0 and to Q4_0 blocks (its length a multiple of 32).
fn quantised(wf: &[f32]) -> (Vec<BlockQ8_0>, Vec<BlockQ4_0>) {
    let zero8 = BlockQ8_0 {
        d: f16::ZERO,
        qs: [0; 32],
    };
    let zero4 = BlockQ4_0 {
        d: f16::ZERO,
        qs: [0; 16],
    };
    let (mut q8, mut q4) = (vec![zero8; wf.len() / 32], vec![zero4; wf.len() / 32]);
    quantize_row_q8_0(wf, &mut q8).unwrap();
    quantize_row_q4_0(wf, &mut q4).unwrap();
    (q8, q4)
}

/// The AVX2 and AVX-512 row kernels side by side in one process (the dispatch picks one
/// per process, so only this group compares them within a run): every one of `n` rows of
/// `k / 32` blocks against one Q8_0 activation row, one thread. `avx2` is what the AVX2
/// dispatch runs (the kernels grouped by 8 blocks with the activation's octs), `avx512bw`
/// and `avx512vnni` run only where the CPU has them.
#[cfg(target_arch = "x86_64")]
fn row_kernels_x86(
    c: &mut Criterion,
    q8: &[BlockQ8_0],
    q4: &[BlockQ4_0],
    xq: &[BlockQ8_0],
    n: usize,
    y: &mut [f32],
) {
    use modula_quant::kernels::{avx2, avx512, q8_octs, Q8Oct};
    use std::is_x86_feature_detected as has;
    let nb = xq.len();
    let bw = has!("avx512f") && has!("avx512bw") && has!("avx512vl");
    let vnni = bw && has!("avx512vnni");
    let mut octs = vec![Q8Oct::default(); nb.div_ceil(8)];
    q8_octs(xq, &mut octs);
    type Q8Fn = unsafe fn(&[BlockQ8_0], &[BlockQ8_0]) -> f32;
    type Q4Fn = unsafe fn(&[BlockQ4_0], &[BlockQ8_0]) -> f32;
    let wide: [(&str, bool, Q8Fn, Q4Fn); 2] = [
        ("avx512bw", bw, avx512::dot_q8_0_q8_0, avx512::dot_q4_0_q8_0),
        (
            "avx512vnni",
            vnni,
            avx512::dot_q8_0_q8_0_vnni,
            avx512::dot_q4_0_q8_0_vnni,
        ),
    ];
    for (name, bytes) in [("q8_0", 34), ("q4_0", 18)] {
        let mut g = c.benchmark_group(format!("rows_{n}x{}_{name}_x86", nb * 32));
        g.throughput(Throughput::Bytes((n * nb * bytes) as u64));
        g.sample_size(15).measurement_time(Duration::from_secs(3));
        g.bench_function("avx2", |bch| {
            bch.iter(|| {
                for (j, yj) in y[..n].iter_mut().enumerate() {
                    let r = j * nb..(j + 1) * nb;
                    // SAFETY: the caller checked AVX2+FMA+F16C; nb blocks each, one oct
                    // per group of 8.
                    *yj = unsafe {
                        if name == "q8_0" {
                            avx2::dot_q8_0_q8_0_octs(&q8[r], black_box(xq), &octs)
                        } else {
                            avx2::dot_q4_0_q8_0_octs(&q4[r], black_box(xq), &octs)
                        }
                    };
                }
            })
        });
        for &(kname, _, f8, f4) in wide.iter().filter(|k| k.1) {
            g.bench_function(kname, |bch| {
                bch.iter(|| {
                    for (j, yj) in y[..n].iter_mut().enumerate() {
                        let r = j * nb..(j + 1) * nb;
                        // SAFETY: the features this kernel needs detected above; nb blocks.
                        *yj = unsafe {
                            if name == "q8_0" {
                                f8(&q8[r], black_box(xq))
                            } else {
                                f4(&q4[r], black_box(xq))
                            }
                        };
                    }
                })
            });
        }
        g.finish();
    }
}

/// The FFN down product of one decode step (4096 hidden units -> 1024 outputs, one
/// activation row) in both orientations of the same weights: `linear` over the PyTorch
/// layout (1024 rows of 4096, a dot product per output) and `matmul_rows` over the
/// transposed layout that nested FFN widths are stored in (4096 rows of 1024,
/// `y += x[f]·W[f,:]`, what the engine runs for `ffn_down_t`).
fn decode_down(c: &mut Criterion) {
    let (d, h) = (1024, 4096);
    let wf = data(d * h, 7);
    let x = data(h, 8);
    let mut y = vec![0f32; d];
    // the transposed copy: wt[f][j] = w[j][f]
    let mut wt = vec![0f32; d * h];
    for j in 0..d {
        for f in 0..h {
            wt[f * d + j] = wf[j * h + f];
        }
    }
    let (q8, q4) = quantised(&wf);
    let (q8t, q4t) = quantised(&wt);
    for (name, wd, wdt, bytes) in [
        ("f32", WeightData::F32(&wf), WeightData::F32(&wt), d * h * 4),
        (
            "q8_0",
            WeightData::Q8_0(&q8),
            WeightData::Q8_0(&q8t),
            d * h / 32 * 34,
        ),
        (
            "q4_0",
            WeightData::Q4_0(&q4),
            WeightData::Q4_0(&q4t),
            d * h / 32 * 18,
        ),
    ] {
        let w = MatRef::new(wd, d, h, h).unwrap();
        let wt = MatRef::new(wdt, h, d, d).unwrap();
        let mut g = c.benchmark_group(format!("decode_down_1024x4096_{name}"));
        g.throughput(Throughput::Bytes(bytes as u64));
        g.sample_size(15).measurement_time(Duration::from_secs(3));
        for isa in available() {
            g.bench_function(BenchmarkId::new("linear", isa.name()), |bch| {
                bch.iter(|| linear_with(isa, black_box(&x), h, 1, &w, None, &mut y, d).unwrap())
            });
            // the default (integer tiles for Q4_0) and f32 activations
            for (id, qact) in [("rows_t", true), ("rows_t_f32act", false)] {
                if !qact && name == "f32" {
                    continue;
                }
                g.bench_function(BenchmarkId::new(id, isa.name()), |bch| {
                    bch.iter(|| {
                        matmul_rows_mode(isa, qact, black_box(&x), h, 1, &wt, &mut y, d, false)
                            .unwrap()
                    })
                });
            }
        }
        g.finish();
    }
}

fn gemv(c: &mut Criterion) {
    let (n, k) = (4096, 4096);
    let wf = data(n * k, 3);
    let wh: Vec<f16> = wf.iter().map(|&v| f16::from_f32(v)).collect();
    let wb: Vec<bf16> = wf.iter().map(|&v| bf16::from_f32(v)).collect();
    let x = data(SKINNY_MAX_ROWS * k, 4);
    let mut y = vec![0f32; 256 * n];
    let (q8, q4) = quantised(&wf);
    let mut q4k: Vec<BlockQ4K> = bytemuck::zeroed_vec(n * k / QK_K);
    let mut q6k: Vec<BlockQ6K> = bytemuck::zeroed_vec(n * k / QK_K);
    quantize_row_q4_k(&wf, &mut q4k).unwrap();
    quantize_row_q6_k(&wf, &mut q6k).unwrap();
    // bytes of weight data streamed per product (blocks: 34 and 18 bytes per 32 weights,
    // 144 and 210 per 256)
    for (name, wd, bytes) in [
        ("f32", WeightData::F32(&wf), n * k * 4),
        ("f16", WeightData::F16(&wh), n * k * 2),
        ("bf16", WeightData::BF16(&wb), n * k * 2),
        ("q8_0", WeightData::Q8_0(&q8), n * k / 32 * 34),
        ("q4_0", WeightData::Q4_0(&q4), n * k / 32 * 18),
        ("q4_k", WeightData::Q4K(&q4k), n * k / QK_K * 144),
        ("q6_k", WeightData::Q6K(&q6k), n * k / QK_K * 210),
    ] {
        let w = MatRef::new(wd, n, k, k).unwrap();
        let mut g = c.benchmark_group(format!("gemv_4096x4096_{name}"));
        g.throughput(Throughput::Bytes(bytes as u64));
        g.sample_size(15).measurement_time(Duration::from_secs(4));
        for isa in available() {
            // the default: Q8_0 / Q8_K activations for the quantised types
            g.bench_function(BenchmarkId::new("m1", isa.name()), |bch| {
                bch.iter(|| {
                    linear_mode(isa, true, black_box(&x), k, 1, &w, None, &mut y, n).unwrap()
                })
            });
            if w.data().is_quantized() || w.data().is_kquant() {
                g.bench_function(BenchmarkId::new("m1_f32_activations", isa.name()), |bch| {
                    bch.iter(|| {
                        linear_mode(isa, false, black_box(&x), k, 1, &w, None, &mut y, n).unwrap()
                    })
                });
            }
        }
        g.finish();
    }
    // Q4_0 decode over a matrix larger than the L3 (16384 x 4096: 36 MiB of blocks against
    // a 32 MiB L3), so it streams from memory: its bytes per second against the
    // `membw_64MiB` read baselines give the fraction of the bandwidth bound.
    {
        let (nb_rows, k) = (16384, 4096);
        let mut big = vec![
            BlockQ4_0 {
                d: f16::ZERO,
                qs: [0; 16]
            };
            nb_rows * k / 32
        ];
        for (r, rows) in big.chunks_mut(k / 32 * 1024).enumerate() {
            quantize_row_q4_0(&data(1024 * k, 40 + r as u32), rows).unwrap();
        }
        let w = MatRef::new(WeightData::Q4_0(&big), nb_rows, k, k).unwrap();
        let mut yb = vec![0f32; nb_rows];
        let mut g = c.benchmark_group("gemv_16384x4096_q4_0");
        g.throughput(Throughput::Bytes((nb_rows * k / 32 * 18) as u64));
        g.sample_size(15).measurement_time(Duration::from_secs(4));
        for isa in available() {
            g.bench_function(BenchmarkId::new("m1", isa.name()), |bch| {
                bch.iter(|| {
                    linear_with(isa, black_box(&x), k, 1, &w, None, &mut yb, nb_rows).unwrap()
                })
            });
        }
        g.finish();
    }
    // The Q4_0 x Q8_0 row kernel: one block at a time (signed nibbles, sign trick) against
    // groups of 8 blocks reduced with hadd (unsigned nibbles, the activation's sums and
    // scales per group precomputed: what the skinny path runs), one activation row against
    // all 4096 rows, one thread.
    #[cfg(target_arch = "x86_64")]
    if modula_core::kernels::isa::Isa::Avx2.is_supported() {
        use modula_quant::kernels::{avx2, q8_octs, Q8Oct};
        let nb = k / 32;
        let mut xq = vec![
            BlockQ8_0 {
                d: f16::ZERO,
                qs: [0; 32]
            };
            nb
        ];
        quantize_row_q8_0(&x[..k], &mut xq).unwrap();
        let mut g = c.benchmark_group("q4_0_rows_4096x4096");
        g.throughput(Throughput::Bytes((n * k / 32 * 18) as u64));
        g.sample_size(15).measurement_time(Duration::from_secs(4));
        g.bench_function("signed", |bch| {
            bch.iter(|| {
                for (j, row) in q4.chunks_exact(nb).enumerate() {
                    // SAFETY: AVX2+FMA+F16C checked above; nb blocks each.
                    y[j] = unsafe { avx2::dot_q4_0_q8_0(row, black_box(&xq)) };
                }
            })
        });
        g.bench_function("grouped_by_8", |bch| {
            bch.iter(|| {
                let mut octs = vec![Q8Oct::default(); nb.div_ceil(8)];
                q8_octs(black_box(&xq), &mut octs);
                for (j, row) in q4.chunks_exact(nb).enumerate() {
                    // SAFETY: as above.
                    y[j] = unsafe { avx2::dot_q4_0_q8_0_octs(row, &xq, &octs) };
                }
            })
        });
        g.finish();
        row_kernels_x86(c, &q8, &q4, &xq, n, &mut y);
    }
    // matrixmultiply alone at one row (what one gets without our skinny kernel).
    let mut g = c.benchmark_group("gemv_4096x4096_f32");
    g.throughput(Throughput::Bytes((n * k * 4) as u64));
    g.sample_size(15).measurement_time(Duration::from_secs(4));
    g.bench_function(BenchmarkId::new("m1", "matrixmultiply"), |bch| {
        bch.iter(|| matrixmultiply_xwt(black_box(&x), 1, k, &wf, n, &mut y))
    });
    g.finish();
}

fn multirow(c: &mut Criterion) {
    // Small batches: our kernel up to 16 rows vs matrixmultiply at the same shape.
    let (n, k) = (1024, 1024);
    let wf = data(n * k, 5);
    let x = data(256 * k, 6);
    let mut y = vec![0f32; 256 * n];
    let w = MatRef::f32(&wf, n, k).unwrap();
    let mut g = c.benchmark_group("linear_1024x1024_f32");
    g.sample_size(15).measurement_time(Duration::from_secs(3));
    for m in [1usize, 4, 16, 64, 256] {
        g.throughput(Throughput::Elements((2 * m * n * k) as u64)); // FLOPs
        let isa = available().last().unwrap_or(Isa::Scalar);
        if m <= SKINNY_MAX_ROWS {
            g.bench_function(BenchmarkId::new("modula_linear", m), |bch| {
                bch.iter(|| linear_with(isa, black_box(&x), k, m, &w, None, &mut y, n).unwrap())
            });
        } else {
            // the skinny kernel forced past its threshold, to justify the threshold
            g.bench_function(BenchmarkId::new("modula_skinny_forced", m), |bch| {
                bch.iter(|| {
                    for r in (0..m).step_by(SKINNY_MAX_ROWS) {
                        linear_with(
                            isa,
                            black_box(&x[r * k..]),
                            k,
                            SKINNY_MAX_ROWS,
                            &w,
                            None,
                            &mut y[r * n..],
                            n,
                        )
                        .unwrap()
                    }
                })
            });
        }
        g.bench_function(BenchmarkId::new("matrixmultiply", m), |bch| {
            bch.iter(|| matrixmultiply_xwt(black_box(&x), m, k, &wf, n, &mut y))
        });
    }
    g.finish();
}

fn training_products(c: &mut Criterion) {
    // The training-size products of the issue-4 reference model (2048 positions, d 256,
    // QKV 768): forward `y = x·Wᵀ` and weight gradient `dW += dYᵀ·X`, on 1 thread and on
    // all threads (row blocks on the kernel pool), against single-threaded matrixmultiply.
    use modula_core::kernels::linear::{linear, matmul_tn_acc};
    use modula_core::kernels::par;
    let (m, n, k) = (2048, 768, 256);
    let x = data(m * k, 7);
    let wf = data(n * k, 8);
    let dy = data(m * n, 9);
    let mut y = vec![0f32; m * n];
    let mut dw = vec![0f32; n * k];
    let w = MatRef::f32(&wf, n, k).unwrap();
    let mut g = c.benchmark_group("train_2048x768x256");
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements((2 * m * n * k) as u64)); // FLOPs
    let all = std::thread::available_parallelism().map_or(1, |n| n.get());
    for t in [1, all] {
        par::set_threads(t);
        g.bench_function(BenchmarkId::new("linear_threads", t), |b| {
            b.iter(|| linear(black_box(&x), k, m, &w, None, &mut y, n).unwrap())
        });
        g.bench_function(BenchmarkId::new("matmul_tn_acc_threads", t), |b| {
            b.iter(|| matmul_tn_acc(black_box(&dy), &x, m, n, k, &mut dw).unwrap())
        });
    }
    par::set_threads(0);
    g.bench_function("matrixmultiply_1thread", |b| {
        b.iter(|| matrixmultiply_xwt(black_box(&x), m, k, &wf, n, &mut y))
    });
    g.finish();
}

/// Dequantising weight rows to f32 (`widen_row_with`: embedding lookups and the weight
/// panels of many-row products), 1024 rows of 4096, per SIMD level: all levels give the
/// same bits (tested), this measures their speed.
fn dequantise(c: &mut Criterion) {
    let (n, k) = (1024, 4096);
    let wf = data(n * k, 7);
    let (q8, q4) = quantised(&wf);
    let mut out = vec![0f32; k];
    for (name, wd) in [
        ("q8_0", WeightData::Q8_0(&q8)),
        ("q4_0", WeightData::Q4_0(&q4)),
    ] {
        let w = MatRef::new(wd, n, k, k).unwrap();
        let mut g = c.benchmark_group(format!("dequantise_1024x4096_{name}"));
        g.throughput(Throughput::Elements((n * k) as u64));
        g.sample_size(20).measurement_time(Duration::from_secs(3));
        for isa in available() {
            g.bench_function(BenchmarkId::new("rows", isa.name()), |bch| {
                bch.iter(|| {
                    for j in 0..n {
                        widen_row_with(isa, black_box(&w), j, &mut out);
                    }
                    black_box(&out);
                })
            });
        }
        g.finish();
    }
}

/// Decode products of small models (d 128–512, cache-resident): where the per-product
/// work — quantising the activation row to Q8_0, its octs, dispatch — weighs against the
/// rows' work; per SIMD level, one activation row.
fn small_gemv(c: &mut Criterion) {
    for d in [128, 256, 512] {
        let (n, k) = (d, d);
        let wf = data(n * k, 11);
        let (q8, q4) = quantised(&wf);
        let x = data(k, 12);
        let mut y = vec![0f32; n];
        for (name, wd) in [
            ("f32", WeightData::F32(&wf)),
            ("q8_0", WeightData::Q8_0(&q8)),
            ("q4_0", WeightData::Q4_0(&q4)),
        ] {
            let w = MatRef::new(wd, n, k, k).unwrap();
            let mut g = c.benchmark_group(format!("gemv_{d}x{d}_{name}"));
            g.throughput(Throughput::Elements((n * k) as u64));
            g.sample_size(20).measurement_time(Duration::from_secs(2));
            for isa in available() {
                g.bench_function(BenchmarkId::new("m1", isa.name()), |bch| {
                    bch.iter(|| linear_with(isa, black_box(&x), k, 1, &w, None, &mut y, n).unwrap())
                });
            }
            g.finish();
        }
    }
    // the activation quantiser alone: the scalar code against the SIMD one (same bits,
    // tested in modula-quant)
    let k = 4096;
    let x = data(k, 13);
    let mut out = vec![
        BlockQ8_0 {
            d: f16::ZERO,
            qs: [0; 32]
        };
        k / 32
    ];
    let mut g = c.benchmark_group("quantise_activation_4096");
    g.throughput(Throughput::Elements(k as u64));
    g.sample_size(20).measurement_time(Duration::from_secs(2));
    g.bench_function("scalar", |bch| {
        bch.iter(|| quantize_row_q8_0(black_box(&x), &mut out).unwrap())
    });
    #[cfg(target_arch = "x86_64")]
    if Isa::Avx2.is_supported() {
        g.bench_function("avx2", |bch| {
            // SAFETY: AVX2 (with FMA, F16C) checked above; x holds 32 values per block.
            bch.iter(|| unsafe {
                modula_quant::kernels::avx2::quantize_q8_0(black_box(&x), &mut out)
            })
        });
    }
    #[cfg(target_arch = "aarch64")]
    if Isa::Neon.is_supported() {
        g.bench_function("neon", |bch| {
            // SAFETY: NEON checked above; x holds 32 values per block.
            bch.iter(|| unsafe {
                modula_quant::kernels::neon::quantize_q8_0(black_box(&x), &mut out)
            })
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    bandwidth,
    gemv,
    dequantise,
    small_gemv,
    decode_down,
    multirow,
    training_products
);
criterion_main!(benches);
