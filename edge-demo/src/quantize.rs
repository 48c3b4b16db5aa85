//! `modula quantize`: convert a model file's weight matrices to Q8_0, Q4_0, F16 or BF16 and
//! print each tensor's error against the original; `--type mixed` keeps the experts a
//! calibration set uses most at a higher precision than the rest, under a size budget.

use clap::Args;
use modula_core::quantize::{parse_target, quantize_model, quantize_model_with};
use modula_core::DType;
use modula_core::Model;
use modula_train::model::mf_edit::plan_mixed;
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
    /// Target type: q8_0, q4_0, f16, bf16, or mixed (ModuleFormer files: per-expert
    /// precision by usage on --calib data under --budget-mb).
    #[arg(long = "type")]
    ty: String,
    /// mixed: size budget of the tensor data in MiB.
    #[arg(long)]
    budget_mb: Option<f64>,
    /// mixed: calibration data (text file or kjv; its validation split is used).
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
    /// mixed: type of the hot experts.
    #[arg(long, default_value = "q8_0")]
    hot: String,
    /// mixed: type of the cold experts.
    #[arg(long, default_value = "q4_0")]
    cold: String,
    /// mixed: which experts get the hot type first — `used` (most used; the method) or
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
    let m = Model::open(&a.input).map_err(|e| format!("{}: {e}", a.input.display()))?;
    let (w, reports) = if a.ty == "mixed" {
        mixed(a, &m)?
    } else {
        quantize_model(&m, parse_target(&a.ty)?)?
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

/// `--type mixed`: measure expert usage on the calibration data, plan, quantise.
fn mixed<B: AsRef<[u8]>>(a: &QuantizeArgs, m: &Model<B>) -> Result<Quantized, String> {
    if m.get_str("modula.model") != Some("moduleformer") {
        return Err(
            "--type mixed needs a ModuleFormer file (one tensor per expert); for other models use a single type"
                .into(),
        );
    }
    let budget = a
        .budget_mb
        .filter(|b| b.is_finite() && *b > 0.0)
        .ok_or("--type mixed needs --budget-mb (a positive size in MiB)")?;
    let calib = a
        .calib
        .clone()
        .ok_or("--type mixed needs calibration data (--calib PATH|kjv)")?;
    let (hot, cold, base) = (
        parse_target(&a.hot)?,
        parse_target(&a.cold)?,
        parse_target(&a.base)?,
    );
    let (model, _) = MfModel::read_gguf(m).map_err(|e| format!("{}: {e}", a.input.display()))?;
    let data = crate::train::DataArgs::for_text(calib, a.calib_slice.clone(), a.calib_seq);
    let (ds, seq) = data.load()?;
    if ds.shape().vocab != model.cfg.vocab || ds.shape().classes > 0 {
        return Err("the calibration data does not fit the model (vocabulary or task)".into());
    }
    let mut usage = model.expert_usage(ds.as_ref(), a.calib_batches, 16, seq, 1)?;
    let measured = usage.clone();
    match a.hot_pick.as_str() {
        "used" => {}
        "least-used" => {
            for u in usage.iter_mut() {
                let mx = u.iter().copied().max().unwrap_or(0);
                u.iter_mut().for_each(|v| *v = mx - *v);
            }
        }
        other => return Err(format!("--hot-pick {other}: use used or least-used")),
    }
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
    let plan = plan_mixed(
        &tensors,
        &usage,
        (budget * 1048576.0) as u64,
        hot,
        cold,
        base,
    )?;
    let share_hot: f64 = {
        let mut s = 0.0;
        for &(r, e) in &plan.hot {
            let sum: u64 = measured[r].iter().sum();
            s += measured[r][e] as f64 / sum.max(1) as f64;
        }
        s / usage.len().max(1) as f64
    };
    println!(
        "mixed plan: {} of {} experts at {hot} (they carry {:.1}% of the routed traffic on {}), the rest at {cold}, other matrices at {base}; tensor data {:.2} MiB of a {budget:.2} MiB budget",
        plan.hot.len(),
        plan.experts,
        100.0 * share_hot,
        ds.describe(),
        plan.bytes as f64 / 1048576.0
    );
    let types = plan.types;
    quantize_model_with(
        m,
        &|name| types.get(name).copied().unwrap_or(DType::F32),
        cold,
    )
}
