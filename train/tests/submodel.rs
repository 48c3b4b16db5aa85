//! `Model::submodel`: the zero-copy view of a nested size — which tensors, and which leading
//! slice of each, a sub-model reads — on dense (depth × FFN width) and ModuleFormer
//! (experts) files, f32 and quantised; consistent with the engine's memory accounting.
#![allow(clippy::unwrap_used)]

use modula_core::engine::DenseSpec;
use modula_core::quantize::quantize_model;
use modula_core::{DType, Model, NestedSpec};
use modula_train::model::dense::{DenseConfig, DenseModel};
use modula_train::model::moduleformer::{MfConfig, MfModel};

fn tmp(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("modula-submodel-{}-{tag}.gguf", std::process::id()))
}

/// The merged ranges are sorted, disjoint, inside the file and cover exactly the weight
/// bytes (tensors never overlap).
fn check_ranges<B: AsRef<[u8]>>(m: &Model<B>, sub: &modula_core::SubModel<'_>) {
    let r = sub.ranges();
    assert!(r.windows(2).all(|w| w[0].end < w[1].start), "{r:?}");
    assert!(r.iter().all(|x| x.end <= m.bytes().len()));
    let covered: usize = r.iter().map(|x| x.end - x.start).sum();
    assert!(covered as u64 >= sub.weight_bytes());
    // gaps inside a merged range can only be alignment padding between tensors
    assert!(covered as u64 - sub.weight_bytes() < (sub.tensors().len() * m.alignment()) as u64);
}

#[test]
fn dense_submodels_are_prefixes_of_the_mapped_tensors() {
    let (d, ffn, layers) = (32usize, 64usize, 3usize);
    let cfg = DenseConfig::lm(40, d, layers, 2, ffn)
        .with_nested(&[1, 2], &[32])
        .unwrap();
    let m = DenseModel::new(cfg, 3).unwrap();
    let p = tmp("dense");
    m.write_gguf(&p, 16, "submodel test").unwrap();
    let f32_model = Model::open(&p).unwrap();
    let q = tmp("dense-q8");
    quantize_model(&f32_model, DType::Q8_0)
        .unwrap()
        .0
        .write_to(&q)
        .unwrap();
    for path in [&p, &q] {
        let model = Model::open(path).unwrap();
        let spec = DenseSpec::from_model(&model).unwrap();
        let all = model.submodel(NestedSpec::default()).unwrap();
        let total: u64 = model
            .tensors()
            .filter(|t| !t.name().starts_with("optimizer."))
            .map(|t| t.bytes().len() as u64)
            .sum();
        assert_eq!(
            all.weight_bytes(),
            total,
            "the full model reads every tensor"
        );
        for depth in 1..=layers {
            for f in [32, ffn] {
                let sub = model
                    .submodel(NestedSpec {
                        depth: Some(depth),
                        ffn: Some(f),
                        ..Default::default()
                    })
                    .unwrap();
                for t in model.tensors() {
                    let name = t.name();
                    let block = name
                        .strip_prefix("blk.")
                        .and_then(|r| r.split('.').next())
                        .and_then(|b| b.parse::<usize>().ok());
                    let v = sub.tensor(name);
                    if block.is_some_and(|l| l >= depth) {
                        assert!(v.is_none(), "{name} is past depth {depth}");
                        continue;
                    }
                    let v = v.unwrap_or_else(|| panic!("{name} missing at {depth}x{f}"));
                    // zero-copy: the view is a prefix of the mapped tensor's own bytes
                    assert_eq!(v.bytes().as_ptr(), t.bytes().as_ptr(), "{name}");
                    let ffn_rows = name.ends_with("ffn_up.weight")
                        || name.ends_with("ffn_up.bias")
                        || name.ends_with("ffn_down_t.weight");
                    if ffn_rows {
                        assert_eq!(v.shape()[0], f, "{name}");
                        assert_eq!(v.bytes().len(), t.bytes().len() / ffn * f, "{name}");
                        assert_eq!(&t.shape()[1..], &v.shape()[1..], "{name}");
                        // the view's matrix is the engine's prefix
                        if v.shape().len() == 2 {
                            let (a, b) = (v.as_matrix().unwrap(), t.as_matrix().unwrap());
                            assert_eq!((a.rows(), a.cols()), (f, b.cols()));
                        }
                    } else {
                        assert_eq!(v.bytes().len(), t.bytes().len(), "{name}");
                        assert_eq!(v.shape(), t.shape(), "{name}");
                    }
                }
                // the engine's memory accounting reads the same bytes
                let (w, _) = spec.submodel_bytes(&model, (depth, f), 16).unwrap();
                assert_eq!(sub.weight_bytes(), w, "{depth}x{f}");
                check_ranges(&model, &sub);
            }
        }
        // sizes beyond the model are errors, not empty views
        for bad in [
            NestedSpec {
                depth: Some(0),
                ..Default::default()
            },
            NestedSpec {
                depth: Some(layers + 1),
                ..Default::default()
            },
            NestedSpec {
                ffn: Some(ffn + 1),
                ..Default::default()
            },
            NestedSpec {
                ffn: Some(0),
                ..Default::default()
            },
        ] {
            assert!(model.submodel(bad).is_err(), "{bad:?}");
        }
    }
    std::fs::remove_file(&p).unwrap();
    std::fs::remove_file(&q).unwrap();
}

#[test]
fn moduleformer_submodels_read_the_first_experts_and_their_router_rows() {
    let cfg = MfConfig {
        router_hidden: 16,
        ..MfConfig::lm(40, 32, 2, 4, 32)
    };
    let m = MfModel::new(cfg, 3).unwrap();
    let p = tmp("mf");
    m.write_gguf(&p, 16, "submodel test").unwrap();
    let model = Model::open(&p).unwrap();
    let full = model.submodel(NestedSpec::default()).unwrap();
    for (att, ffn) in [(1, 4), (2, 2), (4, 1)] {
        let sub = model
            .submodel(NestedSpec {
                att_experts: Some(att),
                ffn_experts: Some(ffn),
                ..Default::default()
            })
            .unwrap();
        let mut experts_seen = 0;
        for g in model.page_groups() {
            let parts: Vec<&str> = g.name().split('.').collect();
            let (kind, e) = (parts[2], parts[3].parse::<usize>().unwrap());
            let keep = match kind {
                "attn_expert" => e < att,
                "ffn_expert" => e < ffn,
                other => panic!("unexpected group {other}"),
            };
            for &i in g.tensor_indices() {
                let t = model.tensor_at(i);
                assert_eq!(sub.tensor(t.name()).is_some(), keep, "{}", t.name());
                experts_seen += usize::from(keep);
            }
        }
        assert!(experts_seen > 0);
        for l in 0..2 {
            for (router, e) in [("attn_router", att), ("ffn_router", ffn)] {
                let name = format!("blk.{l}.{router}.weight");
                let v = sub.tensor(&name).unwrap();
                assert_eq!(v.shape()[0], e, "{name}");
                let t = model.tensor(&name).unwrap();
                assert_eq!(v.bytes(), &t.bytes()[..t.bytes().len() / 4 * e]);
            }
        }
        assert!(sub.weight_bytes() < full.weight_bytes());
        check_ranges(&model, &sub);
    }
    // experts past the mixture are an error
    assert!(model
        .submodel(NestedSpec {
            att_experts: Some(5),
            ..Default::default()
        })
        .is_err());
    std::fs::remove_file(&p).unwrap();
}
