//! `modula plan`: the memory a run of a nested sub-model will use — the bytes of the weight
//! prefixes it reads from the mapped file and the exact heap arena of the engine built
//! for it (KV caches, work buffers, EMoE gate tables, the engine's own tables) — checked
//! against an engine actually built for it. Dense/EMoE files per `DEPTHxFFN` size (the
//! engine is built for that size); ModuleFormer files per nested expert count (one engine
//! serves every count, so the arena is the same and only the weights read differ).

use clap::Args;
use modula_core::engine::{
    ArenaPlan, DenseEngine, DenseSpec, LlamaEngine, LlamaSpec, MfEngine, MfSpec, SbEngine, SbSpec,
};
use modula_core::{Model, NestedSpec};
use std::path::PathBuf;

/// Arguments of `modula plan`.
#[derive(Args, Debug)]
pub struct PlanArgs {
    /// Model file (dense or EMoE byte LM / classifier, ModuleFormer LM, SeqBoat LM).
    #[arg(long)]
    model: PathBuf,
    /// Sub-model: `DEPTHxFFN` (dense), `N` or `ATTxFFN` experts (ModuleFormer), a depth
    /// `N` (SeqBoat), or `all`
    /// (every declared nested size; the default).
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
    match m.get_str("modula.model") {
        Some("moduleformer") => return plan_mf(a, &m),
        Some("seqboat") => return plan_sb(a, &m),
        Some(k @ "m2mkd-net") => {
            return Err(at(format!(
                "modula plan covers dense, EMoE, ModuleFormer and SeqBoat files; not {k} files \
                 (assemble an m2mKD network's modules and evaluate it with modula m2mkd)"
            )))
        }
        None if m.get_str("general.architecture").is_some() => return plan_llama(a, &m),
        _ => {}
    }
    let spec = DenseSpec::from_model(&m).map_err(|e| at(e.to_string()))?;
    let ctx = a.context.unwrap_or(if spec.positions > 0 {
        spec.positions
    } else {
        1024
    });
    let sizes: Vec<((usize, usize), Option<usize>)> = if a.size == "all" {
        let heads = spec.nested_head_list();
        spec.nested_grid()
            .into_iter()
            .flat_map(|s| {
                heads
                    .iter()
                    .map(move |&h| (s, (h < spec.heads).then_some(h)))
            })
            .collect()
    } else {
        let parts: Option<Vec<usize>> = a.size.split('x').map(|v| v.parse().ok()).collect();
        match parts.as_deref() {
            Some(&[dp, f]) => vec![((dp, f), None)],
            Some(&[dp, f, h]) => vec![((dp, f), Some(h))],
            _ => {
                return Err(format!(
                    "--size {}: use DEPTHxFFN or DEPTHxFFNxHEADS, e.g. 2x128 or 2x128x2, or all",
                    a.size
                ))
            }
        }
    };
    // every size is planned and checked before anything is printed
    let mut rows = Vec::with_capacity(sizes.len());
    for (size, heads) in sizes {
        let plan = spec.plan(ctx, size).map_err(|e| at(e.to_string()))?;
        let (weights, arena) = spec
            .submodel_bytes_heads(&m, size, heads, ctx)
            .map_err(|e| at(e.to_string()))?;
        // the engine honours the plan: build it and compare its buffers
        let mut e = DenseEngine::with_capacity(&m, ctx, size).map_err(|e| at(e.to_string()))?;
        e.set_heads(heads).map_err(|e| at(e.to_string()))?;
        if e.arena_bytes() != plan || arena != plan.total() {
            return Err(format!(
                "internal: the engine for {}x{} holds {:?}, the plan says {plan:?}",
                size.0,
                size.1,
                e.arena_bytes()
            ));
        }
        let label = match heads {
            Some(h) => format!("{}x{}x{h}", size.0, size.1),
            None => format!("{}x{}", size.0, size.1),
        };
        rows.push((label, weights, plan));
    }
    print_rows(a, ctx, &rows, "an engine built for that size");
    Ok(())
}

/// ModuleFormer: one engine (and arena) for every nested expert count.
fn plan_mf<B: AsRef<[u8]>>(a: &PlanArgs, m: &Model<B>) -> Result<(), String> {
    let at = |e: String| format!("{}: {e}", a.model.display());
    let spec = MfSpec::from_model(m).map_err(|e| at(e.to_string()))?;
    let ctx = a.context.unwrap_or(1024);
    let plan = spec.plan(ctx).map_err(|e| at(e.to_string()))?;
    let e = MfEngine::new(m, ctx).map_err(|e| at(e.to_string()))?;
    if e.arena_bytes() != plan {
        return Err(format!(
            "internal: the ModuleFormer engine holds {:?}, the plan says {plan:?}",
            e.arena_bytes()
        ));
    }
    let sizes: Vec<(usize, usize)> = if a.size == "all" {
        spec.nested_expert_list()
            .into_iter()
            .map(|c| (c, c))
            .collect()
    } else {
        let parsed = match a.size.split_once('x') {
            Some((x, y)) => x.parse().ok().zip(y.parse().ok()),
            None => a.size.parse().ok().map(|n: usize| (n, n)),
        };
        vec![parsed.ok_or_else(|| {
            format!(
                "--size {}: for a ModuleFormer file use N (experts) or ATTxFFN",
                a.size
            )
        })?]
    };
    let mut rows = Vec::with_capacity(sizes.len());
    for (att, ffn) in sizes {
        if !(1..=spec.att_experts).contains(&att) || !(1..=spec.ffn_experts).contains(&ffn) {
            return Err(at(format!(
                "--size {att}x{ffn}: the model has {} attention and {} FFN experts",
                spec.att_experts, spec.ffn_experts
            )));
        }
        let sub = m
            .submodel(NestedSpec {
                att_experts: Some(att),
                ffn_experts: Some(ffn),
                ..Default::default()
            })
            .map_err(|e| at(e.to_string()))?;
        rows.push((format!("{att}x{ffn}"), sub.weight_bytes(), plan));
    }
    print_rows(a, ctx, &rows, "the engine (all expert counts share it)");
    Ok(())
}

/// SeqBoat: constant streaming state, one engine (and arena) for every nested depth.
fn plan_sb<B: AsRef<[u8]>>(a: &PlanArgs, m: &Model<B>) -> Result<(), String> {
    let at = |e: String| format!("{}: {e}", a.model.display());
    if a.context.is_some() {
        return Err(at(
            "--context does not apply to SeqBoat (its streaming state is constant)".into(),
        ));
    }
    let spec = SbSpec::from_model(m).map_err(|e| at(e.to_string()))?;
    let plan = spec.plan();
    let e = SbEngine::new(m).map_err(|e| at(e.to_string()))?;
    if e.arena_bytes() != plan {
        return Err(format!(
            "internal: the SeqBoat engine holds {:?}, the plan says {plan:?}",
            e.arena_bytes()
        ));
    }
    let depths = if a.size == "all" {
        spec.nested_depth_list()
    } else {
        vec![a
            .size
            .parse()
            .map_err(|_| format!("--size {}: for a SeqBoat file use a depth N", a.size))?]
    };
    let mut rows = Vec::with_capacity(depths.len());
    for depth in depths {
        let sub = m
            .submodel(NestedSpec {
                depth: Some(depth),
                ..Default::default()
            })
            .map_err(|e| at(e.to_string()))?;
        rows.push((format!("depth {depth}"), sub.weight_bytes(), plan));
    }
    println!("(SeqBoat: KV cache = the constant streaming state of every layer — EMA states and attention rings; gates = EMA coefficients)");
    print_rows(a, 0, &rows, "the engine (all depths share it)");
    Ok(())
}

fn plan_llama<B: AsRef<[u8]>>(a: &PlanArgs, m: &Model<B>) -> Result<(), String> {
    let at = |e: String| format!("{}: {e}", a.model.display());
    let desc = modula_core::ModelDesc::from_model(m).map_err(|e| at(e.to_string()))?;
    let spec = LlamaSpec::from_desc(&desc).map_err(|e| at(e.to_string()))?;
    let ctx = a
        .context
        .unwrap_or_else(|| modula_core::engine::decoder::default_context(&desc, 1024));
    let plan = spec.plan(ctx).map_err(|e| at(e.to_string()))?;
    let e = LlamaEngine::new(m, ctx).map_err(|e| at(e.to_string()))?;
    if e.arena_bytes() != plan {
        return Err(format!(
            "internal: the Llama engine holds {:?}, the plan says {plan:?}",
            e.arena_bytes()
        ));
    }
    let depth = if a.size == "all" {
        spec.layers
    } else {
        a.size.parse().map_err(|_| {
            format!(
                "--size {}: for a Llama-family or GPT-2 file use a depth N",
                a.size
            )
        })?
    };
    let sub = m
        .submodel(NestedSpec {
            depth: Some(depth),
            ..Default::default()
        })
        .map_err(|e| at(e.to_string()))?;
    if spec.positions == 0 {
        println!("(Llama family: gates = the rotary cos/sin tables)");
    } else {
        println!("(GPT-2: learned positions, no rotary tables)");
    }
    print_rows(
        a,
        ctx,
        &[(format!("depth {depth}"), sub.weight_bytes(), plan)],
        "the engine",
    );
    Ok(())
}

fn print_rows(a: &PlanArgs, ctx: usize, rows: &[(String, u64, ArenaPlan)], built: &str) {
    println!(
        "{}{} (bytes; arena = the heap of {built}):",
        a.model.display(),
        if ctx > 0 {
            format!(" at a context of {ctx} positions")
        } else {
            String::new()
        }
    );
    println!(
        "{:>9} {:>12} {:>12} {:>10} {:>9} {:>8} {:>12} {:>12}",
        "size", "weights", "KV cache", "work", "gates", "tables", "arena", "total"
    );
    for (label, weights, plan) in rows {
        let weights = *weights;
        println!(
            "{:>9} {:>12} {:>12} {:>10} {:>9} {:>8} {:>12} {:>12}",
            label,
            weights,
            plan.kv_cache,
            plan.work,
            plan.gates,
            plan.tables,
            plan.total(),
            weights + plan.total()
        );
    }
    if let [(_, weights, plan)] = rows {
        let weights = *weights;
        println!(
            "weights {} read from the mapped file + arena {} = {}",
            kib(weights),
            kib(plan.total()),
            kib(weights + plan.total())
        );
    }
    println!(
        "(checked now: {built} holds exactly this arena; its decode steps allocate nothing more — train/tests/engine_no_alloc.rs)"
    );
}
