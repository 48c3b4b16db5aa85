//! `modula emoe convert`: split the FFNs of chosen blocks of a trained dense model into
//! EMoE experts (balanced k-means of the keys, contiguous expert blocks, avg-k gates) and
//! write the converted model. Fine-tune it with `modula train --init`; evaluate with
//! `modula eval --emoe-mask on|off`.

use crate::train::load_model;
use clap::{Args, Subcommand};
use modula_train::emoe::convert_layer;
use std::path::PathBuf;
use std::time::Instant;

/// `modula emoe` subcommands.
#[derive(Subcommand, Debug)]
pub enum EmoeCommand {
    /// Convert dense FFNs into emergent experts (no new parameters).
    Convert(ConvertArgs),
}

/// Arguments of `modula emoe convert`.
#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// Trained dense model (.gguf or .safetensors).
    #[arg(long = "in")]
    input: PathBuf,
    /// Output model (.gguf).
    #[arg(long)]
    out: PathBuf,
    /// Blocks to convert, comma-separated (default: the last block).
    #[arg(long)]
    layers: Option<String>,
    /// Experts per converted FFN (must divide its width).
    #[arg(long, default_value_t = 16)]
    experts: usize,
    /// Experts used per token.
    #[arg(long, default_value_t = 4)]
    top_k: usize,
    /// k-means restarts (the lowest inertia is kept).
    #[arg(long, default_value_t = 10)]
    restarts: usize,
    /// Seed of the k-means initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Run `modula emoe ...`.
pub fn run(cmd: &EmoeCommand) -> Result<(), String> {
    match cmd {
        EmoeCommand::Convert(a) => convert(a),
    }
}

fn convert(a: &ConvertArgs) -> Result<(), String> {
    crate::paths::refuse_overwrite(("--out", &a.out), &[("--in", &a.input)])?;
    let (mut model, ctx) = load_model(&a.input)?;
    if model.cfg.emoe_layers != 0 {
        return Err(format!("{} is already an EMoE model", a.input.display()));
    }
    let c = model.cfg;
    if c.nested_depths != 0 || c.nested_ffn.iter().any(|&w| w > 0) || c.nested_heads != 0 {
        return Err(format!(
            "{} is a nested (SortedNet) model (depths {:?}, FFN widths {:?}, heads {:?}): EMoE \
             experts would cut across its nested widths and no tool could read the result; \
             convert the full model trained without nesting",
            a.input.display(),
            c.nested_depth_list(),
            c.nested_ffn_list(),
            c.nested_head_list()
        ));
    }
    let layers: Vec<usize> = match &a.layers {
        None => vec![model.cfg.layers.saturating_sub(1)],
        Some(s) => s
            .split(',')
            .map(|v| {
                v.trim()
                    .parse::<usize>()
                    .map_err(|_| format!("--layers: '{v}' is not a block index"))
            })
            .collect::<Result<_, _>>()?,
    };
    if a.experts < 2 {
        return Err(format!(
            "--experts {}: an FFN splits into at least 2 experts",
            a.experts
        ));
    }
    if a.top_k == 0 || a.top_k > a.experts {
        return Err(format!("--top-k {} must be in 1..={}", a.top_k, a.experts));
    }
    let mut mask = 0u64;
    for &l in &layers {
        if l >= model.cfg.layers || l >= 64 {
            return Err(format!(
                "--layers: block {l} does not exist (the model has {})",
                model.cfg.layers
            ));
        }
        let t = Instant::now();
        let info = convert_layer(&mut model, l, a.experts, a.restarts, a.seed)?;
        println!(
            "block {l}: {} hidden units -> {} experts of {}; k-means inertia {:.4} ({} restarts, {:.2} s)",
            model.cfg.ffn,
            a.experts,
            model.cfg.ffn / a.experts,
            info.inertia,
            a.restarts,
            t.elapsed().as_secs_f64()
        );
        mask |= 1 << l;
    }
    // the same weights under an EMoE configuration (no new parameters)
    let cfg = modula_train::model::dense::DenseConfig {
        emoe_layers: mask,
        emoe_experts: a.experts,
        emoe_top_k: a.top_k,
        ..model.cfg
    };
    let mut emoe = modula_train::model::dense::DenseModel::new(cfg, 0)?;
    emoe.params.values.copy_from_slice(&model.params.values);
    let bytes = emoe.write_gguf(&a.out, ctx, "modula EMoE model")?;
    let per_token = a.top_k as f64 / a.experts as f64;
    println!(
        "wrote {} ({bytes} bytes): top-{} of {} experts = {:.0}% of the FFN compute in {} converted block(s)",
        a.out.display(),
        a.top_k,
        a.experts,
        100.0 * per_token,
        layers.len()
    );
    Ok(())
}
