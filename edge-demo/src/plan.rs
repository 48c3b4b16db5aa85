//! `modula plan`: the memory a run of a nested sub-model will use — the bytes of the weight
//! prefixes it reads from the mapped file and the exact heap arena of the engine built
//! for it (KV caches, work buffers, EMoE gate tables, the engine's own tables) — checked
//! against an engine actually built for it.

use clap::Args;
use modula_core::engine::{DenseEngine, DenseSpec};
use modula_core::Model;
use std::path::PathBuf;

/// Arguments of `modula plan`.
#[derive(Args, Debug)]
pub struct PlanArgs {
    /// Model file (dense or EMoE byte LM / classifier).
    #[arg(long)]
    model: PathBuf,
    /// Sub-model `DEPTHxFFN`, or `all` (every declared nested size; the default).
    #[arg(long, default_value = "all")]
    size: String,
    /// Context in positions (default: the position table, else 1024).
    #[arg(long)]
    context: Option<usize>,
}

fn kib(b: u64) -> String {
    format!("{:.1} KiB", b as f64 / 1024.0)
}

/// Run `modula plan`.
pub fn run(a: &PlanArgs) -> Result<(), String> {
    let at = |e: String| format!("{}: {e}", a.model.display());
    let m = Model::open(&a.model).map_err(|e| at(e.to_string()))?;
    if let Some(k @ ("moduleformer" | "seqboat" | "m2mkd-net")) = m.get_str("modula.model") {
        return Err(at(format!(
            "modula plan covers dense and EMoE files; not yet {k} files"
        )));
    }
    let spec = DenseSpec::from_model(&m).map_err(at)?;
    let ctx = a.context.unwrap_or(if spec.positions > 0 {
        spec.positions
    } else {
        1024
    });
    let sizes = if a.size == "all" {
        spec.nested_grid()
    } else {
        vec![a
            .size
            .split_once('x')
            .and_then(|(x, y)| Some((x.parse().ok()?, y.parse().ok()?)))
            .ok_or_else(|| format!("--size {}: use DEPTHxFFN, e.g. 2x128, or all", a.size))?]
    };
    // every size is planned and checked before anything is printed
    let mut rows = Vec::with_capacity(sizes.len());
    for size in sizes {
        let plan = spec.plan(ctx, size).map_err(at)?;
        let (weights, arena) = spec.submodel_bytes(&m, size, ctx).map_err(at)?;
        // the engine honours the plan: build it and compare its buffers
        let e = DenseEngine::with_capacity(&m, ctx, size).map_err(at)?;
        if e.arena_bytes() != plan || arena != plan.total() {
            return Err(format!(
                "internal: the engine for {}x{} holds {:?}, the plan says {plan:?}",
                size.0,
                size.1,
                e.arena_bytes()
            ));
        }
        rows.push((size, weights, plan));
    }
    println!(
        "{} at a context of {ctx} positions (bytes; arena = the heap of an engine built for that size):",
        a.model.display()
    );
    println!(
        "{:>9} {:>12} {:>12} {:>10} {:>9} {:>8} {:>12} {:>12}",
        "size", "weights", "KV cache", "work", "gates", "tables", "arena", "total"
    );
    for &(size, weights, plan) in &rows {
        println!(
            "{:>9} {:>12} {:>12} {:>10} {:>9} {:>8} {:>12} {:>12}",
            format!("{}x{}", size.0, size.1),
            weights,
            plan.kv_cache,
            plan.work,
            plan.gates,
            plan.tables,
            plan.total(),
            weights + plan.total()
        );
    }
    if let [(_, weights, plan)] = rows[..] {
        println!(
            "weights {} read from the mapped file + arena {} = {}",
            kib(weights),
            kib(plan.total()),
            kib(weights + plan.total())
        );
    }
    println!(
        "(checked now: an engine built for each size holds exactly this arena; its decode steps allocate nothing more — train/tests/engine_no_alloc.rs)"
    );
    Ok(())
}
