//! Q4_K and Q6_K (the K-quants of a Q4_K_M file): the block formats against gguf-py's
//! dequantisers (`tests/reference/kquant_reference.py`), Modula's round-to-nearest
//! quantisers' error, the products over K-quant weights against the same weights
//! dequantised to f32 on ragged shapes (skinny and many-row `linear`, `matmul_rows`), and a
//! whole Llama-layout model quantised to each type against its dequantised copy.
#![allow(clippy::unwrap_used)]

use modula_core::kernels::linear::{linear, linear_scalar, matmul_rows, MatRef, WeightData};
use modula_core::rng::SplitMix64;
use modula_core::{engine, DType, MetaValue, Model};
use modula_quant::quantize::{
    dequantize_row_q4_k, dequantize_row_q6_k, quantize_row_q4_k, quantize_row_q6_k,
};
use modula_quant::{BlockQ4K, BlockQ6K, QK_K};
use std::path::Path;

fn fixture(name: &str, size: usize) -> (Vec<u8>, Vec<f32>) {
    let b = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("fixtures/kquants/{name}.bin")),
    )
    .unwrap();
    let n = u32::from_le_bytes(b[..4].try_into().unwrap()) as usize;
    let raw = b[4..4 + n * size].to_vec();
    let vals = b[4 + n * size..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect::<Vec<_>>();
    assert_eq!(vals.len(), n * QK_K);
    (raw, vals)
}

fn close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= tol * (1.0 + b.abs()),
            "{what}: element {i}: {a} vs {b}"
        );
    }
}

#[test]
fn blocks_dequantise_as_gguf_py_does() {
    let (raw, want) = fixture("q4_k", 144);
    let blocks: Vec<BlockQ4K> = bytemuck::pod_collect_to_vec(&raw);
    let mut got = vec![0f32; want.len()];
    dequantize_row_q4_k(&blocks, &mut got);
    close(&got, &want, 1e-6, "q4_k");
    let (raw, want) = fixture("q6_k", 210);
    let blocks: Vec<BlockQ6K> = bytemuck::pod_collect_to_vec(&raw);
    let mut got = vec![0f32; want.len()];
    dequantize_row_q6_k(&blocks, &mut got);
    close(&got, &want, 1e-6, "q6_k");
}

fn gauss(rng: &mut SplitMix64, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            // a sum of four uniforms: bell-shaped, with tails
            (0..4)
                .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
                .sum::<f32>()
        })
        .collect()
}

/// Quantised rows of `n` blocks as raw bytes of `t`.
fn quantise(t: DType, v: &[f32]) -> Vec<u8> {
    match t {
        DType::Q4K => {
            let mut b: Vec<BlockQ4K> = bytemuck::zeroed_vec(v.len() / QK_K);
            quantize_row_q4_k(v, &mut b).unwrap();
            bytemuck::cast_slice(&b).to_vec()
        }
        _ => {
            let mut b: Vec<BlockQ6K> = bytemuck::zeroed_vec(v.len() / QK_K);
            quantize_row_q6_k(v, &mut b).unwrap();
            bytemuck::cast_slice(&b).to_vec()
        }
    }
}

fn dequantise(t: DType, raw: &[u8]) -> Vec<f32> {
    let mut out = vec![0f32; raw.len() / t.block_bytes() * QK_K];
    match t {
        DType::Q4K => {
            dequantize_row_q4_k(&bytemuck::pod_collect_to_vec::<u8, BlockQ4K>(raw), &mut out)
        }
        _ => dequantize_row_q6_k(&bytemuck::pod_collect_to_vec::<u8, BlockQ6K>(raw), &mut out),
    }
    out
}

#[test]
fn quantisers_round_to_within_their_bits_and_refuse_bad_rows() {
    let mut rng = SplitMix64(5);
    let v = gauss(&mut rng, 64 * QK_K);
    for (t, worst) in [(DType::Q4K, 0.12), (DType::Q6K, 0.03)] {
        let back = dequantise(t, &quantise(t, &v));
        let (mut se, mut ss) = (0f64, 0f64);
        for (a, b) in v.iter().zip(&back) {
            se += f64::from(a - b).powi(2);
            ss += f64::from(*a).powi(2);
        }
        let rel = (se / ss).sqrt();
        println!("{t}: relative RMSE {rel:.4}");
        assert!(rel < worst, "{t}: relative RMSE {rel}");
    }
    let mut b: Vec<BlockQ4K> = bytemuck::zeroed_vec(1);
    assert!(quantize_row_q4_k(&v[..100], &mut b).is_err());
    let mut bad = v[..QK_K].to_vec();
    bad[3] = f32::NAN;
    assert!(quantize_row_q4_k(&bad, &mut b).is_err());
    let mut b6: Vec<BlockQ6K> = bytemuck::zeroed_vec(1);
    assert!(quantize_row_q6_k(&bad, &mut b6).is_err());
    // zeros stay zeros
    let z = dequantise(DType::Q4K, &quantise(DType::Q4K, &[0.0; QK_K]));
    assert!(z.iter().all(|&x| x == 0.0));
}

fn kmat<'a>(t: DType, raw: &'a [u8], rows: usize, cols: usize) -> MatRef<'a> {
    let data = match t {
        DType::Q4K => WeightData::Q4K(bytemuck::cast_slice(raw)),
        _ => WeightData::Q6K(bytemuck::cast_slice(raw)),
    };
    MatRef::new(data, rows, cols, cols).unwrap()
}

#[test]
fn products_over_kquant_weights_equal_the_dequantised_weights() {
    let mut rng = SplitMix64(11);
    let mut cases = 0;
    for t in [DType::Q4K, DType::Q6K] {
        for &(n, k) in &[(1usize, 256usize), (7, 512), (33, 256), (5, 768)] {
            let v = gauss(&mut rng, n * k);
            // bytes aligned for the blocks' f16 fields
            let raw = quantise(t, &v);
            let raw: Vec<u16> = bytemuck::pod_collect_to_vec(&raw);
            let raw: &[u8] = bytemuck::cast_slice(&raw);
            let w = kmat(t, raw, n, k);
            let wf = dequantise(t, raw);
            let f = MatRef::f32(&wf, n, k).unwrap();
            for &m in &[1usize, 3, 16, 17, 40] {
                let x = gauss(&mut rng, m * k);
                let (mut a, mut b, mut c) =
                    (vec![0f32; m * n], vec![0f32; m * n], vec![0f32; m * n]);
                linear(&x, k, m, &w, None, &mut a, n).unwrap();
                linear(&x, k, m, &f, None, &mut b, n).unwrap();
                linear_scalar(&x, k, m, &w, &mut c, n);
                close(&a, &b, 1e-4, &format!("{t} linear {m}x{k} -> {n}"));
                close(&c, &b, 1e-4, &format!("{t} scalar {m}x{k} -> {n}"));
                // the transposed product: W as [n, k] = [in, out]
                let xt = gauss(&mut rng, m * n);
                let (mut p, mut q) = (vec![1f32; m * k], vec![1f32; m * k]);
                matmul_rows(&xt, n, m, &w, &mut p, k, true).unwrap();
                matmul_rows(&xt, n, m, &f, &mut q, k, true).unwrap();
                close(&p, &q, 1e-4, &format!("{t} matmul_rows {m}x{n} -> {k}"));
                cases += 1;
            }
            // a nested prefix and a row block stay whole super-blocks
            assert!(w.prefix(n, 128).is_err());
            assert!(w.prefix(n, 256).is_ok());
        }
    }
    assert_eq!(cases, 40);
}

/// A random Llama-layout model (d 256, 4 heads on 2 key/value heads, FFN 512, vocab 300).
fn llama_file() -> Vec<u8> {
    let (d, f, vocab, kv) = (256usize, 512usize, 300usize, 128usize);
    let mut rng = SplitMix64(3);
    let mut w = modula_core::gguf::GgufWriter::new();
    let set =
        |w: &mut modula_core::gguf::GgufWriter<'_>, k: &str, v: MetaValue| w.set(k, v).unwrap();
    set(
        &mut w,
        "general.architecture",
        MetaValue::String("llama".into()),
    );
    for (k, v) in [
        ("llama.embedding_length", d),
        ("llama.block_count", 1),
        ("llama.feed_forward_length", f),
        ("llama.attention.head_count", 4),
        ("llama.attention.head_count_kv", 2),
        ("llama.context_length", 64),
    ] {
        set(&mut w, k, MetaValue::U32(v as u32));
    }
    set(
        &mut w,
        "llama.attention.layer_norm_rms_epsilon",
        MetaValue::F32(1e-5),
    );
    set(&mut w, "llama.rope.freq_base", MetaValue::F32(10000.0));
    let mut add = |name: &str, shape: &[usize], scale: f32| {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = gauss(&mut rng, n)
            .iter()
            .map(|x| x * scale + if shape.len() == 1 { 1.0 } else { 0.0 })
            .collect();
        w.add_tensor(name, DType::F32, shape, bytemuck::cast_slice(&v).to_vec())
            .unwrap();
    };
    add("token_embd.weight", &[vocab, d], 0.5);
    add("blk.0.attn_norm.weight", &[d], 0.1);
    add("blk.0.attn_q.weight", &[d, d], 0.1);
    add("blk.0.attn_k.weight", &[kv, d], 0.1);
    add("blk.0.attn_v.weight", &[kv, d], 0.1);
    add("blk.0.attn_output.weight", &[d, d], 0.1);
    add("blk.0.ffn_norm.weight", &[d], 0.1);
    add("blk.0.ffn_gate.weight", &[f, d], 0.1);
    add("blk.0.ffn_up.weight", &[f, d], 0.1);
    add("blk.0.ffn_down.weight", &[d, f], 0.1);
    add("output_norm.weight", &[d], 0.1);
    w.to_bytes().unwrap()
}

fn logits(m: &Model<Vec<u8>>, tokens: &[u32]) -> (Vec<f32>, Vec<f32>) {
    let mut e = engine::open(m, Some(32), None).unwrap();
    let mut last = Vec::new();
    for &t in tokens {
        last = e.step(t).unwrap().to_vec();
    }
    e.reset();
    let pre = e.prefill(tokens).unwrap().to_vec();
    (last, pre)
}

fn rel(a: &[f32], b: &[f32]) -> f32 {
    let s = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / s
}

#[test]
fn a_kquant_llama_model_runs_as_its_dequantised_copy() {
    let f32_model = Model::from_bytes(llama_file()).unwrap();
    let tokens = [3u32, 250, 17, 99, 4, 4, 180, 42];
    let (full, _) = logits(&f32_model, &tokens);
    for t in [DType::Q4K, DType::Q6K] {
        let (q, reports) = modula_core::quantize::quantize_model(&f32_model, t).unwrap();
        assert!(
            reports.iter().filter(|r| r.kept.is_none()).count() >= 7,
            "{t}"
        );
        let qm = Model::from_bytes(q.to_bytes().unwrap()).unwrap();
        assert!(qm.tensors().any(|x| x.dtype() == t));
        // the same model with every tensor dequantised to f32
        let mut w = modula_core::gguf::GgufWriter::new();
        for (k, v) in qm.metadata() {
            if k.starts_with("general.alignment") {
                continue;
            }
            w.set(k, v.to_owned_value()).unwrap();
        }
        for x in qm.tensors() {
            let v = x.to_f32_vec().unwrap();
            w.add_tensor(
                x.name(),
                DType::F32,
                &x.shape(),
                bytemuck::cast_slice(&v).to_vec(),
            )
            .unwrap();
        }
        let dq = Model::from_bytes(w.to_bytes().unwrap()).unwrap();
        let (qs, qp) = logits(&qm, &tokens);
        let (ds, dp) = logits(&dq, &tokens);
        println!(
            "{t}: steps vs dequantised {:.2e}, prefill vs dequantised {:.2e}, vs f32 model {:.2e}",
            rel(&qs, &ds),
            rel(&qp, &dp),
            rel(&qs, &full)
        );
        assert!(rel(&qs, &ds) <= 1e-5 && rel(&qp, &dp) <= 1e-5, "{t}");
        assert!(rel(&qs, &full) <= 0.25, "{t}: far from the f32 model");
    }
}
