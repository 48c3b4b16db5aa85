//! Q4_K and Q6_K (the K-quants of a Q4_K_M file): the block formats against gguf-py's
//! dequantisers (`tests/reference/kquant_reference.py`), Modula's round-to-nearest
//! quantisers' error, the products over K-quant weights against the same weights
//! dequantised to f32 on ragged shapes (skinny and many-row `linear`, `matmul_rows`), and a
//! whole Llama-layout model quantised to each type against its dequantised copy.
#![allow(clippy::unwrap_used)]

use modula_core::kernels::linear::{
    linear_mode, linear_scalar, matmul_rows, set_quantized_activations, MatRef, WeightData,
};
use modula_core::kernels::{isa, Isa};
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
                let best = isa::best();
                linear_mode(best, false, &x, k, m, &w, None, &mut a, n).unwrap();
                linear_mode(best, false, &x, k, m, &f, None, &mut b, n).unwrap();
                linear_scalar(&x, k, m, &w, &mut c, n);
                close(&a, &b, 1e-4, &format!("{t} linear {m}x{k} -> {n}"));
                close(&c, &b, 1e-4, &format!("{t} scalar {m}x{k} -> {n}"));
                // with Q8_K activations (the default): the integer kernels of every SIMD
                // level give the scalar level's bits, and the product is the f32 one
                // within the activations' rounding (skinny products; many-row products
                // stay f32)
                let mut q = vec![0f32; m * n];
                linear_mode(Isa::Scalar, true, &x, k, m, &w, None, &mut q, n).unwrap();
                for lvl in isa::available() {
                    let mut g = vec![0f32; m * n];
                    linear_mode(lvl, true, &x, k, m, &w, None, &mut g, n).unwrap();
                    let same = g.iter().zip(&q).all(|(p, r)| p.to_bits() == r.to_bits());
                    assert!(same, "{t} {} q8_k {m}x{k} -> {n}", lvl.name());
                }
                let err = q
                    .iter()
                    .zip(&b)
                    .fold(0f32, |e, (p, r)| e.max((p - r).abs()));
                let scale = b.iter().fold(0f32, |e, r| e.max(r.abs()));
                assert!(
                    err <= 0.02 * scale,
                    "{t} q8_k {m}x{k} -> {n}: {err} of {scale}"
                );
                if m <= 16 {
                    assert!(err > 0.0, "{t} {m}x{k}: the Q8_K path did not run");
                }
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

/// A random Llama-layout model (d 256, 4 heads on 2 key/value heads, FFN 512, vocab 300,
/// one block, tied head).
fn llama_file() -> Vec<u8> {
    llama_file_with(1, DType::F32)
}

/// [`llama_file`] with `blocks` blocks, its matrices stored as `dtype` (F32, F16 or BF16).
fn llama_file_with(blocks: usize, dtype: DType) -> Vec<u8> {
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
        ("llama.block_count", blocks),
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
    // deeper random models are tamer with smaller weights (perturbations grow less)
    let tame = if blocks > 1 { 0.5 } else { 1.0 };
    let mut add = |name: &str, shape: &[usize], scale: f32| {
        let scale = if shape.len() == 1 {
            scale
        } else {
            scale * tame
        };
        let n: usize = shape.iter().product();
        let v: Vec<f32> = gauss(&mut rng, n)
            .iter()
            .map(|x| x * scale + if shape.len() == 1 { 1.0 } else { 0.0 })
            .collect();
        let bytes: Vec<u8> = match dtype {
            _ if shape.len() == 1 => bytemuck::cast_slice(&v).to_vec(),
            DType::F16 => v
                .iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect(),
            DType::BF16 => v
                .iter()
                .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                .collect(),
            _ => bytemuck::cast_slice(&v).to_vec(),
        };
        let t = if shape.len() == 1 { DType::F32 } else { dtype };
        w.add_tensor(name, t, shape, bytes).unwrap();
    };
    add("token_embd.weight", &[vocab, d], 0.5);
    for b in 0..blocks {
        let n = |s: &str| format!("blk.{b}.{s}.weight");
        add(&n("attn_norm"), &[d], 0.1);
        add(&n("attn_q"), &[d, d], 0.1);
        add(&n("attn_k"), &[kv, d], 0.1);
        add(&n("attn_v"), &[kv, d], 0.1);
        add(&n("attn_output"), &[d, d], 0.1);
        add(&n("ffn_norm"), &[d], 0.1);
        add(&n("ffn_gate"), &[f, d], 0.1);
        add(&n("ffn_up"), &[f, d], 0.1);
        add(&n("ffn_down"), &[d, f], 0.1);
    }
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
        // f32 activations: the same arithmetic as the dequantised copy (the only test in
        // this binary that reads the global switch)
        set_quantized_activations(false);
        let (qs, qp) = logits(&qm, &tokens);
        set_quantized_activations(true);
        let (ds, dp) = logits(&dq, &tokens);
        // Q8_K activations (the default): within their rounding
        let (q8s, _) = logits(&qm, &tokens);
        assert!(
            rel(&q8s, &ds) <= 2e-2,
            "{t}: Q8_K activations {:.2e}",
            rel(&q8s, &ds)
        );
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

/// `--type q4_k_m`: llama.cpp's Q4_K_M choice per tensor (its `use_more_bits` layers for
/// the value and FFN down projections, Q6_K for a tied embedding), written with
/// `general.file_type` 15; f16/bf16 sources quantise like f32 ones.
#[test]
fn q4_k_m_follows_llama_cpps_recipe() {
    // llama.cpp's rule, written out here independently of the plan's
    let more_bits = |i: usize, n: usize| i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
    let mut bumped = Vec::new();
    for n in [8usize, 12] {
        let m = Model::from_bytes(llama_file_with(n, DType::F32)).unwrap();
        let plan = modula_core::quantize::q4_k_m_plan(&m).unwrap();
        assert_eq!(
            plan["token_embd.weight"],
            DType::Q6K,
            "tied head: output's type"
        );
        assert!(
            !plan.contains_key("output_norm.weight"),
            "vectors are not planned"
        );
        let mut six = Vec::new();
        for i in 0..n {
            for role in ["attn_v", "ffn_down"] {
                let want = if more_bits(i, n) {
                    DType::Q6K
                } else {
                    DType::Q4K
                };
                assert_eq!(
                    plan[&format!("blk.{i}.{role}.weight")],
                    want,
                    "{role} {i}/{n}"
                );
            }
            if plan[&format!("blk.{i}.attn_v.weight")] == DType::Q6K {
                six.push(i);
            }
            for role in ["attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up"] {
                assert_eq!(plan[&format!("blk.{i}.{role}.weight")], DType::Q4K);
            }
        }
        bumped.push(six);
    }
    assert_eq!(bumped, [vec![0, 3, 6, 7], vec![0, 3, 6, 9, 10, 11]]);
    // the whole file, from f32 and from bf16 / f16 sources
    let f32m = Model::from_bytes(llama_file_with(8, DType::F32)).unwrap();
    let (full, _) = logits(&f32m, &[3, 250, 17, 99]);
    let (q4k, _) = modula_core::quantize::quantize_model(&f32m, DType::Q4K).unwrap();
    let (q4k, _) = logits(
        &Model::from_bytes(q4k.to_bytes().unwrap()).unwrap(),
        &[3, 250, 17, 99],
    );
    for src in [DType::F32, DType::BF16, DType::F16] {
        let m = Model::from_bytes(llama_file_with(8, src)).unwrap();
        let (w, reports) = modula_core::quantize::quantize_named(&m, "q4_k_m").unwrap();
        let q = Model::from_bytes(w.to_bytes().unwrap()).unwrap();
        assert_eq!(
            q.metadata()
                .find(|(k, _)| *k == "general.file_type")
                .map(|(_, v)| v.to_owned_value()),
            Some(MetaValue::U32(15))
        );
        let conv = reports.iter().filter(|r| r.kept.is_none()).count();
        assert_eq!(conv, 1 + 8 * 7, "{src}: every matrix converted");
        let (got, _) = logits(&q, &[3, 250, 17, 99]);
        // the extra bits show: closer to the f32 model than all-Q4_K
        let (km, k4) = (rel(&got, &full), rel(&q4k, &full));
        println!("{src} source: q4_k_m {km:.2e}, q4_k {k4:.2e} from the f32 model");
        assert!(km < k4, "{src}: q4_k_m {km:.2e} vs q4_k {k4:.2e}");
    }
    // a name that is neither a type nor a mix
    let e = modula_core::quantize::quantize_named(&f32m, "q5_k_m").unwrap_err();
    assert!(e.contains("q4_k_m"), "{e}");
}
