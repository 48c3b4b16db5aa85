//! The decode engine (`modula_core::engine::DenseEngine`, one token at a time from the mapped
//! file, KV cache) against the trainer's full-sequence forward on the same weights: every
//! position's logits, for a plain LM, an EMoE-converted LM (top-2 of 4 experts, run sparsely
//! by the engine and as a masked dense FFN by the trainer), and quantised files.
#![allow(clippy::unwrap_used)]

use modula_core::engine::DenseEngine;
use modula_core::quantize::quantize_model;
use modula_core::rng::SplitMix64;
use modula_core::{DType, Model};
use modula_train::emoe::convert_layer;
use modula_train::model::dense::{DenseConfig, DenseModel, Input};

fn perturbed(cfg: DenseConfig, seed: u64) -> DenseModel {
    let mut m = DenseModel::new(cfg, seed).unwrap();
    let mut r = SplitMix64(seed ^ 5);
    for v in m.params.values.iter_mut() {
        *v += 0.1 * (2.0 * r.next_f32() - 1.0);
    }
    m
}

fn file(m: &DenseModel, tag: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("modula-engine-{}-{tag}.gguf", std::process::id()));
    m.write_gguf(&p, 16, "engine test").unwrap();
    p
}

/// Max |engine − trainer| over all positions, relative to the largest logit.
fn compare<B: AsRef<[u8]>>(m: &DenseModel, model: &Model<B>, tokens: &[u32]) -> f32 {
    let t = tokens.len();
    let (_, acts, _) = m.forward(Input::Tokens(tokens), tokens, 1, t).unwrap();
    let want = acts.logits();
    let v = m.cfg.vocab;
    let mut e = DenseEngine::new(model, 16).unwrap();
    let scale = want.iter().fold(0f32, |a, b| a.max(b.abs()));
    let mut worst = 0f32;
    for (i, &tok) in tokens.iter().enumerate() {
        let got = e.step(tok).unwrap();
        for (g, w) in got.iter().zip(&want[i * v..(i + 1) * v]) {
            worst = worst.max((g - w).abs() / scale);
        }
    }
    worst
}

#[test]
fn engine_matches_the_trainer_forward() {
    let cfg = DenseConfig {
        max_seq: 16,
        ..DenseConfig::lm(40, 32, 2, 4, 64)
    };
    let m = perturbed(cfg, 3);
    let tokens: Vec<u32> = (0..12).map(|i| (i * 7 % 40) as u32).collect();
    let p = file(&m, "lm");
    let model = Model::open(&p).unwrap();
    let err = compare(&m, &model, &tokens);
    assert!(err < 1e-5, "f32 engine vs trainer: {err}");

    // nested sub-models (SortedNet): the engine's zero-copy prefixes against the trainer's
    // nested forward, switching sizes on one engine
    let mut e = DenseEngine::new(&model, 16).unwrap();
    for size in [(1, 16), (2, 32), (1, 64), (2, 64)] {
        let mut mm = m.clone();
        mm.nested = Some(size);
        let (_, acts, _) = mm
            .forward(Input::Tokens(&tokens), &tokens, 1, tokens.len())
            .unwrap();
        let want = acts.logits();
        let scale = want.iter().fold(0f32, |a, b| a.max(b.abs()));
        e.set_submodel(Some(size)).unwrap();
        assert_eq!(e.submodel(), size);
        for (i, &tok) in tokens.iter().enumerate() {
            let got = e.step(tok).unwrap();
            for (g, w) in got.iter().zip(&want[i * 40..(i + 1) * 40]) {
                assert!(
                    (g - w).abs() <= 1e-5 * scale,
                    "sub-model {size:?}: {g} vs {w}"
                );
            }
        }
    }
    assert!(e.set_submodel(Some((3, 8))).is_err());
    // memory budget: the largest declared sub-model that fits
    let nm = {
        let mut nm = DenseModel::new(cfg.with_nested(&[1], &[32]).unwrap(), 3).unwrap();
        nm.params.values.copy_from_slice(&m.params.values);
        nm
    };
    let pn = file(&nm, "nested");
    let nfile = Model::open(&pn).unwrap();
    let spec = modula_core::engine::DenseSpec::from_model(&nfile).unwrap();
    assert_eq!(spec.nested_grid(), vec![(1, 32), (1, 64), (2, 32), (2, 64)]);
    let need = |s| {
        let (w, a) = spec.submodel_bytes(&nfile, s, 16).unwrap();
        w + a
    };
    assert!(need((1, 32)) < need((1, 64)) && need((2, 32)) < need((2, 64)));
    let (got, bytes) = spec.pick_by_memory(&nfile, need((2, 32)), 16).unwrap();
    assert_eq!((got, bytes), ((2, 32, 4), need((2, 32))));
    assert_eq!(
        spec.pick_by_memory(&nfile, u64::MAX, 16).unwrap().0,
        (2, 64, 4)
    );
    let err = spec
        .pick_by_memory(&nfile, need((1, 32)) - 1, 16)
        .unwrap_err();
    assert!(matches!(err, modula_core::Error::Input { .. }), "{err:?}");
    assert!(err.to_string().contains("impossible budget"), "{err}");
    std::fs::remove_file(pn).unwrap();
    assert!(e.set_submodel(Some((1, 65))).is_err());

    // EMoE: block 1 split into 4 experts, top-2; the engine reads only 2 experts' rows
    let mut conv = m.clone();
    convert_layer(&mut conv, 1, 4, 2, 1).unwrap();
    let ecfg = DenseConfig {
        emoe_layers: 0b10,
        emoe_experts: 4,
        emoe_top_k: 2,
        ..cfg
    };
    let mut em = DenseModel::new(ecfg, 0).unwrap();
    em.params.values.copy_from_slice(&conv.params.values);
    let pe = file(&em, "emoe");
    let emodel = Model::open(&pe).unwrap();
    let err = compare(&em, &emodel, &tokens);
    assert!(err < 1e-5, "EMoE engine vs masked trainer: {err}");

    // quantised files: the trainer dequantises; the engine also quantises activations
    for (dt, bound) in [(DType::F16, 1e-3), (DType::Q8_0, 2e-2), (DType::Q4_0, 2e-2)] {
        let (w, _) = quantize_model(&model, dt).unwrap();
        let pq =
            std::env::temp_dir().join(format!("modula-engine-{}-{dt}.gguf", std::process::id()));
        w.write_to(&pq).unwrap();
        let qmodel = Model::open(&pq).unwrap();
        let (dq, _) = DenseModel::read_gguf(&qmodel).unwrap();
        let err = compare(&dq, &qmodel, &tokens);
        assert!(
            err < bound,
            "{dt}: engine vs trainer on the dequantised weights: {err}"
        );
        std::fs::remove_file(&pq).unwrap();
    }

    // bad input is an error, not a panic
    let mut e = DenseEngine::new(&model, 2).unwrap();
    assert!(e.step(40).unwrap_err().to_string().contains("vocabulary"));
    e.step(1).unwrap();
    e.step(2).unwrap();
    let full = e.step(3).unwrap_err();
    assert!(
        matches!(full, modula_core::Error::ContextFull { capacity: 2, .. }),
        "{full:?}"
    );
    assert!(full.to_string().contains("full"));
    e.reset();
    assert_eq!(e.position(), 0);
    e.step(3).unwrap();
    assert!(
        DenseEngine::new(&model, 17).is_err(),
        "beyond the position table"
    );
    for f in [p, pe] {
        std::fs::remove_file(f).unwrap();
    }
}

#[test]
fn engine_refuses_classifiers() {
    let cfg = DenseConfig {
        classes: 3,
        ..DenseConfig::lm(10, 8, 1, 2, 16)
    };
    let m = DenseModel::new(cfg, 1).unwrap();
    let p = file(&m, "cls");
    let model = Model::open(&p).unwrap();
    assert!(DenseEngine::new(&model, 4)
        .unwrap_err()
        .to_string()
        .contains("classifier"));
    std::fs::remove_file(p).unwrap();
}

/// ModuleFormer: the engine (one token at a time, stick-breaking over its cache, only the
/// chosen experts' tensors) against the trainer's whole-sequence forward.
#[test]
fn moduleformer_engine_matches_the_trainer_forward() {
    use modula_core::engine::MfEngine;
    use modula_train::model::moduleformer::{MfConfig, MfModel};
    let base = MfConfig {
        router_hidden: 32,
        ..MfConfig::lm(40, 32, 2, 4, 64)
    };
    let configs = [
        ("MoLM (K = V = LN1(x))", base),
        (
            "projected K/V, 2 heads, linear routers, renormalised",
            MfConfig {
                kv_proj: true,
                heads: 2,
                att_hidden: 64,
                router_hidden: 0,
                renormalize: true,
                att_k: 1,
                ffn_k: 3,
                ..base
            },
        ),
    ];
    let tokens: Vec<u32> = (0..14).map(|i| (i * 7 % 40) as u32).collect();
    for (name, cfg) in configs {
        let mut m = MfModel::new(cfg, 3).unwrap();
        let mut r = SplitMix64(8);
        for v in m.params.values.iter_mut() {
            *v += 0.1 * (2.0 * r.next_f32() - 1.0);
        }
        let p = std::env::temp_dir().join(format!("modula-mf-engine-{}.gguf", std::process::id()));
        m.write_gguf(&p, 16, "engine test").unwrap();
        let model = Model::open(&p).unwrap();
        let check = |m: &MfModel, model: &Model<_>, bound: f32, what: &str| {
            let t = tokens.len();
            let (_, acts, _) = m.forward(&tokens, &tokens, 1, t).unwrap();
            let want = acts.logits();
            let v = m.cfg.vocab;
            let scale = want.iter().fold(0f32, |a, b| a.max(b.abs()));
            let mut e = MfEngine::new(model, 16).unwrap();
            let mut worst = 0f32;
            for (i, &tok) in tokens.iter().enumerate() {
                let got = e.step(tok).unwrap();
                for (g, w) in got.iter().zip(&want[i * v..(i + 1) * v]) {
                    worst = worst.max((g - w).abs() / scale);
                }
            }
            assert!(worst < bound, "{name} {what}: engine vs trainer {worst}");
            // expert usage is counted: k per token per router
            let k = [m.cfg.att_k, m.cfg.ffn_k];
            for (i, u) in e.usage().iter().enumerate() {
                assert_eq!(u.iter().sum::<u64>(), (t * k[i % 2]) as u64);
            }
        };
        check(&m, &model, 1e-5, "f32");
        // nested experts (SortedNet): the engine's restricted routers vs the trainer's
        for sub in [(2, 3), (3, 4), (4, 3)] {
            let mut mm = m.clone();
            mm.nested = Some(sub);
            let (_, acts, _) = mm.forward(&tokens, &tokens, 1, tokens.len()).unwrap();
            let want = acts.logits();
            let v = m.cfg.vocab;
            let scale = want.iter().fold(0f32, |a, b| a.max(b.abs()));
            let mut e = MfEngine::new(&model, 16).unwrap();
            e.set_submodel(Some(sub)).unwrap();
            for (i, &tok) in tokens.iter().enumerate() {
                let got = e.step(tok).unwrap();
                let err = got
                    .iter()
                    .zip(&want[i * v..(i + 1) * v])
                    .fold(0f32, |a, (g, w)| a.max((g - w).abs()));
                assert!(err <= 1e-5 * scale, "{name} experts {sub:?}: {err}");
            }
            let mut p = MfEngine::new(&model, 16).unwrap();
            p.set_submodel(Some(sub)).unwrap();
            let pre = p.prefill(&tokens).unwrap();
            let last = &want[(tokens.len() - 1) * v..];
            let err = pre
                .iter()
                .zip(last)
                .fold(0f32, |a, (g, w)| a.max((g - w).abs()));
            assert!(err <= 1e-5 * scale, "{name} experts {sub:?} prefill: {err}");
        }
        assert!(MfEngine::new(&model, 4)
            .unwrap()
            .set_submodel(Some((0, 4)))
            .is_err());
        assert!(MfEngine::new(&model, 4)
            .unwrap()
            .set_submodel(Some((5, 4)))
            .is_err());
        // batched prefill == token-by-token steps, then decoding continues identically
        for split in [1, 9, 14] {
            let (mut a, mut b) = (
                MfEngine::new(&model, 16).unwrap(),
                MfEngine::new(&model, 16).unwrap(),
            );
            let pre = a.prefill(&tokens[..split]).unwrap().to_vec();
            let mut last = Vec::new();
            for &t in &tokens[..split] {
                last = b.step(t).unwrap().to_vec();
            }
            let scale = last.iter().fold(0f32, |x, y| x.max(y.abs()));
            let err = pre
                .iter()
                .zip(&last)
                .fold(0f32, |x, (p, q)| x.max((p - q).abs()));
            assert!(
                err <= 1e-5 * scale,
                "{name}: prefill of {split} vs steps: {err}"
            );
            assert_eq!(a.position(), split);
            assert_eq!(a.usage(), b.usage(), "{name}: same routing");
            for &t in &tokens[split..] {
                let (x, y) = (a.step(t).unwrap().to_vec(), b.step(t).unwrap().to_vec());
                let err = x
                    .iter()
                    .zip(&y)
                    .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
                assert!(err <= 1e-5 * scale, "{name}: decode after prefill: {err}");
            }
        }
        let mut a = MfEngine::new(&model, 4).unwrap();
        assert!(a
            .prefill(&tokens[..5])
            .unwrap_err()
            .to_string()
            .contains("do not fit"));
        assert!(a.prefill(&[]).is_err());
        assert!(a
            .prefill(&[1, 99])
            .unwrap_err()
            .to_string()
            .contains("vocabulary"));
        // quantised file: the trainer reads it dequantised
        let (w, _) = quantize_model(&model, DType::Q8_0).unwrap();
        let pq =
            std::env::temp_dir().join(format!("modula-mf-engine-{}-q8.gguf", std::process::id()));
        w.write_to(&pq).unwrap();
        let qmodel = Model::open(&pq).unwrap();
        let (dq, _) = MfModel::read_gguf(&qmodel).unwrap();
        check(&dq, &qmodel, 2e-2, "Q8_0");
        // bad input is an error
        let mut e = MfEngine::new(&model, 2).unwrap();
        assert!(e.step(40).unwrap_err().to_string().contains("vocabulary"));
        e.step(1).unwrap();
        e.step(2).unwrap();
        assert!(e.step(3).unwrap_err().to_string().contains("full"));
        e.reset();
        e.step(3).unwrap();
        for f in [p, pq] {
            std::fs::remove_file(f).unwrap();
        }
    }
}

/// Nested attention heads (SortedNet): a head-nested model's file stores the attention
/// head-major; the engine runs the first `h` heads from prefixes of `attn_qkv` and of the
/// transposed output projection, matching the trainer's `nested_heads` forward (f32 and
/// Q8_0, combined with depth and FFN nesting, switched on one engine); the sub-model view
/// reads exactly those prefixes; plain files refuse fewer heads.
#[test]
fn nested_heads_run_from_head_major_prefixes() {
    let cfg = DenseConfig::lm(40, 64, 2, 4, 64)
        .with_nested(&[1], &[32])
        .unwrap()
        .with_nested_heads(&[1, 2])
        .unwrap();
    let m = perturbed(cfg, 4);
    let tokens: Vec<u32> = (0..12).map(|i| (i * 11 % 40) as u32).collect();
    let p = file(&m, "heads");
    let f32_file = Model::open(&p).unwrap();
    let spec = modula_core::engine::DenseSpec::from_model(&f32_file).unwrap();
    assert!(spec.head_major && spec.nested_head_list() == vec![1, 2, 4]);
    let q8 = {
        let (w, _) = quantize_model(&f32_file, DType::Q8_0).unwrap();
        let q = p.with_extension("q8.gguf");
        w.write_to(&q).unwrap();
        q
    };
    let q8_file = Model::open(&q8).unwrap();
    for (model, tol) in [(&f32_file, 1e-5f32), (&q8_file, 2e-2)] {
        let mut e = DenseEngine::new(model, 16).unwrap();
        for (size, h) in [
            ((2, 64), 1),
            ((2, 64), 2),
            ((1, 32), 2),
            ((2, 32), 4),
            ((2, 64), 4),
        ] {
            let mut mm = m.clone();
            mm.nested = Some(size);
            mm.nested_heads = Some(h);
            let (_, acts, _) = mm
                .forward(Input::Tokens(&tokens), &tokens, 1, tokens.len())
                .unwrap();
            let want = acts.logits();
            let scale = want.iter().fold(0f32, |a, b| a.max(b.abs()));
            e.set_submodel(Some(size)).unwrap();
            e.set_heads(Some(h)).unwrap();
            assert_eq!((e.submodel(), e.heads()), (size, h));
            let mut worst = 0f32;
            for (i, &tok) in tokens.iter().enumerate() {
                let got = e.step(tok).unwrap();
                for (g, w) in got.iter().zip(&want[i * 40..(i + 1) * 40]) {
                    worst = worst.max((g - w).abs() / scale);
                }
            }
            assert!(worst <= tol, "{size:?} x {h} heads: {worst}");
        }
        assert!(e.set_heads(Some(0)).is_err() && e.set_heads(Some(5)).is_err());
    }
    // the view of 1 head reads 3·16 rows of attn_qkv and 16 rows of attn_output_t
    let view = f32_file
        .submodel(modula_core::NestedSpec {
            heads: Some(1),
            ..Default::default()
        })
        .unwrap();
    let rows = |name: &str| view.tensor(name).unwrap().shape()[0];
    assert_eq!(rows("blk.0.attn_qkv.weight"), 48);
    assert_eq!(rows("blk.1.attn_output_t.weight"), 16);
    assert_eq!(view.tensor("blk.1.attn_qkv.bias").unwrap().shape(), &[48]);
    let full = f32_file.submodel(Default::default()).unwrap();
    let saved = full.weight_bytes() - view.weight_bytes();
    assert_eq!(saved, 2 * 4 * (3 * 48 * 64 + 3 * 48 + 48 * 64));
    // a memory budget chooses among head counts too
    let need = |s, h| {
        let (w, a) = spec
            .submodel_bytes_heads(&f32_file, s, Some(h), 16)
            .unwrap();
        w + a
    };
    assert!(need((2, 64), 1) < need((2, 64), 2) && need((2, 64), 2) < need((2, 64), 4));
    let (got, bytes) = spec
        .pick_by_memory(&f32_file, need((2, 64), 2), 16)
        .unwrap();
    assert_eq!((got, bytes), ((2, 64, 2), need((2, 64), 2)));
    let (got, _) = spec
        .pick_by_memory(&f32_file, need((1, 32), 1), 16)
        .unwrap();
    assert_eq!(got, (1, 32, 1));
    // a plain file: all heads only
    let plain = DenseModel::new(DenseConfig::lm(40, 64, 2, 4, 64), 4).unwrap();
    let pp = file(&plain, "plainheads");
    let pf = Model::open(&pp).unwrap();
    let mut e = DenseEngine::new(&pf, 16).unwrap();
    let err = e.set_heads(Some(2)).unwrap_err();
    assert!(
        matches!(err, modula_core::Error::Unsupported { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("does not nest heads"), "{err}");
    assert!(e.set_heads(None).is_ok());
    let err = pf
        .submodel(modula_core::NestedSpec {
            heads: Some(2),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("head-major"), "{err}");
    for f in [p, q8, pp] {
        std::fs::remove_file(f).unwrap();
    }
}

/// Largest |a − b| relative to the largest |b|.
fn rel(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter()
        .zip(b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs() / scale))
}

#[test]
fn batched_prefill_equals_token_by_token_steps() {
    let cfg = DenseConfig {
        max_seq: 64,
        nested_depths: 1,
        nested_ffn: [32, 0, 0, 0, 0, 0, 0, 0],
        ..DenseConfig::lm(40, 32, 2, 4, 64)
    }
    .with_nested_heads(&[2, 4])
    .unwrap();
    let plain = perturbed(cfg, 11);
    let mut emoe = perturbed(DenseConfig::lm(40, 32, 2, 4, 64), 12);
    convert_layer(&mut emoe, 1, 4, 1, 5).unwrap();
    let mut conv = DenseModel::new(
        DenseConfig {
            emoe_layers: 0b10,
            emoe_experts: 4,
            emoe_top_k: 2,
            ..DenseConfig::lm(40, 32, 2, 4, 64)
        },
        0,
    )
    .unwrap();
    conv.params.values.copy_from_slice(&emoe.params.values);
    let emoe = conv;
    // 9 + 40 rows: the second prefill runs the many-row products (more than 16 rows)
    let tokens: Vec<u32> = (0..49).map(|i| ((i * 11 + 5) % 40) as u32).collect();
    for (tag, m) in [("prefill-plain", &plain), ("prefill-emoe", &emoe)] {
        let p = file(m, tag);
        let pq = std::env::temp_dir().join(format!(
            "modula-prefill-q-{}-{tag}.gguf",
            std::process::id()
        ));
        quantize_model(&Model::open(&p).unwrap(), DType::Q8_0)
            .unwrap()
            .0
            .write_to(&pq)
            .unwrap();
        for path in [&p, &pq] {
            let f = Model::open(path).unwrap();
            type Sub = Option<((usize, usize), Option<usize>)>;
            let mut sizes: Vec<Sub> = vec![None];
            if tag == "prefill-plain" {
                sizes.push(Some(((1, 32), Some(2))));
                sizes.push(Some(((2, 64), Some(2))));
            }
            for size in sizes {
                let mut a = DenseEngine::new(&f, 64).unwrap();
                let mut b = DenseEngine::new(&f, 64).unwrap();
                if let Some((s, h)) = size {
                    a.set_submodel(Some(s)).unwrap();
                    a.set_heads(h)
                        .unwrap_or_else(|e| panic!("{tag} {}: {e}", path.display()));
                    b.set_submodel(Some(s)).unwrap();
                    b.set_heads(h).unwrap();
                }
                // a prompt in two pieces (the second prefill starts mid-context)
                a.prefill(&tokens[..9]).unwrap();
                let got = a.prefill(&tokens[9..]).unwrap().to_vec();
                let mut want = Vec::new();
                for &t in &tokens {
                    want = b.step(t).unwrap().to_vec();
                }
                assert_eq!(a.position(), b.position());
                // the many-row products of a quantised file multiply f32 activations with
                // the widened weights, the steps round the activations to 8 bits
                let tol = if *path == pq { 2e-2 } else { 1e-4 };
                let err = rel(&got, &want);
                assert!(
                    err < tol,
                    "{tag} {size:?} {}: prefill vs steps {err}",
                    path.display()
                );
                // the caches the prefill left behind decode like the steps' caches
                for t in [3u32, 17, 29] {
                    let x = a.step(t).unwrap().to_vec();
                    let y = b.step(t).unwrap();
                    let err = rel(&x, y);
                    assert!(err < tol, "{tag} {size:?}: decode after prefill {err}");
                }
            }
        }
        // bad prompts are errors, the engine unchanged
        let f = Model::open(&p).unwrap();
        let mut e = DenseEngine::new(&f, 8).unwrap();
        assert!(matches!(
            e.prefill(&[]).unwrap_err(),
            modula_core::Error::Input { .. }
        ));
        assert!(e
            .prefill(&[1, 40])
            .unwrap_err()
            .to_string()
            .contains("vocabulary"));
        assert!(matches!(
            e.prefill(&tokens[..9]).unwrap_err(),
            modula_core::Error::ContextFull {
                capacity: 8,
                used: 0,
                needed: 9
            }
        ));
        assert_eq!(e.position(), 0);
        for q in [p, pq] {
            std::fs::remove_file(q).unwrap();
        }
    }
}

#[test]
fn non_finite_logits_are_an_error_in_every_engine() {
    use modula_core::Error;
    use modula_train::model::moduleformer::{MfConfig, MfModel};
    use modula_train::model::seqboat::{SbConfig, SbModel};
    let dir = std::env::temp_dir();
    let pid = std::process::id();
    // one NaN in a weight every token's path reads (the output norm's gain)
    let poison = |p: &mut modula_train::params::ParamStore, name: &str| {
        let i = p.index_of(name).unwrap_or_else(|| panic!("no {name}"));
        p.value_mut(i)[0] = f32::NAN;
    };
    let mut dense = DenseModel::new(DenseConfig::lm(40, 16, 1, 2, 32), 1).unwrap();
    poison(&mut dense.params, "output_norm.weight");
    let pd = dir.join(format!("modula-nan-dense-{pid}.gguf"));
    dense.write_gguf(&pd, 16, "t").unwrap();
    let mut mf = MfModel::new(MfConfig::lm(40, 16, 1, 4, 16), 1).unwrap();
    poison(&mut mf.params, "output_norm.weight");
    let pm = dir.join(format!("modula-nan-mf-{pid}.gguf"));
    mf.write_gguf(&pm, 16, "t").unwrap();
    let mut sb = SbModel::new(SbConfig::lm(40, 16, 1, 8), 1).unwrap();
    let name = sb
        .params
        .specs()
        .iter()
        .find(|s| s.name.starts_with("output_norm") || s.name.contains("final_norm"))
        .map(|s| s.name.clone())
        .unwrap_or_else(|| "token_embd.weight".into());
    poison(&mut sb.params, &name);
    let ps = dir.join(format!("modula-nan-sb-{pid}.gguf"));
    sb.write_gguf(&ps, 16, "t").unwrap();
    for p in [&pd, &pm, &ps] {
        let m = Model::open(p).unwrap();
        let mut e = modula_core::engine::open(&m, None, None).unwrap();
        let step = e.step(3).map(|_| ()).unwrap_err();
        assert!(
            matches!(step, Error::NonFinite { .. }),
            "{}: {step:?}",
            p.display()
        );
        e.reset();
        let pre = e.prefill(&[1, 2, 3]).map(|_| ()).unwrap_err();
        assert!(
            matches!(pre, Error::NonFinite { .. }),
            "{}: {pre:?}",
            p.display()
        );
        std::fs::remove_file(p).unwrap();
    }
}
