//! `modula train`: train a model on a text file and write it as one GGUF file. Only the dense
//! baseline exists so far; the modular architectures arrive with their issues.

use clap::Args;
use modula_core::kernels::par;
use modula_train::checkpoint::{load_dense, save_dense};
use modula_train::data::ByteText;
use modula_train::model::dense::{DenseConfig, DenseModel};
use modula_train::trainer::{eval_dense, train_dense_from, TrainConfig, TrainState};
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
    /// Write a checkpoint (model + optimiser state + step + sampler) here, atomically.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Also checkpoint every N steps (with --checkpoint).
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// Stop after this step (e.g. to resume later with --resume); the schedule stays that of
    /// --steps.
    #[arg(long)]
    stop_after: Option<u64>,
    /// Continue from a checkpoint (same --steps, --batch, --seq, --lr, --data as the run that
    /// wrote it; the model shape comes from the checkpoint).
    #[arg(long)]
    resume: Option<PathBuf>,
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
    let (mut model, mut state) = match &a.resume {
        Some(p) => {
            let (m, st, ctx) = load_dense(p)?;
            if ctx != a.seq {
                return Err(format!(
                    "{} was trained with --seq {ctx}, not {}",
                    p.display(),
                    a.seq
                ));
            }
            if st.step >= a.steps {
                return Err(format!(
                    "{} is already at step {} of --steps {}",
                    p.display(),
                    st.step,
                    a.steps
                ));
            }
            println!("resuming from {} at step {}", p.display(), st.step);
            (m, st)
        }
        None => {
            let cfg = DenseConfig {
                vocab: 256,
                d: a.d,
                layers: a.layers,
                heads: a.heads,
                ffn: a.ffn,
            };
            (DenseModel::new(cfg, a.seed)?, TrainState::new(a.seed))
        }
    };
    let c = model.cfg;
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
        c.d,
        c.layers,
        c.heads,
        c.ffn,
        model.params.len(),
        a.data.display(),
        data.split(modula_train::data::Split::Train).len()
    );
    let start = Instant::now();
    let every = (a.steps / 20).max(1);
    let tokens_per_step = (a.batch * a.seq) as f64;
    let first = state.step;
    let mut report = |s: &modula_train::trainer::StepInfo| {
        if s.step % every == 0 || s.step == a.steps {
            let el = start.elapsed().as_secs_f64();
            println!(
                "step {:>6}/{}  loss {:.4}  |g| {:.3}  lr {:.2e}  {:.0} tok/s",
                s.step,
                a.steps,
                s.loss,
                s.grad_norm,
                s.lr,
                (s.step - first) as f64 * tokens_per_step / el.max(1e-9)
            );
        }
    };
    let seg = match (&a.checkpoint, a.checkpoint_every) {
        (Some(_), Some(n)) if n > 0 => n,
        _ => a.steps,
    };
    let stop = a.stop_after.unwrap_or(a.steps).min(a.steps);
    while state.step < stop {
        let until = (state.step + seg).min(stop);
        train_dense_from(&mut model, &data, &tc, &mut state, until, &mut report)?;
        if let Some(p) = &a.checkpoint {
            save_dense(p, &model, &state, a.seq)?;
        }
    }
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
