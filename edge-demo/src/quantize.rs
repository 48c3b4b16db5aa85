//! `modula quantize`: convert a model file's weight matrices to Q8_0, Q4_0, F16 or BF16 and
//! print each tensor's error against the original.

use clap::Args;
use modula_core::quantize::{parse_target, quantize_model};
use modula_core::Model;
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
    /// Target type: q8_0, q4_0, f16 or bf16.
    #[arg(long = "type")]
    ty: String,
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
    let target = parse_target(&a.ty)?;
    let m = Model::open(&a.input).map_err(|e| format!("{}: {e}", a.input.display()))?;
    let (w, reports) = quantize_model(&m, target)?;
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
