//! `modula moduleformer ...`: extend a trained model with new experts (only they train, on
//! new data), prune experts by their usage on a data set (or at random, the baseline), and
//! import Hugging Face MoLM checkpoints.

use crate::train::{describe, run_extend, DataArgs, TrainArgs};
use clap::{Args, Subcommand};
use modula_core::Model;
use modula_train::model::mf_edit::{most_used, random_experts};
use modula_train::model::mf_io::read_molm;
use modula_train::model::moduleformer::MfModel;
use modula_train::trainer::eval_model;
use std::path::PathBuf;

/// `modula moduleformer` subcommands (parsed once per process; boxing the large variant
/// would buy nothing).
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum MfCommand {
    /// Add experts to a trained model (--init) and train only them and their router rows on
    /// new data (all `modula train` options apply).
    Extend(ExtendArgs),
    /// Keep the most used (or random) experts of every mixture; write the smaller model.
    Prune(PruneArgs),
    /// Convert a Hugging Face MoLM checkpoint (config.json + model.safetensors) to GGUF.
    Import(ImportArgs),
}

/// Arguments of `modula moduleformer extend`.
#[derive(Args, Debug)]
pub struct ExtendArgs {
    /// New experts per mixture (attention and FFN).
    #[arg(long, default_value_t = 4)]
    new_experts: usize,
    #[command(flatten)]
    train: TrainArgs,
}

/// Arguments of `modula moduleformer prune`.
#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Trained ModuleFormer model (.gguf).
    #[arg(long = "in")]
    input: PathBuf,
    /// Pruned model (.gguf).
    #[arg(long)]
    out: PathBuf,
    /// Data whose validation split measures usage (and quality before/after).
    #[command(flatten)]
    data: DataArgs,
    /// Attention experts kept per block.
    #[arg(long)]
    keep_att: usize,
    /// FFN experts kept per block.
    #[arg(long)]
    keep_ffn: usize,
    /// Keep a random set (seeded) instead of the most used: the baseline.
    #[arg(long)]
    random: Option<u64>,
    /// Sequences per batch.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Batches to measure usage and quality on.
    #[arg(long, default_value_t = 16)]
    batches: usize,
    /// Seed of the validation windows.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Threads for the kernels.
    #[arg(long)]
    threads: Option<usize>,
}

/// Arguments of `modula moduleformer import`.
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// Directory with config.json and model.safetensors (Hugging Face MoLM layout).
    #[arg(long)]
    hf: PathBuf,
    /// Output model (.gguf).
    #[arg(long)]
    out: PathBuf,
}

/// Run `modula moduleformer ...`.
pub fn run(cmd: &MfCommand) -> Result<(), String> {
    match cmd {
        MfCommand::Extend(a) => run_extend(&a.train, a.new_experts),
        MfCommand::Prune(a) => prune(a),
        MfCommand::Import(a) => import(a),
    }
}

fn open(p: &PathBuf) -> Result<(MfModel, usize), String> {
    let f = Model::open(p).map_err(|e| format!("{}: {e}", p.display()))?;
    MfModel::read_gguf(&f).map_err(|e| format!("{}: {e}", p.display()))
}

fn prune(a: &PruneArgs) -> Result<(), String> {
    let data = std::path::Path::new(&a.data.data);
    crate::paths::refuse_overwrite(("--out", &a.out), &[("--in", &a.input), ("--data", data)])?;
    if let Some(t) = a.threads {
        crate::set_threads(t)?;
    }
    let (m, ctx) = open(&a.input)?;
    let (data, seq) = a.data.load()?;
    if data.shape().vocab != m.cfg.vocab || data.shape().classes > 0 {
        return Err("the model does not fit this data (vocabulary or task)".into());
    }
    let before = eval_model(&m, data.as_ref(), a.batches, a.batch, seq, a.seed)?;
    let usage = m.expert_usage(data.as_ref(), a.batches, a.batch, seq, a.seed)?;
    let c = m.cfg;
    let (att, ffn) = match a.random {
        Some(s) => random_experts(
            c.layers,
            c.att_experts,
            a.keep_att,
            c.ffn_experts,
            a.keep_ffn,
            s,
        ),
        None => most_used(&usage, a.keep_att, a.keep_ffn),
    };
    let pruned = m.prune(&att, &ffn)?;
    println!(
        "usage on {} (pairs per expert; kept marked *):",
        data.describe()
    );
    for (r, u) in usage.iter().enumerate() {
        let keep = if r % 2 == 0 { &att[r / 2] } else { &ffn[r / 2] };
        let total: u64 = u.iter().sum::<u64>().max(1);
        let cells: Vec<String> = u
            .iter()
            .enumerate()
            .map(|(e, &n)| {
                format!(
                    "{e}:{:.1}%{}",
                    100.0 * n as f64 / total as f64,
                    if keep.contains(&e) { "*" } else { "" }
                )
            })
            .collect();
        println!(
            "  block {} {:<9} {}",
            r / 2,
            if r % 2 == 0 { "attention" } else { "ffn" },
            cells.join(" ")
        );
    }
    let after = eval_model(&pruned, data.as_ref(), a.batches, a.batch, seq, a.seed)?;
    let bytes = pruned.write_gguf(&a.out, ctx, "modula moduleformer (pruned)")?;
    println!(
        "kept {} of {} attention and {} of {} FFN experts per block ({}): {} -> {} parameters",
        a.keep_att,
        c.att_experts,
        a.keep_ffn,
        c.ffn_experts,
        if a.random.is_some() {
            "random"
        } else {
            "most used"
        },
        m.params.len(),
        pruned.params.len()
    );
    println!("before: {}", describe(&before, true));
    println!("after:  {}", describe(&after, true));
    println!("wrote {} ({bytes} bytes)", a.out.display());
    Ok(())
}

fn import(a: &ImportArgs) -> Result<(), String> {
    let cfg_path = a.hf.join("config.json");
    let st_path = a.hf.join("model.safetensors");
    crate::paths::refuse_overwrite(
        ("--out", &a.out),
        &[("--hf", &cfg_path), ("--hf", &st_path)],
    )?;
    let cfg = std::fs::read_to_string(&cfg_path)
        .map_err(|e| format!("cannot read {}: {e}", cfg_path.display()))?;
    let bytes =
        std::fs::read(&st_path).map_err(|e| format!("cannot read {}: {e}", st_path.display()))?;
    let (m, ctx) = read_molm(&cfg, &bytes)?;
    let ctx = if ctx == 0 { 1024 } else { ctx };
    let n = m.write_gguf(&a.out, ctx, "imported MoLM checkpoint")?;
    println!(
        "wrote {} ({n} bytes): {} blocks, d {}, {} attention experts (top-{}), {} FFN experts (top-{}), {}",
        a.out.display(),
        m.cfg.layers,
        m.cfg.d,
        m.cfg.att_experts,
        m.cfg.att_k,
        m.cfg.ffn_experts,
        m.cfg.ffn_k,
        if m.cfg.kv_proj { "projected K/V" } else { "K = V = ln_1(x)" }
    );
    Ok(())
}
