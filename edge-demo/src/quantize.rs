//! `modula quantize`: convert a model file's weight matrices to Q8_0, Q4_0, Q4_K, Q6_K, F16
//! or BF16 (or llama.cpp's Q4_K_M mix) and
//! print each tensor's error against the original; `--type mixed` keeps the weights a
//! device reads most — the experts a calibration set routes to, the slices its nested
//! sub-models read — at a higher precision than the rest, under a size budget.

use clap::Args;
use modula_core::engine::{DenseSpec, SbSpec};
use modula_core::quantize::{parse_target, quantize_model_with, quantize_named};
use modula_core::DType;
use modula_core::Model;
use modula_train::model::mixed::{self, plan_mixed_units, MixedPlan, Unit};
use modula_train::model::moduleformer::MfModel;
use std::path::PathBuf;

/// Arguments of `modula quantize`.
#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// Input model (GGUF, f32 weights).
    #[arg(long = "in")]
    input: PathBuf,
    /// Output model.
    #[arg(long)]
    out: PathBuf,
    /// Target type: q8_0, q4_0, q4_k, q6_k, f16, bf16; q4_k_m (llama.cpp's Q4_K_M mix:
    /// Q4_K, with Q6_K for the head and for the value and FFN down projections of the
    /// first and last eighth of the layers and every third between); or mixed (precision by usage under
    /// --budget-mb: ModuleFormer experts by their routed traffic on --calib data, dense and
    /// SeqBoat blocks by how much of them the nested sub-models in --sizes read).
    #[arg(long = "type")]
    ty: String,
    /// mixed: how often the device runs each nested sub-model, `SIZE[:WEIGHT],…` (weight
    /// 1 when omitted) — dense `DEPTHxFFN` or `DEPTHxFFNxHEADS`, ModuleFormer `N` or
    /// `ATTxFFN` experts, SeqBoat a depth — or `all` (the default): every nested size the
    /// file declares, equally often.
    #[arg(long, default_value = "all")]
    sizes: String,
    /// mixed: size budget of the tensor data in MiB.
    #[arg(long)]
    budget_mb: Option<f64>,
    /// mixed, ModuleFormer: calibration data (text file or kjv; its validation split is
    /// used).
    #[arg(long)]
    calib: Option<String>,
    /// mixed: part of the calibration text, A:B fractions of its bytes.
    #[arg(long)]
    calib_slice: Option<String>,
    /// mixed: calibration sequence length.
    #[arg(long, default_value_t = 64)]
    calib_seq: usize,
    /// mixed: calibration batches of 16 sequences.
    #[arg(long, default_value_t = 16)]
    calib_batches: usize,
    /// mixed: type of the hot units (experts, or blocks' attention / FFN matrices).
    #[arg(long, default_value = "q8_0")]
    hot: String,
    /// mixed: type of the cold units.
    #[arg(long, default_value = "q4_0")]
    cold: String,
    /// mixed: which units get the hot type first — `used` (most used; the method) or
    /// `least-used` (the control experiment).
    #[arg(long, default_value = "used")]
    hot_pick: String,
    /// mixed: type of every other weight matrix (embedding, head, routers, K/V).
    #[arg(long, default_value = "q8_0")]
    base: String,
}

fn human(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.2} MiB", b as f64 / f64::from(1 << 20))
    } else {
        format!("{:.1} KiB", b as f64 / 1024.0)
    }
}

/// Run `modula quantize`.
pub fn run(a: &QuantizeArgs) -> Result<(), String> {
    let calib = a.calib.as_deref().map(std::path::Path::new);
    let mut inputs = vec![("--in", a.input.as_path())];
    inputs.extend(calib.map(|c| ("--calib", c)));
    crate::paths::refuse_overwrite(("--out", &a.out), &inputs)?;
    let m = Model::open(&a.input).map_err(|e| format!("{}: {e}", a.input.display()))?;
    let (w, reports) = if a.ty == "mixed" {
        mixed(a, &m)?
    } else {
        quantize_named(&m, &a.ty)?
    };
    let total = w
        .write_to(&a.out)
        .map_err(|e| format!("{}: {e}", a.out.display()))?;
    println!(
        "{:<34} {:>6} {:>11} {:>11} {:>9}  bytes",
        "tensor", "type", "RMSE", "max |err|", "rel RMSE"
    );
    let (mut before, mut after) = (0u64, 0u64);
    for r in &reports {
        before += r.bytes.0;
        after += r.bytes.1;
        match &r.kept {
            Some(why) => println!("{:<34} {:>6}  ({why})", r.name, r.dtype.to_string()),
            None => println!(
                "{:<34} {:>6} {:>11.3e} {:>11.3e} {:>8.3}%  {} -> {}",
                r.name,
                r.dtype.to_string(),
                r.rmse,
                r.max_abs,
                100.0 * r.rel_rmse,
                human(r.bytes.0),
                human(r.bytes.1)
            ),
        }
    }
    println!(
        "tensor data {} -> {} ({:.2}x smaller); wrote {} ({})",
        human(before),
        human(after),
        before as f64 / after.max(1) as f64,
        a.out.display(),
        human(total)
    );
    Ok(())
}

type Quantized = (
    modula_core::gguf::GgufWriter<'static>,
    Vec<modula_core::quantize::TensorReport>,
);

/// The share of each unit, and how to find a tensor's unit.
type Usage = (Box<dyn Fn(Unit) -> f64>, fn(&str) -> Option<Unit>);

/// `--type mixed`: measure usage (routed traffic and/or sub-model reads), plan, quantise.
fn mixed<B: AsRef<[u8]>>(a: &QuantizeArgs, m: &Model<B>) -> Result<Quantized, String> {
    let budget = a
        .budget_mb
        .filter(|b| b.is_finite() && *b > 0.0)
        .ok_or("--type mixed needs --budget-mb (a positive size in MiB)")?;
    let (hot, cold, base) = (
        parse_target(&a.hot)?,
        parse_target(&a.cold)?,
        parse_target(&a.base)?,
    );
    let least = match a.hot_pick.as_str() {
        "used" => false,
        "least-used" => true,
        other => return Err(format!("--hot-pick {other}: use used or least-used")),
    };
    let kind = m.get_str("modula.model").unwrap_or("").to_string();
    let mf = kind == "moduleformer";
    if !mf && a.calib.is_some() {
        return Err(format!(
            "--calib: a {kind} file's usage is its sub-models' (--sizes), which read fixed \
             slices of the weights; calibration data is for ModuleFormer expert routing"
        ));
    }
    let (share, unit_of): Usage = match kind.as_str() {
        "moduleformer" => mf_usage(a, m)?,
        "dense" => dense_usage(a, m)?,
        "seqboat" => seqboat_usage(a, m)?,
        other => {
            return Err(format!(
                "--type mixed needs a ModuleFormer, dense or SeqBoat file, not '{other}'; use a single type"
            ))
        }
    };
    let tensors: Vec<(String, u64, usize, u64)> = m
        .tensors()
        .map(|t| {
            let shape = t.shape();
            let cols = if shape.len() >= 2 {
                shape[shape.len() - 1]
            } else {
                0
            };
            (
                t.name().to_string(),
                t.n_elements(),
                cols,
                t.bytes().len() as u64,
            )
        })
        .collect();
    let plan: MixedPlan = plan_mixed_units(
        &tensors,
        &unit_of,
        &share,
        least,
        (budget * 1048576.0) as u64,
        hot,
        cold,
        base,
    )?;
    let read = plan.hot_read_share;
    let what = if mf { "experts" } else { "block units" };
    println!(
        "mixed plan: {} of {} {what} at {hot} (they hold {:.1}% of the unit weights a token reads{}), the rest at {cold}, other matrices at {base}; tensor data {:.2} MiB of a {budget:.2} MiB budget",
        plan.hot.len(),
        plan.units,
        100.0 * read,
        if mf {
            format!(
                "; {:.1}% of the routed traffic",
                100.0 * plan.hot.iter().map(|&u| share(u)).sum::<f64>()
                    / (2 * m.get_u32("modula.block_count").unwrap_or(1).max(1)) as f64
            )
        } else {
            String::new()
        },
        plan.bytes as f64 / 1048576.0
    );
    if !mf && !plan.hot.is_empty() {
        let names: Vec<String> = plan
            .hot
            .iter()
            .map(|&(l, k)| {
                let part = match (kind.as_str(), k) {
                    ("dense", 0) => " attention",
                    ("dense", _) => " FFN",
                    _ => "",
                };
                format!("blk.{l}{part} ({:.2})", share((l, k)))
            })
            .collect();
        println!(
            "hot units in the order picked (share of the unit a token reads): {}",
            names.join(", ")
        );
    }
    let types = plan.types;
    quantize_model_with(
        m,
        &|name| types.get(name).copied().unwrap_or(DType::F32),
        cold,
    )
}

/// ModuleFormer: each expert's share of its router's traffic on the calibration data,
/// measured at every size of `--sizes` (a nested size routes among its first experts
/// only) and averaged with the sizes' weights.
fn mf_usage<B: AsRef<[u8]>>(a: &QuantizeArgs, m: &Model<B>) -> Result<Usage, String> {
    let calib = a
        .calib
        .clone()
        .ok_or("--type mixed needs calibration data (--calib PATH|kjv) for a ModuleFormer file")?;
    let (mut model, _) =
        MfModel::read_gguf(m).map_err(|e| format!("{}: {e}", a.input.display()))?;
    let mix: Vec<((usize, usize), f64)> = if a.sizes == "all" {
        let list = model.cfg.nested_expert_list();
        list.into_iter().map(|c| ((c, c), 1.0)).collect()
    } else {
        mixed::parse_mix(&a.sizes, &|sz: &str| {
            let parsed = match sz.split_once('x') {
                Some((x, y)) => x.parse().ok().zip(y.parse().ok()),
                None => sz.parse().ok().map(|n: usize| (n, n)),
            };
            parsed.ok_or_else(|| {
                modula_core::Error::input(format!(
                    "--sizes {sz}: for a ModuleFormer file use N (experts) or ATTxFFN"
                ))
            })
        })?
    };
    let data = crate::train::DataArgs::for_text(calib, a.calib_slice.clone(), a.calib_seq);
    let (ds, seq) = data.load()?;
    if ds.shape().vocab != model.cfg.vocab || ds.shape().classes > 0 {
        return Err("the calibration data does not fit the model (vocabulary or task)".into());
    }
    let mut measured = Vec::new();
    for &(size, w) in &mix {
        model.nested = Some(size);
        model
            .active_experts()
            .map_err(|e| format!("--sizes: {e}"))?;
        let usage = model.expert_usage(ds.as_ref(), a.calib_batches, 16, seq, 1)?;
        measured.push((usage, w));
    }
    let shares = mixed::expert_shares(&measured);
    println!(
        "usage: routed traffic on {} at {}",
        ds.describe(),
        describe_mix(&mix, |&(x, y)| format!("{x}x{y} experts"))
    );
    Ok((
        Box::new(move |u| mixed::share_of(&shares, u)),
        modula_train::model::mf_edit::expert_of_tensor,
    ))
}

/// Dense: how much of each block's attention and FFN matrices the sizes of `--sizes` read.
fn dense_usage<B: AsRef<[u8]>>(a: &QuantizeArgs, m: &Model<B>) -> Result<Usage, String> {
    let s = DenseSpec::from_model(m).map_err(|e| format!("{}: {e}", a.input.display()))?;
    let mix: Vec<((usize, usize, usize), f64)> = if a.sizes == "all" {
        let heads = s.nested_head_list();
        s.nested_grid()
            .into_iter()
            .flat_map(|(dp, f)| heads.iter().map(move |&h| ((dp, f, h), 1.0)))
            .collect()
    } else {
        mixed::parse_mix(&a.sizes, &|sz: &str| {
            let parts: Option<Vec<usize>> = sz.split('x').map(|v| v.parse().ok()).collect();
            let (dp, f, h) = match parts.as_deref() {
                Some(&[dp, f]) => (dp, f, s.heads),
                Some(&[dp, f, h]) => (dp, f, h),
                _ => {
                    return Err(modula_core::Error::input(format!(
                        "--sizes {sz}: for a dense file use DEPTHxFFN or DEPTHxFFNxHEADS"
                    )))
                }
            };
            if !(1..=s.layers).contains(&dp) || !(1..=s.ffn).contains(&f) {
                return Err(modula_core::Error::input(format!(
                    "--sizes {sz}: the model has {} blocks and {} FFN units",
                    s.layers, s.ffn
                )));
            }
            if !(1..=s.heads).contains(&h) || (h < s.heads && !s.head_major) {
                return Err(modula_core::Error::input(format!(
                    "--sizes {sz}: the model has {} heads{}",
                    s.heads,
                    if s.head_major {
                        ""
                    } else {
                        " and does not nest them"
                    }
                )));
            }
            Ok((dp, f, h))
        })?
    };
    println!(
        "usage: sub-model reads at {}",
        describe_mix(&mix, |&(dp, f, h)| format!("{dp}x{f}x{h}"))
    );
    let (ffn, heads) = (s.ffn, s.heads);
    Ok((
        Box::new(move |u| mixed::dense_share(u, &mix, ffn, heads)),
        mixed::dense_unit,
    ))
}

/// SeqBoat: which blocks the depths of `--sizes` run.
fn seqboat_usage<B: AsRef<[u8]>>(a: &QuantizeArgs, m: &Model<B>) -> Result<Usage, String> {
    let s = SbSpec::from_model(m).map_err(|e| format!("{}: {e}", a.input.display()))?;
    let mix: Vec<(usize, f64)> = if a.sizes == "all" {
        s.nested_depth_list()
            .into_iter()
            .map(|d| (d, 1.0))
            .collect()
    } else {
        mixed::parse_mix(&a.sizes, &|sz: &str| {
            sz.parse::<usize>()
                .ok()
                .filter(|d| (1..=s.layers).contains(d))
                .ok_or_else(|| {
                    modula_core::Error::input(format!(
                        "--sizes {sz}: for a SeqBoat file use a depth in 1..={}",
                        s.layers
                    ))
                })
        })?
    };
    println!(
        "usage: sub-model reads at {}",
        describe_mix(&mix, |d| format!("depth {d}"))
    );
    Ok((
        Box::new(move |u| mixed::depth_share(u, &mix)),
        mixed::block_unit,
    ))
}

/// `2x512x4 (weight 3), 4x1024x4 (weight 1)`.
fn describe_mix<S>(mix: &[(S, f64)], f: impl Fn(&S) -> String) -> String {
    mix.iter()
        .map(|(s, w)| format!("{} (weight {w})", f(s)))
        .collect::<Vec<_>>()
        .join(", ")
}
