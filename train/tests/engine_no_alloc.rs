//! The decode engines allocate nothing per step: a counting global allocator (this test
//! binary only) watches the calling thread while `step` runs, after the engine is built.
//! Covers the dense engine (f32 and an EMoE-converted block) and the ModuleFormer engine
//! (K = V cache and projected K/V), each on f32 and Q8_0 files.
#![allow(clippy::unwrap_used)]

use modula_core::engine::{DenseEngine, MfEngine, SbEngine};
use modula_core::quantize::quantize_model;
use modula_core::{DType, Model};
use modula_train::model::dense::{DenseConfig, DenseModel};
use modula_train::model::moduleformer::{MfConfig, MfModel};
use modula_train::model::seqboat::{SbConfig, SbModel};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    static WATCH: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
    /// Net bytes allocated (allocations minus frees) while watching.
    static NET: Cell<i64> = const { Cell::new(0) };
}

fn add_net(n: i64) {
    if WATCH.with(Cell::get) {
        NET.with(|c| c.set(c.get() + n));
    }
}

// SAFETY: forwards every call to the system allocator; only counts on the side (the
// thread-locals are const-initialised and never allocate).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if WATCH.with(Cell::get) {
            COUNT.with(|c| c.set(c.get() + 1));
        }
        add_net(l.size() as i64);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        add_net(-(l.size() as i64));
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if WATCH.with(Cell::get) {
            COUNT.with(|c| c.set(c.get() + 1));
        }
        add_net(n as i64 - l.size() as i64);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Allocations made by `f` on this thread.
fn allocations(f: impl FnOnce()) -> u64 {
    COUNT.with(|c| c.set(0));
    WATCH.with(|w| w.set(true));
    f();
    WATCH.with(|w| w.set(false));
    COUNT.with(Cell::get)
}

/// Net heap bytes `f` leaves allocated on this thread, and its result.
fn net_bytes<T>(f: impl FnOnce() -> T) -> (i64, T) {
    NET.with(|c| c.set(0));
    WATCH.with(|w| w.set(true));
    let r = f();
    WATCH.with(|w| w.set(false));
    (NET.with(Cell::get), r)
}

fn files(tag: &str, write: impl Fn(&std::path::Path)) -> Vec<std::path::PathBuf> {
    let p = std::env::temp_dir().join(format!("modula-noalloc-{tag}-{}.gguf", std::process::id()));
    write(&p);
    let (w, _) = quantize_model(&Model::open(&p).unwrap(), DType::Q8_0).unwrap();
    let q = p.with_extension("q8.gguf");
    w.write_to(&q).unwrap();
    vec![p, q]
}

#[test]
fn decode_steps_do_not_allocate() {
    modula_core::kernels::par::set_threads(1);
    let dense = DenseModel::new(
        DenseConfig {
            emoe_layers: 0b10,
            emoe_experts: 4,
            emoe_top_k: 2,
            ..DenseConfig::lm(64, 32, 2, 2, 64)
        },
        1,
    )
    .unwrap();
    for p in files("dense", |p| {
        dense.write_gguf(p, 64, "t").unwrap();
    }) {
        let m = Model::open(&p).unwrap();
        let mut e = DenseEngine::new(&m, 64).unwrap();
        e.step(1).unwrap();
        let n = allocations(|| {
            for i in 0..20 {
                e.step(i % 64).unwrap();
            }
        });
        assert_eq!(
            n,
            0,
            "dense engine allocated {n} times in 20 steps ({})",
            p.display()
        );
        // switching nested sub-models between requests allocates nothing either (narrower
        // FFNs only at depth 1: block 1 is an EMoE block)
        let n = allocations(|| {
            for size in [(1, 32), (2, 64), (1, 16)] {
                e.set_submodel(Some(size)).unwrap();
                for i in 0..5 {
                    e.step(i).unwrap();
                }
            }
        });
        assert_eq!(n, 0, "switching sub-models allocated {n} times");
        // the planned arena is exactly what an engine built for a size holds on the heap
        let spec = e.spec();
        for (ctx, cap) in [(64, (1, 32)), (17, (1, 64)), (64, (2, 64)), (5, (2, 64))] {
            let plan = spec.plan(ctx, cap).unwrap();
            let (net, e2) = net_bytes(|| DenseEngine::with_capacity(&m, ctx, cap).unwrap());
            let mut e2 = e2;
            assert_eq!(net, plan.total() as i64, "{cap:?} at {ctx}: {plan:?}");
            assert_eq!(e2.arena_bytes(), plan, "{cap:?} at {ctx}");
            // it decodes a full context without allocating, and refuses bigger sizes
            let n = allocations(|| {
                for i in 0..ctx as u32 {
                    e2.step(i % 64).unwrap();
                }
            });
            assert_eq!(n, 0, "{cap:?}: {n} allocations");
            assert!(e2.step(1).unwrap_err().to_string().contains("full"));
            if cap != (2, 64) {
                let err = e2.set_submodel(Some((2, 64))).unwrap_err();
                assert!(err.to_string().contains("capacity"), "{err}");
            }
            assert_eq!(
                spec.submodel_bytes(&m, cap, ctx).unwrap().1,
                plan.total(),
                "submodel_bytes uses the plan"
            );
        }
        assert!(spec
            .plan(0, (1, 32))
            .unwrap_err()
            .to_string()
            .contains("context 0"));
        assert!(spec
            .plan(64, (2, 32))
            .unwrap_err()
            .to_string()
            .contains("EMoE"));
        assert!(spec
            .plan(64, (3, 64))
            .unwrap_err()
            .to_string()
            .contains("outside"));
        std::fs::remove_file(p).unwrap();
    }
    for (tag, cfg) in [
        ("mf", MfConfig::lm(64, 32, 2, 4, 32)),
        (
            "mfkv",
            MfConfig {
                kv_proj: true,
                heads: 2,
                att_hidden: 64,
                router_hidden: 0,
                ..MfConfig::lm(64, 32, 2, 4, 32)
            },
        ),
    ] {
        let mf = MfModel::new(cfg, 1).unwrap();
        for p in files(tag, |p| {
            mf.write_gguf(p, 64, "t").unwrap();
        }) {
            let m = Model::open(&p).unwrap();
            let mut e = MfEngine::new(&m, 64).unwrap();
            e.step(1).unwrap();
            let n = allocations(|| {
                for i in 0..20 {
                    e.step(i % 64).unwrap();
                }
            });
            assert_eq!(
                n,
                0,
                "{tag} engine allocated {n} times in 20 steps ({})",
                p.display()
            );
            // and the counter does count: building an engine allocates
            assert!(allocations(|| drop(MfEngine::new(&m, 8).unwrap())) > 0);
            // the planned arena is exactly what an engine holds on the heap, at any context
            let spec = e.spec();
            for ctx in [1, 17, 64] {
                let (net, e2) = net_bytes(|| MfEngine::new(&m, ctx).unwrap());
                let plan = spec.plan(ctx).unwrap();
                assert_eq!(net, plan.total() as i64, "{tag} at {ctx}: {plan:?}");
                assert_eq!(e2.arena_bytes(), plan, "{tag} at {ctx}");
            }
            assert!(spec.plan(0).is_err());
            std::fs::remove_file(p).unwrap();
        }
    }
    // SeqBoat: streaming steps (skipped and activated tokens, the ring wrapping) and a
    // causal classifier's steps and classify()
    let mut lm = SbConfig::lm(64, 32, 2, 4);
    lm.ndim = 4;
    let mut cls = lm;
    cls.classes = 5;
    cls.pad = Some(0);
    for (tag, cfg) in [("sb", lm), ("sbcls", cls)] {
        let sb = SbModel::new(cfg, 3).unwrap();
        for p in files(tag, |p| {
            sb.write_gguf(p, 64, "t").unwrap();
        }) {
            let m = Model::open(&p).unwrap();
            let mut e = SbEngine::new(&m).unwrap();
            // lean towards activation so the ring fills and wraps within the test
            e.set_act_bias(-1.0).unwrap();
            e.step(1).unwrap();
            let n = allocations(|| {
                for i in 0..40 {
                    e.step(i % 64).unwrap();
                }
                if cfg.classes > 0 {
                    e.classify().unwrap();
                }
            });
            let (act, _) = e.activations();
            assert!(act.iter().all(|&a| a > 4), "the ring wrapped: {act:?}");
            assert_eq!(n, 0, "{tag} engine allocated {n} times ({})", p.display());
            // the planned arena is exactly what an engine holds on the heap
            let plan = e.spec().plan();
            let (net, e2) = net_bytes(|| SbEngine::new(&m).unwrap());
            assert_eq!(net, plan.total() as i64, "{tag}: {plan:?}");
            assert_eq!(e2.arena_bytes(), plan, "{tag}");
            std::fs::remove_file(p).unwrap();
        }
    }
    modula_core::kernels::par::set_threads(0);
}
