//! `modula train`: train a model on a text file and write it as one GGUF file. Only the dense
//! baseline exists so far; the modular architectures arrive with their issues.

use clap::Args;
use modula_core::kernels::par;
use modula_train::data::ByteText;
use modula_train::model::dense::{DenseConfig, DenseModel};
use modula_train::trainer::{eval_dense, train_dense, TrainConfig};
use std::path::PathBuf;
use std::time::Instant;

/// Arguments of `modula train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Architecture: dense (moduleformer, seqboat, emoe: not yet).
    #[arg(long, default_value = "dense")]
    arch: String,
    /// Text file to train on (bytes; the last 10% is the validation split).
    #[arg(long)]
    data: PathBuf,
    /// Optimiser steps.
    #[arg(long, default_value_t = 200)]
    steps: u64,
    /// Sequences per step.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Bytes per sequence.
    #[arg(long, default_value_t = 64)]
    seq: usize,
    /// Model width.
    #[arg(long, default_value_t = 64)]
    d: usize,
    /// Blocks.
    #[arg(long, default_value_t = 2)]
    layers: usize,
    /// Attention heads.
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// FFN hidden width.
    #[arg(long, default_value_t = 256)]
    ffn: usize,
    /// Peak learning rate (warm-up 10% of the steps, cosine decay to a tenth).
    #[arg(long, default_value_t = 3e-3)]
    lr: f32,
    /// Seed (initialisation and batches).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Threads for the kernels (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Output model file.
    #[arg(long, default_value = "model.gguf")]
    out: PathBuf,
}

/// Run `modula train`.
pub fn run(a: &TrainArgs) -> Result<(), String> {
    if a.arch != "dense" {
        return Err(format!(
            "--arch {}: not yet implemented (only the dense baseline trains so far)",
            a.arch
        ));
    }
    if a.steps == 0 || a.batch == 0 || a.seq == 0 {
        return Err("--steps, --batch and --seq must be positive".into());
    }
    if let Some(t) = a.threads {
        par::set_threads(t);
    }
    let data = ByteText::from_file(&a.data, 0.1).map_err(|e| e.to_string())?;
    data.check_window(a.seq).map_err(|e| e.to_string())?;
    let cfg = DenseConfig {
        vocab: 256,
        d: a.d,
        layers: a.layers,
        heads: a.heads,
        ffn: a.ffn,
    };
    let mut model = DenseModel::new(cfg, a.seed)?;
    let tc = TrainConfig {
        steps: a.steps,
        batch: a.batch,
        seq: a.seq,
        lr: a.lr,
        min_lr: a.lr / 10.0,
        warmup: (a.steps / 10).max(1),
        seed: a.seed,
        ..TrainConfig::default()
    };
    println!(
        "training dense d={} layers={} heads={} ffn={} ({} parameters) on {} ({} training bytes)",
        a.d,
        a.layers,
        a.heads,
        a.ffn,
        model.params.len(),
        a.data.display(),
        data.split(modula_train::data::Split::Train).len()
    );
    let start = Instant::now();
    let every = (a.steps / 20).max(1);
    let tokens_per_step = (a.batch * a.seq) as f64;
    train_dense(&mut model, &data, &tc, |s| {
        if s.step % every == 0 || s.step == a.steps {
            let el = start.elapsed().as_secs_f64();
            println!(
                "step {:>6}/{}  loss {:.4}  |g| {:.3}  lr {:.2e}  {:.0} tok/s",
                s.step,
                a.steps,
                s.loss,
                s.grad_norm,
                s.lr,
                s.step as f64 * tokens_per_step / el.max(1e-9)
            );
        }
    })?;
    let val = eval_dense(&model, &data, 8, a.batch, a.seq, a.seed ^ 0x5eed)?;
    let bytes = model.write_gguf(&a.out, a.seq, "modula dense baseline")?;
    println!(
        "validation loss {:.4} nats/byte = {:.4} bits/byte; wrote {} ({} bytes) in {:.1} s",
        val,
        val / std::f64::consts::LN_2,
        a.out.display(),
        bytes,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
