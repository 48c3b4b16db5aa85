//! Import of Hugging Face ModuleFormer (MoLM) checkpoints against a PyTorch forward.
//! Fixtures (config.json, model.safetensors with the HF names and `[experts, in, out]`
//! layouts, expected logits computed in float64) are written by
//! `tests/reference/molm_reference.py` and committed; no Python at test time. Two cases:
//! the MoLM shape (one head of width d per attention expert, K = V = ln_1(x)) and the
//! general one (2 heads, projected K/V). The trainer's forward and the decode engine (from
//! the imported model written as GGUF) must both agree to 1e-4 relative.
#![allow(clippy::unwrap_used)]

use modula_core::engine::MfEngine;
use modula_core::Model;
use modula_train::model::mf_io::read_molm;
use safetensors::SafeTensors;
use std::path::PathBuf;

fn dir(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/molm_parity")
        .join(case)
}

#[test]
fn imported_molm_checkpoints_match_pytorch() {
    for case in ["molm", "kvproj"] {
        let cfg = std::fs::read_to_string(dir(case).join("config.json")).unwrap();
        let weights = std::fs::read(dir(case).join("model.safetensors")).unwrap();
        let (m, ctx) = read_molm(&cfg, &weights).unwrap();
        assert_eq!(ctx, 32);
        assert_eq!(m.cfg.kv_proj, case == "kvproj");
        let expect = std::fs::read(dir(case).join("expect.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&expect).unwrap();
        let ids: Vec<u32> = st
            .tensor("input_ids")
            .unwrap()
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
            .collect();
        let want: Vec<f32> = st
            .tensor("logits")
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let (b, t, v) = (2, ids.len() / 2, m.cfg.vocab);
        let scale = want.iter().fold(0f32, |a, x| a.max(x.abs()));
        let (_, acts, _) = m.forward(&ids, &ids, b, t).unwrap();
        let worst = acts
            .logits()
            .iter()
            .zip(&want)
            .fold(0f32, |a, (g, w)| a.max((g - w).abs()));
        assert!(
            worst <= 1e-4 * scale,
            "{case}: trainer vs PyTorch {worst} (scale {scale})"
        );
        // the engine, from the imported model written as GGUF, one token at a time
        let p =
            std::env::temp_dir().join(format!("modula-molm-{case}-{}.gguf", std::process::id()));
        m.write_gguf(&p, ctx, "imported").unwrap();
        let file = Model::open(&p).unwrap();
        for s in 0..b {
            let mut e = MfEngine::new(&file, ctx).unwrap();
            for i in 0..t {
                let got = e.step(ids[s * t + i]).unwrap();
                let w = &want[(s * t + i) * v..(s * t + i + 1) * v];
                let err = got
                    .iter()
                    .zip(w)
                    .fold(0f32, |a, (g, w)| a.max((g - w).abs()));
                assert!(
                    err <= 1e-4 * scale,
                    "{case}: engine vs PyTorch at {s},{i}: {err}"
                );
            }
        }
        std::fs::remove_file(p).unwrap();
    }
}

#[test]
fn bad_checkpoints_are_clear_errors() {
    let cfg = std::fs::read_to_string(dir("molm").join("config.json")).unwrap();
    let weights = std::fs::read(dir("molm").join("model.safetensors")).unwrap();
    let e = read_molm(&cfg.replace("\"mlp\"", "\"gmm\""), &weights).unwrap_err();
    assert!(e.to_string().contains("gate_type"), "{e}");
    let e = read_molm(&cfg.replace("gelu_new", "relu"), &weights).unwrap_err();
    assert!(e.to_string().contains("activation"), "{e}");
    let e = read_molm("{", &weights).unwrap_err();
    assert!(e.to_string().contains("config.json"), "{e}");
    let e = read_molm(
        &cfg.replace("\"n_mlp_experts\": 5", "\"n_mlp_experts\": 6"),
        &weights,
    )
    .unwrap_err();
    assert!(
        matches!(&e, modula_core::Error::Shape { tensor, .. } if tensor.contains("mlpf.experts")),
        "{e:?}"
    );
    let e = read_molm(&cfg, &weights[..weights.len() - 10]).unwrap_err();
    assert!(e.to_string().contains("safetensors"), "{e}");
}
