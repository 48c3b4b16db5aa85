//! The one loader (`modula_core::ModelDesc::from_model`) against the files the trainer's
//! writers produce, for every family and variant: every `modula.*` key a writer emits is
//! read by the loader and listed in its family's key table, the description names exactly
//! the tensors the file holds (with their shapes), and a value the loader does not know is
//! an error naming the key — never a silent default.
#![allow(clippy::unwrap_used)]

use modula_core::arch::{keys_of, Act, FfnKind, MixerSpec, NormKind};
use modula_core::gguf::GgufWriter;
use modula_core::{Error, Family, MetaValue, Model, ModelDesc};
use modula_train::emoe::convert_layer;
use modula_train::model::dense::{DenseConfig, DenseModel};
use modula_train::model::moduleformer::{MfConfig, MfModel};
use modula_train::model::seqboat::{SbConfig, SbModel};
use std::collections::BTreeSet;
use std::path::PathBuf;

fn tmp(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("modula-desc-{}-{n}-{tag}.gguf", std::process::id()))
}

/// Every family and variant the writers produce, as files.
fn files() -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let mut add = |tag: &str, p: PathBuf| out.push((tag.to_string(), p));
    // dense: plain with positions; nested depths/widths/heads (head-major); EMoE; classifier
    let plain = DenseModel::new(
        DenseConfig {
            max_seq: 16,
            ..DenseConfig::lm(40, 32, 2, 4, 64)
        },
        1,
    )
    .unwrap();
    let p = tmp("dense");
    plain.write_gguf(&p, 16, "t").unwrap();
    add("dense", p);
    let nested_cfg = DenseConfig {
        nested_depths: 1,
        nested_ffn: [32, 0, 0, 0, 0, 0, 0, 0],
        ..DenseConfig::lm(40, 32, 2, 4, 64)
    }
    .with_nested_heads(&[2, 4])
    .unwrap();
    let nested = DenseModel::new(nested_cfg, 2).unwrap();
    let p = tmp("nested");
    nested.write_gguf(&p, 16, "t").unwrap();
    add("dense-nested", p);
    let mut emoe = DenseModel::new(DenseConfig::lm(40, 32, 2, 4, 64), 3).unwrap();
    convert_layer(&mut emoe, 1, 4, 1, 3).unwrap();
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
    let p = tmp("emoe");
    emoe.write_gguf(&p, 16, "t").unwrap();
    add("dense-emoe", p);
    let cls = DenseModel::new(
        DenseConfig {
            classes: 3,
            causal: false,
            ..DenseConfig::lm(40, 32, 1, 2, 32)
        },
        4,
    )
    .unwrap();
    let p = tmp("cls");
    cls.write_gguf(&p, 16, "t").unwrap();
    add("dense-classifier", p);
    // ModuleFormer: MLP and linear routers, shared K = V and projected K/V, nested experts
    let mf = MfModel::new(MfConfig::lm(40, 32, 1, 4, 32), 5).unwrap();
    let p = tmp("mf");
    mf.write_gguf(&p, 16, "t").unwrap();
    add("moduleformer", p);
    let mf2 = MfModel::new(
        MfConfig {
            router_hidden: 0,
            kv_proj: true,
            nested_experts: [2, 0, 0, 0, 0, 0, 0, 0],
            ..MfConfig::lm(40, 32, 1, 4, 32)
        },
        6,
    )
    .unwrap();
    let p = tmp("mf2");
    mf2.write_gguf(&p, 16, "t").unwrap();
    add("moduleformer-linear-kv", p);
    // SeqBoat: pre-norm LM with nested depths, post-norm classifier with padding
    let sb = SbModel::new(
        SbConfig {
            nested_depths: 1,
            ..SbConfig::lm(40, 16, 2, 4)
        },
        7,
    )
    .unwrap();
    let p = tmp("sb");
    sb.write_gguf(&p, 16, "t").unwrap();
    add("seqboat", p);
    let sbc = SbModel::new(
        SbConfig {
            classes: 3,
            prenorm: false,
            pad: Some(0),
            ..SbConfig::lm(40, 16, 1, 4)
        },
        8,
    )
    .unwrap();
    let p = tmp("sbc");
    sbc.write_gguf(&p, 16, "t").unwrap();
    add("seqboat-classifier", p);
    out
}

#[test]
fn every_written_key_is_read_and_every_tensor_described() {
    for (tag, p) in files() {
        let m = Model::open(&p).unwrap();
        let (desc, read) = ModelDesc::from_model_keys(&m).unwrap_or_else(|e| panic!("{tag}: {e}"));
        let table: BTreeSet<&str> = keys_of(desc.family).collect();
        for (k, _) in m.metadata() {
            if !k.starts_with("modula.") || k.starts_with("modula.page_groups.") {
                continue;
            }
            if k == "modula.format_version" {
                continue;
            }
            assert!(
                read.iter().any(|r| r == k),
                "{tag}: the loader never reads {k}"
            );
            assert!(table.contains(k), "{tag}: {k} is not in the key table");
        }
        desc.check_tensors(&m)
            .unwrap_or_else(|e| panic!("{tag}: {e}"));
        let described: BTreeSet<String> = desc.tensors().into_iter().map(|t| t.name).collect();
        let held: BTreeSet<String> = m.tensors().map(|t| t.name().to_string()).collect();
        assert_eq!(described, held, "{tag}: described vs held tensors");
        std::fs::remove_file(&p).unwrap();
    }
}

#[test]
fn the_description_says_what_the_file_is() {
    let fs = files();
    let get = |t: &str| {
        let p = &fs.iter().find(|(tag, _)| tag == t).unwrap().1;
        ModelDesc::from_model(&Model::open(p).unwrap()).unwrap()
    };
    let d = get("dense-emoe");
    assert_eq!(d.family, Family::Dense);
    assert_eq!(d.layers(), 2);
    let (n, f) = d.blocks[1].ffn.unwrap();
    assert_eq!((n.kind, n.eps), (NormKind::LayerNorm, 1e-5));
    assert_eq!(f.act, Act::Gelu);
    assert_eq!(
        f.kind,
        FfnKind::Emoe {
            experts: 4,
            top_k: 2
        }
    );
    assert_eq!(d.blocks[0].ffn.unwrap().1.kind, FfnKind::Dense);
    let nested = get("dense-nested");
    assert_eq!(nested.nesting.depths, vec![1, 2]);
    assert_eq!(nested.nesting.ffn_widths, vec![32, 64]);
    assert_eq!(nested.nesting.heads, vec![2, 4]);
    let mf = get("moduleformer");
    let MixerSpec::StickBreaking(a) = mf.blocks[0].mixer else {
        panic!("stick-breaking mixer expected")
    };
    assert!(a.shared_kv);
    assert_eq!(mf.blocks[0].ffn.unwrap().1.act, Act::GeluTanh);
    let sb = get("seqboat-classifier");
    assert_eq!(sb.family, Family::SeqBoat);
    assert!(sb.final_norm.is_none());
    for (_, p) in fs {
        std::fs::remove_file(p).unwrap();
    }
}

/// A copy of `src` with metadata `key` set to `value`.
fn with_meta<B: AsRef<[u8]>>(src: &Model<B>, key: &str, value: MetaValue, tag: &str) -> PathBuf {
    let mut w = GgufWriter::new();
    for (k, v) in src.metadata() {
        if k == "general.alignment" || k.starts_with("modula.page_groups.") {
            continue;
        }
        w.set(k, v.to_owned_value()).unwrap();
    }
    w.set(key, value).unwrap();
    let tensors: Vec<_> = src.tensors().collect();
    for t in &tensors {
        w.add_tensor(t.name(), t.dtype(), &t.shape(), t.bytes())
            .unwrap();
    }
    let p = tmp(tag);
    w.write_to(&p).unwrap();
    p
}

#[test]
fn unknown_values_are_errors_naming_the_key() {
    let fs = files();
    let src = |t: &str| Model::open(&fs.iter().find(|(tag, _)| tag == t).unwrap().1).unwrap();
    let s = |v: &str| MetaValue::String(v.into());
    let cases = [
        ("dense", "modula.activation", s("swish")),
        // a block count no file can hold is refused before anything is allocated per block
        ("dense", "modula.block_count", MetaValue::U32(4_000_000_000)),
        (
            "moduleformer",
            "modula.block_count",
            MetaValue::U32(4_000_000_000),
        ),
        (
            "seqboat",
            "modula.block_count",
            MetaValue::U32(4_000_000_000),
        ),
        ("dense", "modula.norm", s("batchnorm")),
        ("dense", "modula.norm_epsilon", MetaValue::F32(f32::NAN)),
        ("dense", "modula.attention.kind", s("stick_breaking")),
        ("dense", "modula.attention.layout", s("kvq")),
        ("dense", "modula.model", s("llama9")),
        ("moduleformer", "modula.activation", s("tanh")),
        ("moduleformer", "modula.expert.router", s("hash")),
        ("seqboat", "modula.gau.attention_fn", s("linear")),
        ("seqboat", "modula.norm", s("scalenorm")),
    ];
    for (i, (family, key, value)) in cases.into_iter().enumerate() {
        let m = src(family);
        let p = with_meta(&m, key, value, &format!("bad{i}"));
        let err = ModelDesc::from_model(&Model::open(&p).unwrap()).unwrap_err();
        match &err {
            Error::Metadata { key: k, message } => {
                assert_eq!(k, key, "{message}");
                assert!(message.contains(key), "{message}");
            }
            other => panic!("{family} {key}: expected a metadata error, got {other:?}"),
        }
        std::fs::remove_file(&p).unwrap();
    }
    // an epsilon other than the default is honoured by the engine, not replaced
    let m = src("dense");
    let p = with_meta(&m, "modula.norm_epsilon", MetaValue::F32(1e-3), "eps");
    let other = Model::open(&p).unwrap();
    let spec = modula_core::engine::DenseSpec::from_model(&other).unwrap();
    assert_eq!(spec.eps, 1e-3);
    let mut a = modula_core::engine::DenseEngine::new(&m, 8).unwrap();
    let mut b = modula_core::engine::DenseEngine::new(&other, 8).unwrap();
    let la = a.step(3).unwrap().to_vec();
    let lb = b.step(3).unwrap().to_vec();
    assert_ne!(la, lb, "the epsilon must change the result");
    // and a silu activation is run as silu
    let ps = with_meta(&m, "modula.activation", s("silu"), "silu");
    let silu = Model::open(&ps).unwrap();
    let mut c = modula_core::engine::DenseEngine::new(&silu, 8).unwrap();
    assert_ne!(c.step(3).unwrap(), &la[..]);
    // the trainer reads through the same loader and refuses, naming the key, what it
    // does not train (rather than fine-tuning a 1e-3 / silu model as 1e-5 / GELU)
    for (file, key) in [
        (&other, "modula.norm_epsilon"),
        (&silu, "modula.activation"),
    ] {
        let e = DenseModel::read_gguf(file).unwrap_err();
        assert!(e.to_string().contains(key), "{e}");
    }
    assert!(DenseModel::read_gguf(&m).is_ok());
    for (i, family) in ["moduleformer", "seqboat"].into_iter().enumerate() {
        let src = src(family);
        let p = with_meta(
            &src,
            "modula.norm_epsilon",
            MetaValue::F32(1e-3),
            &format!("e{i}"),
        );
        let f = Model::open(&p).unwrap();
        let e = match family {
            "moduleformer" => MfModel::read_gguf(&f).map(|_| ()).unwrap_err(),
            _ => SbModel::read_gguf(&f).map(|_| ()).unwrap_err(),
        };
        assert!(
            e.to_string().contains("modula.norm_epsilon"),
            "{family}: {e}"
        );
        std::fs::remove_file(p).unwrap();
    }
    let pm = with_meta(
        &src("moduleformer"),
        "modula.activation",
        s("silu"),
        "mfsilu",
    );
    let e = MfModel::read_gguf(&Model::open(&pm).unwrap())
        .map(|_| ())
        .unwrap_err();
    assert!(e.to_string().contains("modula.activation"), "{e}");
    std::fs::remove_file(pm).unwrap();
    for p in [p, ps] {
        std::fs::remove_file(p).unwrap();
    }
    for (_, p) in fs {
        std::fs::remove_file(p).unwrap();
    }
}

#[test]
fn a_missing_or_misshapen_tensor_is_a_typed_error() {
    let fs = files();
    let src = Model::open(&fs.iter().find(|(t, _)| t == "dense").unwrap().1).unwrap();
    // drop one tensor, and give another the wrong shape
    for (i, mode) in ["drop", "shape"].into_iter().enumerate() {
        let mut w = GgufWriter::new();
        for (k, v) in src.metadata() {
            if k == "general.alignment" || k.starts_with("modula.page_groups.") {
                continue;
            }
            w.set(k, v.to_owned_value()).unwrap();
        }
        let ffn_up = "blk.1.ffn_up.weight";
        let zeros = vec![0u8; 4 * 32 * 32];
        for t in src.tensors() {
            match (mode, t.name()) {
                ("drop", n) if n == ffn_up => {}
                ("shape", n) if n == ffn_up => {
                    w.add_tensor(n, t.dtype(), &[32, 32], &zeros[..]).unwrap()
                }
                _ => w
                    .add_tensor(t.name(), t.dtype(), &t.shape(), t.bytes())
                    .unwrap(),
            }
        }
        let p = tmp(&format!("tensor{i}"));
        w.write_to(&p).unwrap();
        let m = Model::open(&p).unwrap();
        let desc = ModelDesc::from_model(&m).unwrap();
        let err = desc.check_tensors(&m).unwrap_err();
        let engine_err = modula_core::engine::open(&m, None, None).err().unwrap();
        // the trainer's reader returns the same kinds (typed errors through `train`)
        let train_err = DenseModel::read_gguf(&m).map(|_| ()).unwrap_err();
        match mode {
            "drop" => {
                assert!(err.is_missing_tensor(), "{err:?}");
                assert!(engine_err.is_missing_tensor(), "{engine_err:?}");
                assert!(train_err.is_missing_tensor(), "{train_err:?}");
            }
            _ => {
                assert!(
                    matches!(&err, Error::Shape { tensor, expected, got }
                        if tensor == ffn_up && expected == &vec![64, 32] && got == &vec![32, 32]),
                    "{err:?}"
                );
                assert!(matches!(engine_err, Error::Shape { .. }), "{engine_err:?}");
                assert!(
                    matches!(&train_err, Error::Shape { tensor, .. } if tensor == ffn_up),
                    "{train_err:?}"
                );
            }
        }
        std::fs::remove_file(&p).unwrap();
    }
    for (_, p) in fs {
        std::fs::remove_file(p).unwrap();
    }
}

#[test]
fn the_quantiser_picks_matrices_by_role() {
    // every family's file: the tensors the quantiser converts (chosen by the description's
    // layouts) are exactly the 2-D `*.weight` matrices of whole 32-weight rows — the name
    // rule files without a description still use — and every vector-layout table stays f32
    let fs = files();
    for (tag, p) in &fs {
        let m = Model::open(p).unwrap();
        let desc = ModelDesc::from_model(&m).unwrap();
        let vectors: BTreeSet<String> = desc
            .tensors()
            .into_iter()
            .filter(|t| t.layout == modula_core::arch::Layout::Vector)
            .map(|t| t.name)
            .collect();
        let (_, reports) =
            modula_core::quantize::quantize_model(&m, modula_core::DType::Q8_0).unwrap();
        for r in &reports {
            let t = m.tensor(&r.name).unwrap();
            let by_name = t.shape().len() >= 2
                && r.name.ends_with(".weight")
                && t.shape().last().unwrap() % 32 == 0;
            assert_eq!(
                r.kept.is_none(),
                by_name,
                "{tag}: {} ({:?})",
                r.name,
                r.kept
            );
            if vectors.contains(&r.name) {
                assert!(r.kept.is_some(), "{tag}: {} is a vector", r.name);
            }
        }
    }
    for (_, p) in fs {
        std::fs::remove_file(p).unwrap();
    }
}
