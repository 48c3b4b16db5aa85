//! `modula train`, `modula eval` and `modula convert`: any data set
//! (`--data PATH|kjv|fashion-mnist|listops|recall|copy|…`), a progress bar, metrics as JSON
//! lines, a loss-curve picture, checkpoints and resume; evaluation of a written model;
//! GGUF ⇄ safetensors conversion.
//!
//! One file per part: [`data`] (the data flags, shared with `eval`), [`dense`] (the dense
//! model, EMoE fine-tuning and SortedNet nesting), [`moduleformer`], [`seqboat`] (each
//! architecture's flag group and model construction), [`mod@eval`], [`mod@convert`]; this file
//! holds the flags every architecture shares, the SortedNet flag group, and the training
//! loop ([`fit`]) all of them run.

mod convert;
mod data;
mod dense;
mod eval;
mod moduleformer;
mod seqboat;

pub use convert::{convert, ConvertArgs};
pub use data::{DataArgs, TALES_BYTES};
pub(crate) use dense::EmoeArgs;
pub(crate) use dense::{check_fits, parse_mask};
pub use eval::{eval, load_model, EvalArgs};
pub use moduleformer::run_extend;
pub(crate) use moduleformer::MfArgs;
pub(crate) use seqboat::SbArgs;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use modula_core::kernels::par;
use modula_core::Model;
use modula_train::checkpoint::{load_dense, load_mf, load_sb, save_dense, save_mf, save_sb};
use modula_train::compute;
use modula_train::data::ByteText;
use modula_train::model::dense::{DenseConfig, DenseModel, Pool};
use modula_train::model::moduleformer::{MfConfig, MfModel};
use modula_train::model::seqboat::{SbAttn, SbConfig, SbGate, SbModel};
use modula_train::plot::{line_chart, Series};
use modula_train::tasks::{Copy, Dataset, FashionMnist, ListOps, Recall, SparseRecall};
use modula_train::trainer::{
    eval_dense, eval_model, train_from, EvalResult, TrainConfig, TrainState, Trainable,
};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Arguments of `modula train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Architecture: dense, moduleformer or seqboat (EMoE models come from `modula emoe
    /// convert` and train with --arch dense --init).
    #[arg(long, default_value = "dense")]
    pub(crate) arch: String,
    #[command(flatten)]
    pub(crate) data: DataArgs,
    /// Optimiser steps.
    #[arg(long, default_value_t = 200)]
    pub(crate) steps: u64,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = 8)]
    pub(crate) batch: usize,
    /// Micro-batches per optimiser step (gradient accumulation).
    #[arg(long, default_value_t = 1)]
    pub(crate) accum: usize,
    /// Model width.
    #[arg(long, default_value_t = 64)]
    pub(crate) d: usize,
    /// Blocks.
    #[arg(long, default_value_t = 2)]
    pub(crate) layers: usize,
    /// Attention heads.
    #[arg(long, default_value_t = 4)]
    pub(crate) heads: usize,
    /// FFN hidden width.
    #[arg(long, default_value_t = 256)]
    pub(crate) ffn: usize,
    /// Learned position table: on (one row per position of --seq) unless --no-positions.
    #[arg(long)]
    pub(crate) no_positions: bool,
    /// Classifier pooling (mean | first | last; default: the task's suggestion).
    #[arg(long)]
    pub(crate) pool: Option<String>,
    /// Attention mask: causal or full (default: the task's suggestion).
    #[arg(long)]
    pub(crate) attention: Option<String>,
    /// Peak learning rate (warm-up 10% of the steps, cosine decay to a tenth).
    #[arg(long, default_value_t = 3e-3)]
    pub(crate) lr: f32,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) weight_decay: f32,
    /// Seed (initialisation and batches).
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Threads for the kernels (default: MODULA_THREADS, or RAYON_NUM_THREADS, or all cores).
    #[arg(long)]
    pub(crate) threads: Option<usize>,
    /// Where the matrix products run: cpu, gpu (falls back to the CPU, saying why, when
    /// no adapter is found) or auto. gpu/auto need a build with `--features gpu`.
    #[arg(long, default_value = "cpu")]
    pub(crate) device: String,
    /// Evaluate on the validation split every N steps (default: 10 times per run).
    #[arg(long)]
    pub(crate) eval_every: Option<u64>,
    /// Validation batches per evaluation.
    #[arg(long, default_value_t = 8)]
    pub(crate) eval_batches: usize,
    /// Output model file (.gguf; also writes OUT.metrics.jsonl and OUT.loss.svg).
    #[arg(long, default_value = "model.gguf")]
    pub(crate) out: PathBuf,
    /// Write a checkpoint (model + optimiser state + step + sampler) here, atomically.
    #[arg(long)]
    pub(crate) checkpoint: Option<PathBuf>,
    /// Also checkpoint every N steps (with --checkpoint).
    #[arg(long)]
    pub(crate) checkpoint_every: Option<u64>,
    /// Stop after this step (e.g. to resume later with --resume); the schedule stays that of
    /// --steps.
    #[arg(long)]
    pub(crate) stop_after: Option<u64>,
    /// Continue from a checkpoint (same --steps, --batch, --seq, --lr, --data as the run that
    /// wrote it; the model shape comes from the checkpoint).
    #[arg(long)]
    pub(crate) resume: Option<PathBuf>,
    /// Start from this model's weights (fine-tuning: fresh optimiser and schedule; the
    /// shape, including EMoE layers, comes from the file; .gguf or .safetensors).
    #[arg(long, conflicts_with = "resume")]
    pub(crate) init: Option<PathBuf>,
    /// With --resume: continue although the run's settings (steps, batch, learning rate,
    /// data, …) differ from those the checkpoint recorded (otherwise an error listing them).
    #[arg(long, requires = "resume")]
    pub(crate) allow_changed_settings: bool,
    #[command(flatten)]
    pub(crate) emoe: EmoeArgs,
    #[command(flatten)]
    pub(crate) sortednet: SortedArgs,
    #[command(flatten)]
    pub(crate) mf: MfArgs,
    #[command(flatten)]
    pub(crate) sb: SbArgs,
    /// No progress bar (periodic lines instead), e.g. for logs.
    #[arg(long)]
    pub(crate) quiet: bool,
}

/// SortedNet nesting: the nested sizes and how they are trained.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "SortedNet")]
pub struct SortedArgs {
    /// SortedNet: nested depths (comma-separated; the full depth is implied), e.g. 1,2,3.
    #[arg(long)]
    pub(crate) nested_depths: Option<String>,
    /// SortedNet: nested FFN widths (comma-separated; the full width is implied).
    #[arg(long)]
    pub(crate) nested_ffn: Option<String>,
    /// SortedNet: nested attention-head counts (the first H heads of every block;
    /// comma-separated; all heads implied). The file then stores the attention head-major.
    #[arg(long)]
    pub(crate) nested_heads: Option<String>,
    /// SortedNet for ModuleFormer: nested expert counts (the first N experts of every
    /// mixture; comma-separated; all experts implied).
    #[arg(long)]
    pub(crate) nested_experts: Option<String>,
    /// SortedNet: sub-models trained per micro-batch besides the full model — `uniform:N`
    /// (N drawn from the grid; SortedNet), `all` (every size), `matformer` (one FFN width),
    /// `off` (full model only: nested sizes are then plain truncations). Default: uniform:1
    /// for a nested model.
    #[arg(long)]
    pub(crate) sorted: Option<String>,
    /// SortedNet in-place distillation: `α` or `α:τ` — each sampled sub-model's loss is
    /// (1 − α)·CE + α·τ²·KL(full ‖ sub) against the full model's output on the same batch
    /// (default: off, plain cross-entropy as in SortedNet).
    #[arg(long)]
    pub(crate) sorted_distill: Option<String>,
}

pub(crate) fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

pub fn describe(r: &EvalResult, lm: bool) -> String {
    if lm {
        format!(
            "loss {:.4} nats = {:.4} bits per target, accuracy {:.2}% ({} targets)",
            r.loss,
            r.bits(),
            100.0 * r.accuracy,
            r.targets
        )
    } else {
        format!(
            "loss {:.4}, accuracy {:.2}% ({} examples)",
            r.loss,
            100.0 * r.accuracy,
            r.targets
        )
    }
}

/// `--device cpu|gpu|auto`: select where training's products run; says where unless
/// it is the CPU by request.
pub fn select_device(name: &str) -> Result<(), String> {
    let device = compute::Device::parse(name).map_err(|e| format!("--device: {e}"))?;
    let line = compute::select(device)?;
    if device != compute::Device::Cpu {
        println!("{line}");
    }
    Ok(())
}
/// Every numeric flag of `modula train` checked in one place, before any work: a negative or
/// non-finite learning rate would train the wrong way or fail only after a step.
pub(crate) fn validate(a: &TrainArgs) -> Result<(), String> {
    let finite = |flag: &str, v: f32, ok: bool, want: &str| -> Result<(), String> {
        if v.is_finite() && ok {
            Ok(())
        } else {
            Err(format!("{flag} {v}: must be {want}"))
        }
    };
    finite("--lr", a.lr, a.lr > 0.0, "a positive number")?;
    finite(
        "--weight-decay",
        a.weight_decay,
        a.weight_decay >= 0.0,
        ">= 0",
    )?;
    for (flag, v) in [
        ("--emoe-noise", a.emoe.emoe_noise),
        ("--emoe-capacity", a.emoe.emoe_capacity),
        ("--emoe-aux", a.emoe.emoe_aux),
        ("--aux-mi", a.mf.aux_mi),
        ("--aux-lc", a.mf.aux_lc),
    ] {
        finite(flag, v, v >= 0.0, ">= 0")?;
    }
    if let Some(s) = a.sb.temp_scale {
        finite("--temp-scale", s, s > 0.0, "a positive number")?;
    }
    for (flag, v) in [
        ("--steps", a.steps as usize),
        ("--batch", a.batch),
        ("--accum", a.accum),
        ("--seq", a.data.seq),
        ("--d", a.d),
        ("--layers", a.layers),
        ("--heads", a.heads),
        ("--ffn", a.ffn),
        ("--eval-batches", a.eval_batches),
    ] {
        if v == 0 {
            return Err(format!("{flag} 0: must be positive"));
        }
    }
    if a.eval_every == Some(0) || a.checkpoint_every == Some(0) {
        return Err("--eval-every and --checkpoint-every must be positive".into());
    }
    Ok(())
}

/// `--out`, its sidecars and `--checkpoint` must not be any input (`--data`, `--init`,
/// `--resume`) nor each other.
pub(crate) fn refuse_overwrites(a: &TrainArgs) -> Result<(), String> {
    let data = Path::new(&a.data.data);
    let mut inputs = vec![("--data", data)];
    inputs.extend(a.init.as_deref().map(|p| ("--init", p)));
    inputs.extend(a.resume.as_deref().map(|p| ("--resume", p)));
    let metrics = with_suffix(&a.out, ".metrics.jsonl");
    let plot = with_suffix(&a.out, ".loss.svg");
    for out in [
        ("--out", a.out.as_path()),
        ("--out (metrics)", &metrics),
        ("--out (plot)", &plot),
    ] {
        crate::paths::refuse_overwrite(out, &inputs)?;
    }
    if let Some(c) = &a.checkpoint {
        let mut all = inputs.clone();
        all.retain(|(flag, _)| *flag != "--resume");
        all.push(("--out", a.out.as_path()));
        crate::paths::refuse_overwrite(("--checkpoint", c), &all)?;
    }
    Ok(())
}

/// Run `modula train`.
pub fn run(a: &TrainArgs) -> Result<(), String> {
    validate(a)?;
    refuse_overwrites(a)?;
    select_device(&a.device)?;
    match a.arch.as_str() {
        "dense" => dense::run(a),
        "moduleformer" => moduleformer::run(a),
        "seqboat" => seqboat::run(a),
        other => Err(format!(
            "--arch {other}: use dense, moduleformer or seqboat"
        )),
    }
}

pub(crate) fn train_config(a: &TrainArgs, seq: usize) -> Result<TrainConfig, String> {
    let sorted_distill = match &a.sortednet.sorted_distill {
        Some(s) => Some(
            modula_train::trainer::Distill::parse(s)
                .map_err(|e| format!("--sorted-distill {e}"))?,
        ),
        None => None,
    };
    Ok(TrainConfig {
        sorted_distill,
        steps: a.steps,
        batch: a.batch,
        accum: a.accum,
        seq,
        lr: a.lr,
        min_lr: a.lr / 10.0,
        warmup: (a.steps / 10).max(1),
        seed: a.seed,
        opt: modula_train::optim::AdamW {
            weight_decay: a.weight_decay,
            ..modula_train::optim::AdamW::default()
        },
        ..TrainConfig::default()
    })
}

/// The model to train: resumed from `--resume` (its context must be `seq` and its step
/// below `--steps`), read from `--init` (fine-tuning: fresh optimiser and schedule; `init`
/// names the file in its errors), or made by `fresh`.
/// `--init FILE` read by a family's reader, the path in its error.
pub(crate) fn init_from<M>(
    p: &Path,
    read: fn(&modula_core::MappedModel) -> Result<(M, usize), modula_core::Error>,
) -> Result<M, String> {
    let f = Model::open(p).map_err(|e| format!("{}: {e}", p.display()))?;
    read(&f)
        .map(|(m, _)| m)
        .map_err(|e| format!("{}: {e}", p.display()))
}

/// The settings a resumed run must repeat (the model's shape comes from the checkpoint;
/// threads, evaluation and checkpoint cadence do not change the run), as `name=value; …`.
pub(crate) fn settings(a: &TrainArgs) -> String {
    let d = &a.data;
    let e = &a.emoe;
    let s = &a.sortednet;
    let pairs: Vec<(&str, String)> = vec![
        ("--arch", a.arch.clone()),
        ("--data", d.data.clone()),
        ("--data-slice", format!("{:?}", d.data_slice)),
        ("--seq", d.seq.to_string()),
        ("--patch", d.patch.to_string()),
        ("--listops-depth", d.listops_depth.to_string()),
        ("--listops-args", d.listops_args.to_string()),
        ("--symbols", d.symbols.to_string()),
        ("--pairs", d.pairs.to_string()),
        ("--data-seed", d.data_seed.to_string()),
        ("--steps", a.steps.to_string()),
        ("--batch", a.batch.to_string()),
        ("--accum", a.accum.to_string()),
        ("--lr", a.lr.to_string()),
        ("--weight-decay", a.weight_decay.to_string()),
        ("--seed", a.seed.to_string()),
        ("--device", a.device.clone()),
        ("--emoe-mask", e.emoe_mask.clone()),
        ("--emoe-noise", e.emoe_noise.to_string()),
        ("--emoe-capacity", e.emoe_capacity.to_string()),
        ("--emoe-aux", e.emoe_aux.to_string()),
        ("--sorted", format!("{:?}", s.sorted)),
        ("--sorted-distill", format!("{:?}", s.sorted_distill)),
        ("--aux-mi", a.mf.aux_mi.to_string()),
        ("--aux-lc", a.mf.aux_lc.to_string()),
    ];
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The flags whose values differ between two settings strings (`name: was -> now`).
fn changed_settings(was: &str, now: &str) -> Vec<String> {
    let parse = |s: &str| -> Vec<(String, String)> {
        s.split("; ")
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let (was, now) = (parse(was), parse(now));
    now.iter()
        .filter_map(|(k, v)| {
            let old = was
                .iter()
                .find(|(kk, _)| kk == k)
                .map(|(_, vv)| vv.as_str());
            match old {
                Some(o) if o != v => Some(format!("{k} {o} -> {v}")),
                _ => None,
            }
        })
        .collect()
}

pub(crate) fn start<M>(
    a: &TrainArgs,
    seq: usize,
    resume: impl FnOnce(&Path) -> Result<(M, TrainState, usize), String>,
    init: impl FnOnce(&Path) -> Result<M, String>,
    fresh: impl FnOnce() -> Result<M, String>,
) -> Result<(M, TrainState), String> {
    match (&a.resume, &a.init) {
        (Some(p), _) => {
            let (m, st, ctx) = resume(p)?;
            if ctx != seq {
                return Err(format!(
                    "{} was trained with --seq {ctx}, not {seq}",
                    p.display()
                ));
            }
            let now = settings(a);
            let changed = changed_settings(&st.settings, &now);
            if !changed.is_empty() && !a.allow_changed_settings {
                return Err(format!(
                    "{} was written by a run with other settings ({}); repeat them, or pass \
                     --allow-changed-settings to continue anyway",
                    p.display(),
                    changed.join(", ")
                ));
            }
            if st.settings.is_empty() {
                println!(
                    "note: {} records no settings (an older checkpoint); they are not checked",
                    p.display()
                );
            }
            let mut st = st;
            st.settings = now;
            if st.step >= a.steps {
                return Err(format!(
                    "{} is already at step {} of --steps {}",
                    p.display(),
                    st.step,
                    a.steps
                ));
            }
            println!("resuming from {} at step {}", p.display(), st.step);
            Ok((m, st))
        }
        (None, Some(p)) => {
            let m = init(p)?;
            println!("fine-tuning from {}", p.display());
            let mut st = TrainState::new(a.seed);
            st.settings = settings(a);
            Ok((m, st))
        }
        (None, None) => {
            let mut st = TrainState::new(a.seed);
            st.settings = settings(a);
            Ok((fresh()?, st))
        }
    }
}

/// What `modula train` needs from a model beyond training.
pub(crate) trait CliModel: Trainable {
    fn save_checkpoint(&self, p: &Path, st: &TrainState, seq: usize) -> Result<u64, String>;
    fn write_model(&self, p: &Path, seq: usize) -> Result<u64, String>;
    /// What a nested size `AxB` means for this model.
    fn size_label(&self) -> &'static str;
}

impl CliModel for DenseModel {
    fn save_checkpoint(&self, p: &Path, st: &TrainState, seq: usize) -> Result<u64, String> {
        Ok(save_dense(p, self, st, seq)?)
    }
    fn write_model(&self, p: &Path, seq: usize) -> Result<u64, String> {
        Ok(self.write_gguf(p, seq, "modula dense baseline")?)
    }
    fn size_label(&self) -> &'static str {
        if self.cfg.heads_nested() {
            "depth x FFN width x heads"
        } else {
            "depth x FFN width"
        }
    }
}

impl CliModel for MfModel {
    fn save_checkpoint(&self, p: &Path, st: &TrainState, seq: usize) -> Result<u64, String> {
        Ok(save_mf(p, self, st, seq)?)
    }
    fn write_model(&self, p: &Path, seq: usize) -> Result<u64, String> {
        Ok(self.write_gguf(p, seq, "modula moduleformer")?)
    }
    fn size_label(&self) -> &'static str {
        "attention x FFN experts"
    }
}

impl CliModel for SbModel {
    fn save_checkpoint(&self, p: &Path, st: &TrainState, seq: usize) -> Result<u64, String> {
        Ok(save_sb(p, self, st, seq)?)
    }
    fn write_model(&self, p: &Path, seq: usize) -> Result<u64, String> {
        Ok(self.write_gguf(p, seq, "modula seqboat")?)
    }
    fn size_label(&self) -> &'static str {
        "depth x width"
    }
}

/// The training loop of `modula train` for any model: progress, metrics, evaluation,
/// checkpoints, the model file and the loss picture.
#[allow(clippy::too_many_arguments)]
pub(crate) fn fit<M: CliModel>(
    a: &TrainArgs,
    model: &mut M,
    state: &mut TrainState,
    data: &dyn Dataset,
    seq: usize,
    tc: &TrainConfig,
    lm: bool,
    title: &str,
) -> Result<(), String> {
    let tc = *tc;
    if let Some(d) = tc.sorted_distill {
        if model.nested_grid().is_empty() || tc.sorted == modula_train::trainer::Sorted::Off {
            return Err("--sorted-distill needs a nested model trained with --sorted".into());
        }
        println!(
            "SortedNet in-place distillation: sub-model loss (1 - {a}) CE + {a} tau^2 KL(full || sub), tau {t}",
            a = d.alpha,
            t = d.tau
        );
    }
    // the metrics go to OUT.metrics.jsonl.partial while training and take their final
    // name only once the model is written: a failed or interrupted run leaves an earlier
    // model's metrics as they were (and its own, named partial)
    let metrics_path = with_suffix(&a.out, ".metrics.jsonl");
    let partial_path = with_suffix(&a.out, ".metrics.jsonl.partial");
    let mut metrics = std::io::BufWriter::new(
        std::fs::File::create(&partial_path)
            .map_err(|e| format!("cannot create {}: {e}", partial_path.display()))?,
    );
    let pb = if a.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(a.steps)
    };
    pb.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
        )
        .map_err(|e| e.to_string())?,
    );
    pb.set_position(state.step);
    let start = Instant::now();
    let every = (a.steps / 20).max(1);
    let eval_every = a.eval_every.unwrap_or((a.steps / 10).max(1)).max(1);
    let first = state.step;
    let mut positions = 0usize;
    let mut train_curve = Vec::new();
    let mut val_curve = Vec::new();
    let mut io_err: Option<String> = None;
    let seg = match (&a.checkpoint, a.checkpoint_every) {
        (Some(_), Some(n)) if n > 0 => n.min(eval_every),
        _ => eval_every,
    };
    let stop = a.stop_after.unwrap_or(a.steps).min(a.steps);
    let mut last_ckpt = state.step;
    let mut val = None;
    while state.step < stop {
        let until = (state.step + seg).min(stop);
        let mut report = |s: &modula_train::trainer::StepInfo| {
            positions += s.positions;
            let el = start.elapsed().as_secs_f64();
            let tps = positions as f64 / el.max(1e-9);
            train_curve.push((s.step as f64, s.loss));
            let routing = if s.usage.is_empty() {
                String::new()
            } else {
                let list = |f: &dyn Fn(&(f32, f32)) -> f32| {
                    s.usage
                        .iter()
                        .map(|u| format!("{:.4}", f(u)))
                        .collect::<Vec<_>>()
                        .join(",")
                };
                format!(
                    ",\"aux_loss\":{:.6},\"usage_entropy\":[{}],\"routing_entropy\":[{}]",
                    s.aux,
                    list(&|u| u.0),
                    list(&|u| u.1)
                )
            };
            let routing = if s.activation.is_empty() {
                routing
            } else {
                let list: Vec<String> = s.activation.iter().map(|v| format!("{v:.4}")).collect();
                format!("{routing},\"activation\":[{}]", list.join(","))
            };
            let line = format!(
                "{{\"step\":{},\"loss\":{:.6},\"grad_norm\":{:.6},\"lr\":{:.6e},\"positions_per_s\":{:.1},\"elapsed_s\":{:.3}{routing}}}",
                s.step, s.loss, s.grad_norm, s.lr, tps, el
            );
            if let Err(e) = writeln!(metrics, "{line}") {
                io_err.get_or_insert(format!("{}: {e}", partial_path.display()));
            }
            pb.set_position(s.step);
            pb.set_message(format!("loss {:.4}  {:.0} pos/s", s.loss, tps));
            if (pb.is_hidden() && (s.step.is_multiple_of(every) || s.step == a.steps))
                || (s.step - first) == 1
            {
                let usage = if !s.activation.is_empty() {
                    let list: Vec<String> =
                        s.activation.iter().map(|v| format!("{v:.2}")).collect();
                    format!("  activation {}", list.join(","))
                } else if s.usage.is_empty() {
                    String::new()
                } else {
                    let k = s.usage.len() as f32;
                    let mean = s.usage.iter().map(|u| u.0).sum::<f32>() / k;
                    let min = s.usage.iter().map(|u| u.0).fold(f32::INFINITY, f32::min);
                    let cond = s.usage.iter().map(|u| u.1).sum::<f32>() / k;
                    format!(
                        "  aux {:.4}  H(e)/lnE mean {mean:.3} min {min:.3}  H(e|x)/lnE {cond:.3}",
                        s.aux
                    )
                };
                pb.suspend(|| {
                    println!(
                        "step {:>6}/{}  loss {:.4}  |g| {:.3}  lr {:.2e}  {:.0} positions/s{usage}",
                        s.step, a.steps, s.loss, s.grad_norm, s.lr, tps
                    )
                });
            }
        };
        train_from(model, data, &tc, state, until, &mut report)?;
        if let Some(e) = io_err.take() {
            return Err(format!("cannot write metrics {e}"));
        }
        if state.step.is_multiple_of(eval_every) || state.step == stop {
            let r = eval_model(&*model, data, a.eval_batches, a.batch, seq, a.seed ^ 0x5eed)?;
            val_curve.push((state.step as f64, r.loss));
            writeln!(
                metrics,
                "{{\"step\":{},\"val_loss\":{:.6},\"val_accuracy\":{:.6},\"val_targets\":{}}}",
                state.step, r.loss, r.accuracy, r.targets
            )
            .map_err(|e| format!("cannot write {}: {e}", partial_path.display()))?;
            pb.suspend(|| println!("step {:>6}: validation {}", state.step, describe(&r, lm)));
            let grid = model.nested_grid();
            if !grid.is_empty() {
                let mut cells = Vec::new();
                let mut json = Vec::new();
                // heads are shown only when they nest (dense models with --nested-heads)
                let heads_vary = grid.iter().any(|s| s[2] != grid[grid.len() - 1][2]);
                for &[dp, f, h] in &grid {
                    model.set_nested(Some([dp, f, h]));
                    let r =
                        eval_model(&*model, data, a.eval_batches, a.batch, seq, a.seed ^ 0x5eed);
                    model.set_nested(None);
                    let r = r?;
                    let (label, size) = if heads_vary {
                        (format!("{dp}x{f}x{h}"), format!("{dp},{f},{h}"))
                    } else {
                        (format!("{dp}x{f}"), format!("{dp},{f}"))
                    };
                    cells.push(format!("{label}: {:.4}", r.loss));
                    json.push(format!(
                        "{{\"size\":[{size}],\"val_loss\":{:.6},\"val_accuracy\":{:.6}}}",
                        r.loss, r.accuracy
                    ));
                }
                writeln!(
                    metrics,
                    "{{\"step\":{},\"nested\":[{}]}}",
                    state.step,
                    json.join(",")
                )
                .map_err(|e| format!("cannot write {}: {e}", partial_path.display()))?;
                let label = model.size_label();
                pb.suspend(|| {
                    println!(
                        "step {:>6}: nested sub-models ({label}: val loss) {}",
                        state.step,
                        cells.join("  ")
                    )
                });
            }
            val = Some(r);
        }
        if let Some(p) = &a.checkpoint {
            let due = match a.checkpoint_every {
                Some(n) if n > 0 => state.step - last_ckpt >= n,
                _ => false,
            };
            if due || state.step == stop {
                model.save_checkpoint(p, state, seq)?;
                last_ckpt = state.step;
            }
        }
    }
    pb.finish_and_clear();
    if let Some(r) = compute::report() {
        println!("{r}");
    }
    metrics
        .flush()
        .map_err(|e| format!("cannot write {}: {e}", partial_path.display()))?;
    let val = match val {
        Some(v) => v,
        None => eval_model(&*model, data, a.eval_batches, a.batch, seq, a.seed ^ 0x5eed)?,
    };
    let bytes = model.write_model(&a.out, seq)?;
    metrics
        .get_ref()
        .sync_all()
        .map_err(|e| format!("cannot write {}: {e}", partial_path.display()))?;
    drop(metrics);
    std::fs::rename(&partial_path, &metrics_path).map_err(|e| {
        format!(
            "cannot rename {} to {}: {e}",
            partial_path.display(),
            metrics_path.display()
        )
    })?;
    let svg_path = with_suffix(&a.out, ".loss.svg");
    let svg = line_chart(
        &format!("{title} on {}", a.data.data),
        "step",
        "loss (nats per target)",
        &[
            Series {
                name: "training".into(),
                points: train_curve,
                color: "steelblue",
                dots: false,
            },
            Series {
                name: "validation".into(),
                points: val_curve,
                color: "crimson",
                dots: true,
            },
        ],
    );
    modula_core::io::atomic_write(&svg_path, |w| w.write_all(svg.as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", svg_path.display()))?;
    let el = start.elapsed().as_secs_f64();
    println!(
        "validation {}\nwrote {} ({} bytes), {}, {} in {:.1} s ({:.0} positions/s)",
        describe(&val, lm),
        a.out.display(),
        bytes,
        metrics_path.display(),
        svg_path.display(),
        el,
        positions as f64 / el.max(1e-9)
    );
    Ok(())
}
