//! SeqBoat: the streaming engine of `modula-core` (constant state: EMA + a ring of the last
//! `w` activated tokens) reproduces the trainer's parallel forward over the whole sequence
//! — logits at every position, the same tokens activated — for pre- and post-norm, softmax
//! and relu², a causal classifier with padding, and a quantised copy (looser tolerance).
#![allow(clippy::unwrap_used)]

use modula_core::engine::SbEngine;
use modula_core::quantize::quantize_model;
use modula_core::rng::SplitMix64;
use modula_core::{DType, Model};
use modula_train::model::seqboat::{SbAttn, SbConfig, SbGate, SbModel};

fn perturbed(cfg: SbConfig, seed: u64) -> SbModel {
    let mut m = SbModel::new(cfg, seed).unwrap();
    let mut r = SplitMix64(seed ^ 0x77);
    for v in m.params.values.iter_mut() {
        *v += 0.3 * (2.0 * r.next_f32() - 1.0);
    }
    m
}

fn lm(attn: SbAttn, prenorm: bool, window: usize) -> SbConfig {
    SbConfig {
        vocab: 11,
        classes: 0,
        d: 12,
        layers: 2,
        ndim: 4,
        z: 6,
        e: 10,
        window,
        causal: true,
        attn,
        prenorm,
        temp_scale: 1.0,
        max_pos: 8,
        gate: SbGate::Learned,
        pad: None,
        nested_depths: 0,
    }
}

/// Stream `tokens` through the engine; returns the largest logit difference against the
/// trainer and the per-layer activation counts of both.
fn stream_vs_parallel(m: &SbModel, bytes: Vec<u8>, tokens: &[u32]) -> (f32, Vec<u64>, Vec<u64>) {
    stream_vs_parallel_at(m, bytes, tokens, m.cfg.layers)
}

/// [`stream_vs_parallel`] with the engine running the first `depth` layers.
fn stream_vs_parallel_at(
    m: &SbModel,
    bytes: Vec<u8>,
    tokens: &[u32],
    depth: usize,
) -> (f32, Vec<u64>, Vec<u64>) {
    let t = tokens.len();
    let v = m.cfg.vocab;
    let targets = vec![0u32; t];
    let (_, acts, _) = m.forward(tokens, &targets, 1, t).unwrap();
    let want = acts.logits().to_vec();
    let ratio = acts.activation_ratio();
    let model = Model::from_bytes(bytes).unwrap();
    let mut eng = SbEngine::new(&model).unwrap();
    eng.set_depth(Some(depth)).unwrap();
    let mut worst = 0f32;
    for (i, &tok) in tokens.iter().enumerate() {
        let got = eng.step(tok).unwrap();
        for (a, b) in got.iter().zip(&want[i * v..(i + 1) * v]) {
            worst = worst.max((a - b).abs() / (1.0 + b.abs()));
        }
    }
    let (counts, real) = eng.activations();
    assert_eq!(real as usize, t);
    let trainer: Vec<u64> = ratio
        .iter()
        .map(|r| (r * t as f32).round() as u64)
        .collect();
    (worst, counts, trainer)
}

#[test]
fn streaming_matches_the_parallel_forward() {
    let mut rng = SplitMix64(5);
    let tokens: Vec<u32> = (0..70).map(|_| rng.below(11) as u32).collect();
    for (attn, prenorm, w) in [
        (SbAttn::Softmax, true, 3),
        (SbAttn::Softmax, false, 1),
        (SbAttn::Relu2, true, 5),
        (SbAttn::Relu2, false, 2),
    ] {
        let m = perturbed(lm(attn, prenorm, w), 9);
        let bytes = m.writer(128, "t").unwrap().to_bytes().unwrap();
        let (err, got, want) = stream_vs_parallel(&m, bytes, &tokens);
        assert_eq!(
            got, want,
            "{attn:?} prenorm {prenorm}: same tokens activated"
        );
        assert!(
            got.iter().all(|&c| c > 0 && (c as usize) < tokens.len()),
            "both decisions occur: {got:?}"
        );
        assert!(err < 1e-4, "{attn:?} prenorm {prenorm} w {w}: {err}");
    }
}

#[test]
fn always_on_and_off_gates_stream_too() {
    let tokens: Vec<u32> = (0..30).map(|i| (i * 7 % 11) as u32).collect();
    for gate in [SbGate::AlwaysOn, SbGate::Off] {
        let mut c = lm(SbAttn::Softmax, true, 4);
        c.gate = gate;
        let m = perturbed(c, 3);
        let bytes = m.writer(64, "t").unwrap().to_bytes().unwrap();
        let (err, got, want) = stream_vs_parallel(&m, bytes, &tokens);
        assert_eq!(got, want);
        assert!(err < 1e-4, "{gate:?}: {err}");
    }
}

#[test]
fn streaming_classifier_with_padding() {
    let mut c = lm(SbAttn::Softmax, false, 3);
    c.classes = 4;
    c.pad = Some(0);
    let m = perturbed(c, 4);
    let mut tokens = vec![0u32; 5];
    tokens.extend((0..25).map(|i| 1 + (i * 3 % 10) as u32));
    let (_, acts, _) = m.forward(&tokens, &[2], 1, tokens.len()).unwrap();
    let bytes = m.writer(64, "t").unwrap().to_bytes().unwrap();
    let model = Model::from_bytes(bytes).unwrap();
    let mut eng = SbEngine::new(&model).unwrap();
    assert!(eng.classify().is_err(), "nothing seen yet");
    for &t in &tokens {
        assert!(eng.step(t).unwrap().is_empty());
    }
    let got = eng.classify().unwrap().to_vec();
    for (a, b) in got.iter().zip(acts.logits()) {
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
    assert_eq!(eng.activations().1, 25, "pads are not counted");
    // a reset gives the same answer again
    eng.reset();
    for &t in &tokens {
        eng.step(t).unwrap();
    }
    assert_eq!(eng.classify().unwrap(), got.as_slice());
}

#[test]
fn quantised_matrices_stream_close_to_f32() {
    // z = N = 32: the per-channel tables ema.* [d, 32] and gau_qk.* [2, 32] have whole
    // blocks but are not weight matrices; they must stay f32
    let mut c = lm(SbAttn::Softmax, true, 4);
    c.d = 32;
    c.e = 32;
    c.z = 32;
    c.ndim = 32;
    let m = perturbed(c, 12);
    let bytes = m.writer(64, "t").unwrap().to_bytes().unwrap();
    let f32_model = Model::from_bytes(bytes.clone()).unwrap();
    for (dt, tol) in [(DType::Q8_0, 0.05f32), (DType::Q4_0, 0.25)] {
        let (w, _) = quantize_model(&f32_model, dt).unwrap();
        let qm = Model::from_bytes(w.to_bytes().unwrap()).unwrap();
        for t in [
            "blk.0.gau_in.weight",
            "blk.1.gate.weight",
            "blk.0.gau_out.weight",
        ] {
            assert_eq!(qm.tensor(t).unwrap().dtype(), dt, "{t} is quantised");
        }
        for t in [
            "blk.0.ema.delta",
            "blk.0.gau_qk.scale",
            "blk.1.gau_qk.offset",
        ] {
            assert_eq!(qm.tensor(t).unwrap().dtype(), DType::F32, "{t} stays f32");
        }
        let mut a = SbEngine::new(&f32_model).unwrap();
        let mut b = SbEngine::new(&qm).unwrap();
        let tokens: Vec<u32> = (0..40).map(|i| (i * 5 % 11) as u32).collect();
        let mut worst = 0f32;
        let mut scale = 0f32;
        for &t in &tokens {
            let x = a.step(t).unwrap().to_vec();
            let y = b.step(t).unwrap();
            for (p, q) in x.iter().zip(y) {
                worst = worst.max((p - q).abs());
                scale = scale.max(p.abs());
            }
        }
        assert!(
            worst.is_finite() && worst < tol * scale,
            "{dt}: {worst} of {scale}"
        );
    }
}

#[test]
fn engine_refuses_what_cannot_stream_and_bad_tokens() {
    let mut c = lm(SbAttn::Softmax, true, 0);
    let m = SbModel::new(c, 1).unwrap();
    let bytes = m.writer(64, "t").unwrap().to_bytes().unwrap();
    let model = Model::from_bytes(bytes).unwrap();
    let e = SbEngine::new(&model).unwrap_err();
    assert!(e.to_string().contains("window 0"), "{e}");
    c.window = 4;
    c.causal = false;
    c.classes = 3;
    let m = SbModel::new(c, 1).unwrap();
    let bytes = m.writer(64, "t").unwrap().to_bytes().unwrap();
    let model = Model::from_bytes(bytes).unwrap();
    let e = SbEngine::new(&model).unwrap_err();
    assert!(e.to_string().contains("bidirectional"), "{e}");
    // a hostile window: the ring would need more than 1 GiB
    let mut huge = lm(SbAttn::Softmax, true, 1 << 24);
    huge.max_pos = 4;
    let m = SbModel::new(huge, 1).unwrap();
    let bytes = m.writer(64, "t").unwrap().to_bytes().unwrap();
    let model = Model::from_bytes(bytes).unwrap();
    let e = SbEngine::new(&model).unwrap_err();
    assert!(e.to_string().contains("1 GiB"), "{e}");
    let m = SbModel::new(lm(SbAttn::Softmax, true, 2), 1).unwrap();
    let bytes = m.writer(64, "t").unwrap().to_bytes().unwrap();
    let model = Model::from_bytes(bytes).unwrap();
    let mut eng = SbEngine::new(&model).unwrap();
    assert!(eng.step(11).is_err());
    assert!(eng.set_act_bias(f32::NAN).is_err());
    assert!(eng.classify().is_err(), "an LM has no classifier");
    // state is constant in the sequence length
    let before = eng.state_bytes();
    for i in 0..500 {
        eng.step(i % 11).unwrap();
    }
    assert_eq!(eng.state_bytes(), before);
    assert_eq!(eng.position(), 500);
}

#[test]
fn batched_prefill_equals_token_by_token_steps() {
    let mut rng = SplitMix64(8);
    let tokens: Vec<u32> = (0..90).map(|_| rng.below(11) as u32).collect();
    for (attn, prenorm, w) in [(SbAttn::Softmax, true, 3), (SbAttn::Relu2, false, 5)] {
        let m = perturbed(lm(attn, prenorm, w), 21);
        let bytes = m.writer(128, "t").unwrap().to_bytes().unwrap();
        let model = Model::from_bytes(bytes).unwrap();
        let mut a = SbEngine::new(&model).unwrap();
        let mut b = SbEngine::new(&model).unwrap();
        // a: steps only; b: prefill 40, step 7, prefill the rest (the ring carries over)
        let mut want = Vec::new();
        for &t in &tokens {
            want = a.step(t).unwrap().to_vec();
        }
        b.prefill(&tokens[..40]).unwrap();
        for &t in &tokens[40..47] {
            b.step(t).unwrap();
        }
        let got = b.prefill(&tokens[47..]).unwrap().to_vec();
        for (x, y) in got.iter().zip(&want) {
            assert!(
                (x - y).abs() < 1e-4 * (1.0 + y.abs()),
                "{attn:?}: {x} vs {y}"
            );
        }
        assert_eq!(a.activations(), b.activations());
        assert_eq!(b.position(), tokens.len());
        // and the next step agrees too
        let (x, y) = (a.step(3).unwrap().to_vec(), b.step(3).unwrap().to_vec());
        for (p, q) in x.iter().zip(&y) {
            assert!((p - q).abs() < 1e-4 * (1.0 + q.abs()));
        }
    }
    // a classifier's prefill pools like its steps
    let mut c = lm(SbAttn::Softmax, false, 3);
    c.classes = 4;
    c.pad = Some(0);
    let m = perturbed(c, 4);
    let bytes = m.writer(64, "t").unwrap().to_bytes().unwrap();
    let model = Model::from_bytes(bytes).unwrap();
    let mut a = SbEngine::new(&model).unwrap();
    let mut b = SbEngine::new(&model).unwrap();
    let toks: Vec<u32> = [0, 0, 0]
        .into_iter()
        .chain((0..30).map(|i| 1 + i % 10))
        .collect();
    for &t in &toks {
        a.step(t).unwrap();
    }
    assert!(b.prefill(&toks).unwrap().is_empty());
    let (x, y) = (
        a.classify().unwrap().to_vec(),
        b.classify().unwrap().to_vec(),
    );
    for (p, q) in x.iter().zip(&y) {
        assert!((p - q).abs() < 1e-4, "{p} vs {q}");
    }
    assert!(b.prefill(&[]).is_err());
    assert!(b.prefill(&[1, 99]).is_err());
}

#[test]
fn nested_depths_stream_like_the_trainer_sub_model() {
    let c = SbConfig {
        layers: 3,
        ..lm(SbAttn::Softmax, true, 3)
    }
    .with_nested_depths(&[1, 2])
    .unwrap();
    let mut m = perturbed(c, 31);
    let bytes = m.writer(64, "t").unwrap().to_bytes().unwrap();
    let model = Model::from_bytes(bytes.clone()).unwrap();
    let (back, _) = SbModel::read_gguf(&model).unwrap();
    assert_eq!(back.cfg.nested_depth_list(), vec![1, 2, 3]);
    let tokens: Vec<u32> = (0..40).map(|i| (i * 3 % 11) as u32).collect();
    for depth in [1, 2, 3] {
        m.depth = Some(depth);
        let (err, got, want) = stream_vs_parallel_at(&m, bytes.clone(), &tokens, depth);
        assert_eq!(got[..depth], want[..], "depth {depth}");
        assert!(got[depth..].iter().all(|&c| c == 0), "deeper layers idle");
        assert!(err < 1e-4, "depth {depth}: {err}");
    }
    let mut e = SbEngine::new(&model).unwrap();
    assert!(e.set_depth(Some(0)).is_err());
    assert!(e.set_depth(Some(4)).is_err());
    e.set_depth(Some(2)).unwrap();
    assert_eq!(e.depth(), 2);
}
