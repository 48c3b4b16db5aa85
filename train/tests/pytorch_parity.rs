//! The dense baseline against PyTorch, tensor by tensor: logits, loss and every parameter
//! gradient for three models (byte-style LM with a position table and an ignored target;
//! image classifier on patches with full attention and mean pooling; token classifier with
//! last-position pooling). Fixtures are written by `tests/reference/dense_reference.py`
//! (PyTorch, float64 from float32 weights) and committed; this test needs neither Python
//! nor torch.
//!
//! Tolerance: |modula − torch| ≤ 1e-4 · max|torch| + 1e-6 per tensor (f32 arithmetic
//! against a float64 reference).
#![allow(clippy::unwrap_used)]

use modula_train::layers::loss::IGNORE;
use modula_train::model::dense::{DenseModel, Input};
use safetensors::SafeTensors;
use std::path::PathBuf;

fn fixture(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/dense_parity")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn f32s(st: &SafeTensors<'_>, name: &str) -> Vec<f32> {
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
    t.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn i64s(st: &SafeTensors<'_>, name: &str) -> Vec<i64> {
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::I64, "{name}");
    t.data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn close(what: &str, got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let tol = 1e-4 * scale + 1e-6;
    let mut worst = 0f32;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let e = (g - w).abs();
        assert!(
            e <= tol,
            "{what}[{i}]: modula {g} vs torch {w} (tolerance {tol})"
        );
        worst = worst.max(e / scale.max(1e-30));
    }
    worst
}

fn case(name: &str) {
    let (mut model, ctx) =
        DenseModel::read_safetensors(&fixture(&format!("{name}.weights.safetensors"))).unwrap();
    let expect_bytes = fixture(&format!("{name}.expect.safetensors"));
    let ex = SafeTensors::deserialize(&expect_bytes).unwrap();
    let targets: Vec<u32> = i64s(&ex, "targets")
        .iter()
        .map(|&t| if t < 0 { IGNORE } else { t as u32 })
        .collect();
    let (tokens, features);
    let input = if model.cfg.patch_dim > 0 {
        features = f32s(&ex, "input.features");
        Input::Features(&features)
    } else {
        tokens = i64s(&ex, "input.tokens")
            .iter()
            .map(|&t| t as u32)
            .collect::<Vec<_>>();
        Input::Tokens(&tokens)
    };
    let t = ctx;
    let b = match input {
        Input::Tokens(x) => x.len() / t,
        Input::Features(x) => x.len() / (t * model.cfg.patch_dim),
    };
    let (loss, acts, dlogits) = model.forward(input, &targets, b, t).unwrap();
    let want_loss = f32s(&ex, "loss")[0];
    assert!(
        (loss as f32 - want_loss).abs() <= 1e-5 * want_loss.abs().max(1.0),
        "{name}: loss {loss} vs torch {want_loss}"
    );
    let mut worst = close(
        &format!("{name} logits"),
        acts.logits(),
        &f32s(&ex, "logits"),
    );
    model.params.zero_grads();
    model.backward(input, &acts, &dlogits).unwrap();
    let specs = model.params.specs().to_vec();
    let mut off = 0;
    for s in &specs {
        let n: usize = s.shape.iter().product();
        let got = &model.params.grads[off..off + n];
        let w = close(
            &format!("{name} grad {}", s.name),
            got,
            &f32s(&ex, &format!("grad.{}", s.name)),
        );
        worst = worst.max(w);
        off += n;
    }
    println!(
        "{name}: {} tensors + logits + loss agree; worst relative error {worst:.2e}",
        specs.len()
    );
}

#[test]
fn lm_matches_pytorch() {
    case("lm");
}

#[test]
fn image_classifier_matches_pytorch() {
    case("image");
}

#[test]
fn token_classifier_matches_pytorch() {
    case("tokens_last");
}
