//! `modula train`, `modula eval` and `modula convert` for the dense baseline: any data set
//! (`--data PATH|kjv|fashion-mnist|listops|recall|copy`), a progress bar, metrics as JSON
//! lines, a loss-curve picture, checkpoints and resume; evaluation of a written model;
//! GGUF ⇄ safetensors conversion. The modular architectures arrive with their issues.

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

/// Bytes of the built-in `tales` text (`modula_train::corpus`).
pub const TALES_BYTES: usize = 2 << 20;

/// Which data and how to shape it (shared by `train` and `eval`).
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Data: a text file (bytes; the last 10% is validation), `kjv`, `fashion-mnist`,
    /// `tales` (built-in English-like text, 2 MB), `generated` (8x8 images of 4 classes),
    /// `listops`, `recall`, `sparse-recall` or `copy` (the last six are generated, no
    /// download).
    #[arg(long)]
    data: String,
    /// Positions per sequence (bytes for text; fixed by the task for fashion-mnist).
    #[arg(long, default_value_t = 64)]
    seq: usize,
    /// Directory holding kjv.txt and fashion-mnist/ (default: $MODULA_DATA or ./data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Fashion-MNIST patch side (divides 28).
    #[arg(long, default_value_t = 7)]
    patch: usize,
    /// ListOps deepest nesting.
    #[arg(long, default_value_t = 6)]
    listops_depth: u32,
    /// ListOps most arguments per operator.
    #[arg(long, default_value_t = 5)]
    listops_args: u32,
    /// Distinct keys of the recall task / symbols of the copy task.
    #[arg(long, default_value_t = 16)]
    symbols: usize,
    /// Key-value pairs per sequence of the sparse-recall task.
    #[arg(long, default_value_t = 4)]
    pairs: usize,
    /// Seed of generated validation sets.
    #[arg(long, default_value_t = 1)]
    data_seed: u64,
    /// Use only this part of a text file, as fractions `A:B` of its bytes (e.g. `0:0.479`
    /// for KJV Genesis–Job); the last 10% of the part is its validation split.
    #[arg(long)]
    data_slice: Option<String>,
}

impl DataArgs {
    /// Text data (a path or `kjv`) with defaults for everything else.
    pub fn for_text(data: String, data_slice: Option<String>, seq: usize) -> Self {
        DataArgs {
            data,
            seq,
            data_dir: None,
            patch: 7,
            listops_depth: 6,
            listops_args: 5,
            symbols: 16,
            pairs: 4,
            data_seed: 1,
            data_slice,
        }
    }

    fn dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .or_else(|| std::env::var_os("MODULA_DATA").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("data"))
    }

    /// Text from `path`, cut to `--data-slice`.
    fn text(&self, path: &Path, hint: &str) -> Result<ByteText, String> {
        let bytes = std::fs::read(path)
            .map_err(|e| format!("cannot read data file '{}': {e}{hint}", path.display()))?;
        let bytes = match &self.data_slice {
            None => bytes,
            Some(sl) => {
                let (a, b) = sl
                    .split_once(':')
                    .and_then(|(a, b)| Some((a.parse::<f64>().ok()?, b.parse::<f64>().ok()?)))
                    .filter(|(a, b)| 0.0 <= *a && a < b && *b <= 1.0)
                    .ok_or_else(|| format!("--data-slice {sl}: use A:B with 0 <= A < B <= 1"))?;
                let n = bytes.len() as f64;
                bytes[(a * n) as usize..(b * n) as usize].to_vec()
            }
        };
        ByteText::from_bytes(bytes, 0.1).map_err(|e| e.to_string())
    }

    /// Load or generate the data set; returns it and the sequence length it uses.
    pub fn load(&self) -> Result<(Box<dyn Dataset>, usize), String> {
        let e = |e: modula_train::data::DataError| e.to_string();
        let hint = "; run scripts/get-data.sh (or pass --data-dir)";
        if self.data_slice.is_some()
            && [
                "fashion-mnist",
                "tales",
                "generated",
                "listops",
                "recall",
                "sparse-recall",
                "copy",
            ]
            .contains(&self.data.as_str())
        {
            return Err("--data-slice applies to text data only".into());
        }
        let ds: Box<dyn Dataset> = match self.data.as_str() {
            "kjv" => Box::new(self.text(&self.dir().join("kjv.txt"), hint)?),
            "tales" => Box::new(
                ByteText::from_bytes(
                    modula_train::corpus::generated_text(TALES_BYTES, self.data_seed),
                    0.1,
                )
                .map_err(e)?,
            ),
            "generated" => Box::new(
                FashionMnist::generated(2000, 1000, self.data_seed, self.patch).map_err(e)?,
            ),
            "fashion-mnist" => {
                let p = self.dir().join("fashion-mnist");
                Box::new(
                    FashionMnist::from_dir(&p, self.patch)
                        .map_err(|x| format!("{}{hint}", e(x)))?,
                )
            }
            "listops" => Box::new(
                ListOps::new(
                    self.listops_depth,
                    self.listops_args,
                    20.min(self.seq / 2),
                    self.seq,
                    2000,
                    self.data_seed,
                )
                .map_err(e)?,
            ),
            "recall" => Box::new(Recall::new(self.symbols, self.seq).map_err(e)?),
            "sparse-recall" => Box::new(SparseRecall::new(self.seq, self.pairs).map_err(e)?),
            "copy" => Box::new(Copy::new(self.symbols, self.seq).map_err(e)?),
            path => Box::new(self.text(Path::new(path), "")?),
        };
        let seq = ds.shape().seq.unwrap_or(self.seq);
        Ok((ds, seq))
    }
}

/// Arguments of `modula train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Architecture: dense, moduleformer or seqboat (EMoE models come from `modula emoe
    /// convert` and train with --arch dense --init).
    #[arg(long, default_value = "dense")]
    arch: String,
    #[command(flatten)]
    data: DataArgs,
    /// Optimiser steps.
    #[arg(long, default_value_t = 200)]
    steps: u64,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Micro-batches per optimiser step (gradient accumulation).
    #[arg(long, default_value_t = 1)]
    accum: usize,
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
    /// Learned position table: on (one row per position of --seq) unless --no-positions.
    #[arg(long)]
    no_positions: bool,
    /// Classifier pooling (mean | first | last; default: the task's suggestion).
    #[arg(long)]
    pool: Option<String>,
    /// Attention mask: causal or full (default: the task's suggestion).
    #[arg(long)]
    attention: Option<String>,
    /// Peak learning rate (warm-up 10% of the steps, cosine decay to a tenth).
    #[arg(long, default_value_t = 3e-3)]
    lr: f32,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f32,
    /// Seed (initialisation and batches).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Threads for the kernels (default: RAYON_NUM_THREADS or all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Where the matrix products run: cpu, gpu (falls back to the CPU, saying why, when
    /// no adapter is found) or auto. gpu/auto need a build with `--features gpu`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Evaluate on the validation split every N steps (default: 10 times per run).
    #[arg(long)]
    eval_every: Option<u64>,
    /// Validation batches per evaluation.
    #[arg(long, default_value_t = 8)]
    eval_batches: usize,
    /// Output model file (.gguf; also writes OUT.metrics.jsonl and OUT.loss.svg).
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
    /// Start from this model's weights (fine-tuning: fresh optimiser and schedule; the
    /// shape, including EMoE layers, comes from the file; .gguf or .safetensors).
    #[arg(long, conflicts_with = "resume")]
    init: Option<PathBuf>,
    /// For a model with EMoE layers: train with the top-k expert mask (on, the default) or
    /// densely (off).
    #[arg(long, default_value = "on")]
    emoe_mask: String,
    /// EMoE routing noise while training (std = value / experts; the published code's 1.0;
    /// default off).
    #[arg(long, default_value_t = 0.0)]
    emoe_noise: f32,
    /// EMoE capacity factor (the published code's 1.5; default 0 = no capacity limit).
    #[arg(long, default_value_t = 0.0)]
    emoe_capacity: f32,
    /// EMoE auxiliary load/importance loss weight (the published code's 0.01; default 0 =
    /// off; its gradient reaches the FFN input, never the gates).
    #[arg(long, default_value_t = 0.0)]
    emoe_aux: f32,
    /// SortedNet: nested depths (comma-separated; the full depth is implied), e.g. 1,2,3.
    #[arg(long)]
    nested_depths: Option<String>,
    /// SortedNet: nested FFN widths (comma-separated; the full width is implied).
    #[arg(long)]
    nested_ffn: Option<String>,
    /// SortedNet: nested attention-head counts (the first H heads of every block;
    /// comma-separated; all heads implied). The file then stores the attention head-major.
    #[arg(long)]
    nested_heads: Option<String>,
    /// SortedNet for ModuleFormer: nested expert counts (the first N experts of every
    /// mixture; comma-separated; all experts implied).
    #[arg(long)]
    nested_experts: Option<String>,
    /// SortedNet: sub-models trained per micro-batch besides the full model — `uniform:N`
    /// (N drawn from the grid; SortedNet), `all` (every size), `matformer` (one FFN width),
    /// `off` (full model only: nested sizes are then plain truncations). Default: uniform:1
    /// for a nested model.
    #[arg(long)]
    sorted: Option<String>,
    /// SortedNet in-place distillation: `α` or `α:τ` — each sampled sub-model's loss is
    /// (1 − α)·CE + α·τ²·KL(full ‖ sub) against the full model's output on the same batch
    /// (default: off, plain cross-entropy as in SortedNet).
    #[arg(long)]
    sorted_distill: Option<String>,
    /// ModuleFormer: experts per mixture (attention and FFN, unless set separately).
    #[arg(long, default_value_t = 8)]
    experts: usize,
    /// ModuleFormer: attention experts (default --experts).
    #[arg(long)]
    att_experts: Option<usize>,
    /// ModuleFormer: FFN experts (default --experts).
    #[arg(long)]
    ffn_experts: Option<usize>,
    /// ModuleFormer: experts per token in both mixtures (top-k).
    #[arg(long, default_value_t = 2)]
    top_k: usize,
    /// ModuleFormer: router MLP hidden width (0 = linear routers).
    #[arg(long, default_value_t = 64)]
    router_hidden: usize,
    /// ModuleFormer: shared key/value projections (with --heads and --att-hidden) instead of
    /// K = V = LN1(x) (MoLM's choice: one head of width d per attention expert).
    #[arg(long)]
    kv_proj: bool,
    /// ModuleFormer: query/output width of an attention expert (default d; needs --kv-proj
    /// when different from d).
    #[arg(long)]
    att_hidden: Option<usize>,
    /// ModuleFormer: weight of the mutual-information load-balancing loss (summed over all
    /// routers).
    #[arg(long, default_value_t = 0.01)]
    aux_mi: f32,
    /// ModuleFormer: weight of the load-concentration loss H(e) (fine-tuning).
    #[arg(long, default_value_t = 0.0)]
    aux_lc: f32,
    /// ModuleFormer: renormalise the top-k gates to sum to 1 (MoLM does not).
    #[arg(long)]
    renormalize: bool,
    /// ModuleFormer: train only experts from this index on (in every mixture) and their
    /// router rows; everything else is frozen (e.g. to resume an extension run).
    #[arg(long)]
    freeze_experts: Option<usize>,
    /// SeqBoat: EMA expansion N.
    #[arg(long, default_value_t = 16)]
    ndim: usize,
    /// SeqBoat: shared Q/K width z (default d/2).
    #[arg(long)]
    zdim: Option<usize>,
    /// SeqBoat: value/gate width e (default 2d).
    #[arg(long)]
    hdim: Option<usize>,
    /// SeqBoat: working-memory window w in activated tokens (0: the whole compressed
    /// sequence).
    #[arg(long, default_value_t = 16)]
    window: usize,
    /// SeqBoat: which tokens run the attention unit — learned (SeqBoat), always (every
    /// token: dense with --window 0, local window otherwise) or off (EMA only).
    #[arg(long, default_value = "learned")]
    gate: String,
    /// SeqBoat: attention function, softmax or relu2.
    #[arg(long, default_value = "softmax")]
    sb_attn: String,
    /// SeqBoat: LayerNorm placement, pre or post (default: post for classifiers, pre for
    /// language models, as in the released configurations).
    #[arg(long)]
    norm: Option<String>,
    /// SeqBoat: initial temperature scale s (τ = s·√d).
    #[arg(long)]
    temp_scale: Option<f32>,
    /// SeqBoat: relative-position bias range M (offsets clamped to ±(M−1)).
    #[arg(long, default_value_t = 2002)]
    max_pos: usize,
    /// No progress bar (periodic lines instead), e.g. for logs.
    #[arg(long)]
    quiet: bool,
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
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

/// Run `modula train`.
pub fn run(a: &TrainArgs) -> Result<(), String> {
    select_device(&a.device)?;
    match a.arch.as_str() {
        "dense" => {}
        "moduleformer" => return run_mf(a),
        "seqboat" => return run_sb(a),
        other => {
            return Err(format!(
                "--arch {other}: use dense, moduleformer or seqboat"
            ))
        }
    }
    if a.steps == 0 || a.batch == 0 || a.data.seq == 0 || a.accum == 0 {
        return Err("--steps, --batch, --accum and --seq must be positive".into());
    }
    if let Some(t) = a.threads {
        par::set_threads(t);
    }
    let (data, seq) = a.data.load()?;
    let shape = data.shape();
    let (mut model, mut state) = start(
        a,
        seq,
        load_dense,
        |p| load_model(p).map(|(m, _)| m),
        || {
            let causal = match a.attention.as_deref() {
                None => shape.causal,
                Some("causal") => true,
                Some("full") => false,
                Some(x) => return Err(format!("--attention {x}: use causal or full")),
            };
            let pool = match &a.pool {
                Some(p) => Pool::parse(p)?,
                None => shape.pool,
            };
            let cfg = DenseConfig {
                vocab: shape.vocab,
                d: a.d,
                layers: a.layers,
                heads: a.heads,
                ffn: a.ffn,
                max_seq: if a.no_positions { 0 } else { seq },
                causal,
                patch_dim: shape.patch_dim,
                classes: shape.classes,
                pool,
                ..DenseConfig::lm(0, 0, 0, 0, 0)
            };
            DenseModel::new(cfg, a.seed)
        },
    )?;
    model.emoe_mask = parse_mask(&a.emoe_mask)?;
    let ok = a.emoe_noise >= 0.0
        && a.emoe_capacity >= 0.0
        && a.emoe_aux >= 0.0
        && a.emoe_aux.is_finite();
    if !ok {
        return Err("--emoe-noise, --emoe-capacity and --emoe-aux must be >= 0".into());
    }
    model.emoe_noise = a.emoe_noise;
    model.emoe_capacity = a.emoe_capacity;
    model.emoe_aux = a.emoe_aux;
    if a.nested_depths.is_some() || a.nested_ffn.is_some() || a.nested_heads.is_some() {
        let list = |s: &Option<String>, what: &str| -> Result<Vec<usize>, String> {
            s.as_deref()
                .unwrap_or("")
                .split(',')
                .filter(|v| !v.trim().is_empty())
                .map(|v| {
                    v.trim()
                        .parse()
                        .map_err(|_| format!("--nested-{what}: '{v}' is not a size"))
                })
                .collect()
        };
        let depths = list(&a.nested_depths, "depths")?;
        let ffn = list(&a.nested_ffn, "ffn")?;
        let heads = list(&a.nested_heads, "heads")?;
        model.cfg = model.cfg.with_nested(&depths, &ffn)?;
        model.cfg = model.cfg.with_nested_heads(&heads)?;
    }
    let sorted = match &a.sorted {
        Some(s) => modula_train::trainer::Sorted::parse(s).map_err(|e| format!("--sorted {e}"))?,
        None if model.cfg.nested_grid3().len() > 1 => modula_train::trainer::Sorted::Uniform(1),
        None => modula_train::trainer::Sorted::Off,
    };
    let c = model.cfg;
    check_fits(&model, data.as_ref())?;
    let lm = !c.is_classifier();
    if c.nested_grid3().len() > 1 {
        println!(
            "SortedNet: depths {:?} x FFN widths {:?} x heads {:?} ({} sub-models), training {:?}",
            c.nested_depth_list(),
            c.nested_ffn_list(),
            c.nested_head_list(),
            c.nested_grid3().len(),
            sorted
        );
    }
    let tc = TrainConfig {
        sorted,
        ..train_config(a, seq)?
    };
    println!("data: {}", data.describe());
    if c.emoe_layers != 0 {
        println!(
            "EMoE: blocks {:?}, {} experts, top-{}, mask {}, noise {}, capacity {}, aux loss {}",
            c.emoe_layer_list(),
            c.emoe_experts,
            c.emoe_top_k,
            if model.emoe_mask { "on" } else { "off (dense)" },
            model.emoe_noise,
            model.emoe_capacity,
            model.emoe_aux
        );
    }
    println!(
        "model: dense d={} layers={} heads={} ffn={} positions={} attention={} head={} ({} parameters); {} threads",
        c.d,
        c.layers,
        c.heads,
        c.ffn,
        c.max_seq,
        if c.causal { "causal" } else { "full" },
        if lm {
            format!("lm/{}", c.vocab)
        } else {
            format!("classify/{} ({})", c.classes, c.pool.name())
        },
        model.params.len(),
        par::threads()
    );
    fit(
        a,
        &mut model,
        &mut state,
        data.as_ref(),
        seq,
        &tc,
        lm,
        &format!("dense d={} L={}", c.d, c.layers),
    )
}

fn train_config(a: &TrainArgs, seq: usize) -> Result<TrainConfig, String> {
    let sorted_distill = match &a.sorted_distill {
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

/// `modula moduleformer extend`: `--init` model plus `new` experts per mixture, only they
/// (and their router rows) train.
pub fn run_extend(a: &TrainArgs, new: usize) -> Result<(), String> {
    if a.init.is_none() {
        return Err("extension needs the trained model (--init MODEL.gguf)".into());
    }
    run_mf_with(a, new)
}

/// The model to train: resumed from `--resume` (its context must be `seq` and its step
/// below `--steps`), read from `--init` (fine-tuning: fresh optimiser and schedule; `init`
/// names the file in its errors), or made by `fresh`.
fn start<M>(
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
            Ok((m, TrainState::new(a.seed)))
        }
        (None, None) => Ok((fresh()?, TrainState::new(a.seed))),
    }
}

/// `modula train --arch moduleformer`.
fn run_mf(a: &TrainArgs) -> Result<(), String> {
    run_mf_with(a, 0)
}

fn run_mf_with(a: &TrainArgs, extend: usize) -> Result<(), String> {
    if a.nested_heads.is_some() || a.nested_ffn.is_some() || a.nested_depths.is_some() {
        return Err(
            "--nested-heads/--nested-ffn/--nested-depths do not apply to --arch moduleformer: \
             its heads and FFN units are experts, nested with --nested-experts"
                .into(),
        );
    }
    if a.steps == 0 || a.batch == 0 || a.data.seq == 0 || a.accum == 0 {
        return Err("--steps, --batch, --accum and --seq must be positive".into());
    }
    if !(a.aux_mi.is_finite() && a.aux_lc.is_finite() && a.aux_mi >= 0.0 && a.aux_lc >= 0.0) {
        return Err("--aux-mi and --aux-lc must be finite and >= 0".into());
    }
    if let Some(t) = a.threads {
        par::set_threads(t);
    }
    let (data, seq) = a.data.load()?;
    let shape = data.shape();
    if shape.classes > 0 || shape.patch_dim > 0 {
        return Err(format!(
            "--arch moduleformer is a language model; --data {} is a classification task",
            a.data.data
        ));
    }
    let (mut model, mut state) = start(
        a,
        seq,
        load_mf,
        |p| {
            let at = |e: String| format!("{}: {e}", p.display());
            let f = Model::open(p).map_err(|e| at(e.to_string()))?;
            MfModel::read_gguf(&f).map(|(m, _)| m).map_err(at)
        },
        || {
            let cfg = MfConfig {
                vocab: shape.vocab,
                d: a.d,
                layers: a.layers,
                att_experts: a.att_experts.unwrap_or(a.experts),
                att_k: a.top_k,
                att_hidden: a.att_hidden.unwrap_or(a.d),
                heads: if a.kv_proj { a.heads } else { 1 },
                kv_proj: a.kv_proj,
                ffn_experts: a.ffn_experts.unwrap_or(a.experts),
                ffn_k: a.top_k,
                ffn_hidden: a.ffn,
                router_hidden: a.router_hidden,
                renormalize: a.renormalize,
                aux_mi: a.aux_mi,
                aux_lc: a.aux_lc,
                nested_experts: [0; 8],
            };
            MfModel::new(cfg, a.seed)
        },
    )?;
    model.cfg.aux_mi = a.aux_mi;
    model.cfg.aux_lc = a.aux_lc;
    if let Some(list) = &a.nested_experts {
        let counts: Vec<usize> = list
            .split(',')
            .filter(|v| !v.trim().is_empty())
            .map(|v| {
                v.trim()
                    .parse()
                    .map_err(|_| format!("--nested-experts: '{v}' is not a count"))
            })
            .collect::<Result<_, _>>()?;
        model.cfg = model.cfg.with_nested_experts(&counts)?;
    }
    if extend > 0 && model.cfg.nested_experts.iter().any(|&c| c > 0) {
        return Err("extension of a model with nested expert counts is not supported".into());
    }
    if extend > 0 {
        let old = (model.cfg.att_experts, model.cfg.ffn_experts);
        let (m, _) = model.extend(extend, a.seed ^ 0xe47e)?;
        model = m;
        println!(
            "extension: {} + {extend} attention and {} + {extend} FFN experts per block; only the new experts and their router rows train",
            old.0, old.1
        );
    } else if let Some(first) = a.freeze_experts {
        let r = model.ranges_from_expert(first);
        model.params.set_trainable(r);
        println!("training only experts {first}.. of every mixture and their router rows");
    }
    if model.cfg.vocab != shape.vocab {
        return Err(format!(
            "the model's vocabulary ({}) does not match the data's ({})",
            model.cfg.vocab, shape.vocab
        ));
    }
    let c = model.cfg;
    println!("data: {}", data.describe());
    println!(
        "model: moduleformer d={} layers={} attention {}x top-{} (width {}, {} head(s), {}) ffn {}x top-{} (width {}), router {}, aux mi {} lc {} ({} parameters, {} active per token); {} threads",
        c.d,
        c.layers,
        c.att_experts,
        c.att_k,
        c.att_hidden,
        c.heads,
        if c.kv_proj { "projected K/V" } else { "K = V = LN1(x)" },
        c.ffn_experts,
        c.ffn_k,
        c.ffn_hidden,
        if c.router_hidden > 0 { format!("mlp/{}", c.router_hidden) } else { "linear".into() },
        c.aux_mi,
        c.aux_lc,
        model.params.len(),
        c.active_params(),
        par::threads()
    );
    let sorted = match &a.sorted {
        Some(s) => modula_train::trainer::Sorted::parse(s).map_err(|e| format!("--sorted {e}"))?,
        None if model.cfg.nested_expert_list().len() > 1 => {
            modula_train::trainer::Sorted::Uniform(1)
        }
        None => modula_train::trainer::Sorted::Off,
    };
    if model.cfg.nested_expert_list().len() > 1 {
        println!(
            "SortedNet: nested expert counts {:?}, training {sorted:?}",
            model.cfg.nested_expert_list()
        );
    }
    let tc = TrainConfig {
        sorted,
        ..train_config(a, seq)?
    };
    let title = format!(
        "moduleformer d={} L={} E={}/{}",
        c.d, c.layers, c.att_experts, c.ffn_experts
    );
    fit(
        a,
        &mut model,
        &mut state,
        data.as_ref(),
        seq,
        &tc,
        true,
        &title,
    )
}

/// `modula train --arch seqboat`.
fn run_sb(a: &TrainArgs) -> Result<(), String> {
    if a.steps == 0 || a.batch == 0 || a.data.seq == 0 || a.accum == 0 {
        return Err("--steps, --batch, --accum and --seq must be positive".into());
    }
    let foreign = [
        ("--nested-ffn", a.nested_ffn.is_some()),
        ("--nested-heads", a.nested_heads.is_some()),
        ("--nested-experts", a.nested_experts.is_some()),
        ("--freeze-experts", a.freeze_experts.is_some()),
        ("--pool", a.pool.is_some()),
        ("--emoe-aux", a.emoe_aux != 0.0),
    ];
    if let Some((flag, _)) = foreign.iter().find(|(_, set)| *set) {
        return Err(format!(
            "{flag} does not apply to --arch seqboat (SeqBoat models nest depths only; no \
             experts or pooling choice)"
        ));
    }
    if let Some(t) = a.threads {
        par::set_threads(t);
    }
    let (data, seq) = a.data.load()?;
    let shape = data.shape();
    if shape.patch_dim > 0 {
        return Err("--arch seqboat takes token data (listops, recall, copy or text)".into());
    }
    let (mut model, mut state) = start(
        a,
        seq,
        load_sb,
        |p| {
            let at = |e: String| format!("{}: {e}", p.display());
            let f = Model::open(p).map_err(|e| at(e.to_string()))?;
            SbModel::read_gguf(&f).map(|(m, _)| m).map_err(at)
        },
        || {
            let lm = shape.classes == 0;
            let causal = match a.attention.as_deref() {
                None => lm,
                Some(m) => parse_mask(m)?,
            };
            let prenorm = match a.norm.as_deref() {
                None => lm,
                Some("pre") => true,
                Some("post") => false,
                Some(o) => return Err(format!("--norm {o}: use pre or post")),
            };
            let attn = match a.sb_attn.as_str() {
                "softmax" => SbAttn::Softmax,
                "relu2" => SbAttn::Relu2,
                o => return Err(format!("--sb-attn {o}: use softmax or relu2")),
            };
            let cfg = SbConfig {
                vocab: shape.vocab,
                classes: shape.classes,
                d: a.d,
                layers: a.layers,
                ndim: a.ndim,
                z: a.zdim.unwrap_or((a.d / 2).max(1)),
                e: a.hdim.unwrap_or(2 * a.d),
                window: a.window,
                causal,
                attn,
                prenorm,
                temp_scale: a.temp_scale.unwrap_or(if lm { 1.0 } else { 0.3 }),
                max_pos: a.max_pos,
                gate: SbGate::parse(&a.gate).map_err(|e| format!("--gate: {e}"))?,
                pad: (a.data.data == "listops").then_some(0),
                nested_depths: 0,
            };
            SbModel::new(cfg, a.seed)
        },
    )?;
    if let Some(list) = &a.nested_depths {
        let depths = list
            .split(',')
            .filter(|v| !v.trim().is_empty())
            .map(|v| {
                v.trim()
                    .parse()
                    .map_err(|_| format!("--nested-depths: '{v}' is not a depth"))
            })
            .collect::<Result<Vec<usize>, _>>()?;
        model.cfg = model.cfg.with_nested_depths(&depths)?;
    }
    let c = model.cfg;
    if c.vocab != shape.vocab || c.classes != shape.classes {
        return Err(format!(
            "the model ({} tokens, {} classes) does not fit the data ({} tokens, {} classes)",
            c.vocab, c.classes, shape.vocab, shape.classes
        ));
    }
    println!("data: {}", data.describe());
    println!(
        "model: seqboat d={} layers={} N={} z={} e={} window={} {} {} {}-LN gate {} ({} parameters); {} threads",
        c.d,
        c.layers,
        c.ndim,
        c.z,
        c.e,
        c.window,
        if c.causal { "causal" } else { "bidirectional" },
        match c.attn {
            SbAttn::Softmax => "softmax",
            SbAttn::Relu2 => "relu2",
        },
        if c.prenorm { "pre" } else { "post" },
        c.gate.name(),
        model.params.len(),
        par::threads()
    );
    let nested = c.nested_depth_list().len() > 1;
    let sorted = match &a.sorted {
        Some(s) => modula_train::trainer::Sorted::parse(s).map_err(|e| format!("--sorted {e}"))?,
        None if nested => modula_train::trainer::Sorted::Uniform(1),
        None => modula_train::trainer::Sorted::Off,
    };
    if nested {
        println!(
            "SortedNet: nested depths {:?}, training {sorted:?}",
            c.nested_depth_list()
        );
    }
    let tc = TrainConfig {
        sorted,
        ..train_config(a, seq)?
    };
    let title = format!(
        "seqboat d={} L={} w={} gate {}",
        c.d,
        c.layers,
        c.window,
        c.gate.name()
    );
    fit(
        a,
        &mut model,
        &mut state,
        data.as_ref(),
        seq,
        &tc,
        c.classes == 0,
        &title,
    )
}

/// What `modula train` needs from a model beyond training.
trait CliModel: Trainable {
    fn save_checkpoint(&self, p: &Path, st: &TrainState, seq: usize) -> Result<u64, String>;
    fn write_model(&self, p: &Path, seq: usize) -> Result<u64, String>;
    /// What a nested size `AxB` means for this model.
    fn size_label(&self) -> &'static str;
}

impl CliModel for DenseModel {
    fn save_checkpoint(&self, p: &Path, st: &TrainState, seq: usize) -> Result<u64, String> {
        save_dense(p, self, st, seq)
    }
    fn write_model(&self, p: &Path, seq: usize) -> Result<u64, String> {
        self.write_gguf(p, seq, "modula dense baseline")
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
        save_mf(p, self, st, seq)
    }
    fn write_model(&self, p: &Path, seq: usize) -> Result<u64, String> {
        self.write_gguf(p, seq, "modula moduleformer")
    }
    fn size_label(&self) -> &'static str {
        "attention x FFN experts"
    }
}

impl CliModel for SbModel {
    fn save_checkpoint(&self, p: &Path, st: &TrainState, seq: usize) -> Result<u64, String> {
        save_sb(p, self, st, seq)
    }
    fn write_model(&self, p: &Path, seq: usize) -> Result<u64, String> {
        self.write_gguf(p, seq, "modula seqboat")
    }
    fn size_label(&self) -> &'static str {
        "depth x width"
    }
}

/// The training loop of `modula train` for any model: progress, metrics, evaluation,
/// checkpoints, the model file and the loss picture.
#[allow(clippy::too_many_arguments)]
fn fit<M: CliModel>(
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
    let metrics_path = with_suffix(&a.out, ".metrics.jsonl");
    let mut metrics = std::io::BufWriter::new(
        std::fs::File::create(&metrics_path)
            .map_err(|e| format!("cannot create {}: {e}", metrics_path.display()))?,
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
                io_err.get_or_insert(format!("{}: {e}", metrics_path.display()));
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
            .map_err(|e| format!("cannot write {}: {e}", metrics_path.display()))?;
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
                .map_err(|e| format!("cannot write {}: {e}", metrics_path.display()))?;
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
        .map_err(|e| format!("cannot write {}: {e}", metrics_path.display()))?;
    let val = match val {
        Some(v) => v,
        None => eval_model(&*model, data, a.eval_batches, a.batch, seq, a.seed ^ 0x5eed)?,
    };
    let bytes = model.write_model(&a.out, seq)?;
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

fn parse_mask(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("--emoe-mask {s}: use on or off")),
    }
}

/// The model's input and head must match the data.
fn check_fits(model: &DenseModel, data: &dyn Dataset) -> Result<(), String> {
    let (c, shape) = (model.cfg, data.shape());
    if (shape.vocab, shape.patch_dim, shape.classes) != (c.vocab, c.patch_dim, c.classes) {
        return Err(format!(
            "the model does not fit this data (model: vocab {}, patch {}, classes {}; data: vocab {}, patch {}, classes {})",
            c.vocab, c.patch_dim, c.classes, shape.vocab, shape.patch_dim, shape.classes
        ));
    }
    Ok(())
}

/// Arguments of `modula eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Model file (.gguf or .safetensors).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    /// Sequences per batch.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Batches (finite validation sets: up to batches × batch examples, in order).
    #[arg(long, default_value_t = 32)]
    batches: usize,
    /// Seed of random validation windows (text and generated LM tasks).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Threads for the kernels.
    #[arg(long)]
    threads: Option<usize>,
    /// For a model with EMoE layers: evaluate with the expert mask (on) or densely (off).
    #[arg(long, default_value = "on")]
    emoe_mask: String,
    /// Evaluate a nested sub-model — `DEPTHxFFN` (e.g. 2x128) of a dense model, `N` or
    /// `ATTxFFN` experts of a ModuleFormer model — or `all` for every nested size the file
    /// declares.
    #[arg(long)]
    size: Option<String>,
    /// SeqBoat: bias(es) towards skipping the attention unit at test time (b_act,
    /// comma-separated to trace accuracy against the activation ratio; default 0).
    #[arg(long)]
    act_bias: Option<String>,
    /// Score through the inference engine (`modula run`'s arithmetic: the file's weight
    /// types with the quantised kernels, one token at a time from a fresh state per
    /// window) instead of the training forward pass (which dequantises to f32): the
    /// quality a device actually gets. Language models; same windows.
    #[arg(long)]
    engine: bool,
    /// With --engine: keep activations in f32 in the products over Q8_0/Q4_0 weights
    /// (as `modula run --f32-activations`).
    #[arg(long, requires = "engine")]
    f32_activations: bool,
}

/// `modula eval --engine`: the validation windows of a plain `modula eval` scored by the
/// decode engine, token by token, each window from a fresh state.
fn eval_engine<B: AsRef<[u8]>>(a: &EvalArgs, f: &Model<B>) -> Result<(), String> {
    if a.act_bias.is_some() || a.emoe_mask != "on" {
        return Err("--engine runs the model as deployed: no --act-bias, --emoe-mask on".into());
    }
    modula_core::kernels::linear::set_quantized_activations(!a.f32_activations);
    let (data, seq) = a.data.load()?;
    let sh = data.shape();
    if sh.vocab == 0 || sh.classes > 0 {
        return Err("--engine scores language models (next-token targets)".into());
    }
    let seqboat = f.get_str("modula.model") == Some("seqboat");
    let mut e = crate::run::open_engine(f, (!seqboat).then_some(seq))
        .map_err(|e| format!("{}: {e}", a.model.display()))?;
    if e.vocab() != sh.vocab {
        return Err("the model does not fit this data (vocabulary)".into());
    }
    if let Some(sz) = a.size.as_deref() {
        let size = e.parse_size(sz)?;
        e.set_size(size)?;
    }
    println!(
        "model: {} (scored by the decode engine, size {})",
        a.model.display(),
        e.size().label()
    );
    println!("data: {} at {seq} positions", data.describe());
    let (mut nats, mut right, mut n) = (0.0f64, 0usize, 0usize);
    for b in data
        .eval_batches(a.batch, seq, a.batches, a.seed)
        .map_err(|e| e.to_string())?
    {
        for i in 0..b.b {
            e.reset();
            for t in 0..b.t {
                let l = e.step(b.tokens[i * b.t + t])?;
                let target = b.targets[i * b.t + t];
                if target == modula_train::layers::loss::IGNORE {
                    continue;
                }
                let lse = crate::run::log_sum_exp(l);
                let target = target as usize;
                let Some(&lt) = l.get(target) else {
                    return Err(format!("target {target} outside the vocabulary"));
                };
                nats += lse - f64::from(lt);
                right += usize::from(crate::run::greedy(l) as usize == target);
                n += 1;
            }
        }
    }
    if n == 0 {
        return Err("the validation data has no targets".into());
    }
    let r = EvalResult {
        loss: nats / n as f64,
        accuracy: right as f64 / n as f64,
        targets: n,
    };
    println!("validation {}", describe(&r, true));
    Ok(())
}

/// `modula eval` of a SeqBoat file: loss, accuracy, per-layer activation ratio and mean
/// attention span (original positions) for each `--act-bias`.
fn eval_sb<B: AsRef<[u8]>>(a: &EvalArgs, f: &Model<B>) -> Result<(), String> {
    let (mut m, ctx) = SbModel::read_gguf(f).map_err(|e| format!("{}: {e}", a.model.display()))?;
    let (data, seq) = a.data.load()?;
    let sh = data.shape();
    if sh.vocab != m.cfg.vocab || sh.classes != m.cfg.classes {
        return Err("the model does not fit this data (vocabulary or task)".into());
    }
    let depths: Vec<Option<usize>> = match a.size.as_deref() {
        None => vec![None],
        Some("all") => m.cfg.nested_depth_list().into_iter().map(Some).collect(),
        Some(sz) => vec![Some(sz.parse().map_err(|_| {
            format!("--size {sz}: for a SeqBoat file use a depth N or all")
        })?)],
    };
    let biases: Vec<f32> = match &a.act_bias {
        None => vec![0.0],
        Some(list) => list
            .split(',')
            .map(|v| {
                v.trim()
                    .parse::<f32>()
                    .ok()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| format!("--act-bias: '{v}' is not a number"))
            })
            .collect::<Result<_, _>>()?,
    };
    println!(
        "model: {} (seqboat, trained with context {ctx})",
        a.model.display()
    );
    println!("data: {} at {seq} positions", data.describe());
    let lm = m.cfg.classes == 0;
    for (depth, b) in depths
        .iter()
        .flat_map(|&d| biases.iter().map(move |&b| (d, b)))
    {
        if depth.is_some_and(|d| d == 0 || d > m.cfg.layers) {
            return Err(format!("--size: depth outside 1..={}", m.cfg.layers));
        }
        m.depth = depth;
        m.act_bias = b;
        let cfg = m.cfg;
        let (mut act, mut span, mut n) = (Vec::<f32>::new(), Vec::<f32>::new(), 0f32);
        let r = modula_train::trainer::eval_model_with(
            &m,
            data.as_ref(),
            a.batches,
            a.batch,
            seq,
            a.seed,
            |acts| {
                let (ra, rs) = (acts.activation_ratio(), acts.mean_span(&cfg));
                if act.is_empty() {
                    act = vec![0.0; ra.len()];
                    span = vec![0.0; rs.len()];
                }
                act.iter_mut().zip(&ra).for_each(|(x, y)| *x += y);
                span.iter_mut().zip(&rs).for_each(|(x, y)| *x += y);
                n += 1.0;
            },
        )?;
        let fmt = |v: &[f32], p: usize| {
            v.iter()
                .map(|x| format!("{:.p$}", x / n.max(1.0)))
                .collect::<Vec<_>>()
                .join(",")
        };
        let size = depth.map(|d| format!("depth {d}, ")).unwrap_or_default();
        println!(
            "{size}act-bias {b}: {}  activation {}  span {}",
            describe(&r, lm),
            fmt(&act, 3),
            fmt(&span, 1)
        );
    }
    Ok(())
}

/// Load a dense model from a .gguf or .safetensors file.
pub fn load_model(p: &Path) -> Result<(DenseModel, usize), String> {
    let is_st = p.extension().is_some_and(|e| e == "safetensors");
    if is_st {
        let bytes = std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        DenseModel::read_safetensors(&bytes).map_err(|e| format!("{}: {e}", p.display()))
    } else {
        let m = Model::open(p).map_err(|e| format!("{}: {e}", p.display()))?;
        DenseModel::read_gguf(&m).map_err(|e| format!("{}: {e}", p.display()))
    }
}

/// Run `modula eval`.
pub fn eval(a: &EvalArgs) -> Result<(), String> {
    if let Some(t) = a.threads {
        par::set_threads(t);
    }
    if a.model.extension().is_none_or(|e| e != "safetensors") {
        let f = Model::open(&a.model).map_err(|e| format!("{}: {e}", a.model.display()))?;
        if a.engine {
            return eval_engine(a, &f);
        }
        if f.get_str("modula.model") == Some("seqboat") {
            return eval_sb(a, &f);
        }
        if a.act_bias.is_some() {
            return Err("--act-bias applies to SeqBoat models".into());
        }
        if f.get_str("modula.model") == Some("moduleformer") {
            let (mut m, ctx) =
                MfModel::read_gguf(&f).map_err(|e| format!("{}: {e}", a.model.display()))?;
            let (data, seq) = a.data.load()?;
            if data.shape().vocab != m.cfg.vocab || data.shape().classes > 0 {
                return Err("the model does not fit this data (vocabulary or task)".into());
            }
            // nested experts: N (both mixtures), ATTxFFN, or all declared counts
            let sizes: Vec<Option<(usize, usize)>> = match a.size.as_deref() {
                None => vec![None],
                Some("all") => m
                    .cfg
                    .nested_expert_list()
                    .into_iter()
                    .map(|c| Some((c, c)))
                    .collect(),
                Some(sz) => {
                    let parsed = match sz.split_once('x') {
                        Some((x, y)) => x.parse().ok().zip(y.parse().ok()),
                        None => sz.parse().ok().map(|n: usize| (n, n)),
                    };
                    vec![Some(parsed.ok_or_else(|| {
                        format!(
                            "--size {sz}: for a ModuleFormer file use N (experts), ATTxFFN or all"
                        )
                    })?)]
                }
            };
            println!(
                "model: {} (moduleformer, trained with context {ctx})",
                a.model.display()
            );
            println!("data: {} at {seq} positions", data.describe());
            for sz in sizes {
                m.nested = sz;
                let r = eval_model(&m, data.as_ref(), a.batches, a.batch, seq, a.seed)?;
                match sz {
                    None => println!("validation {}", describe(&r, true)),
                    Some((ea, ef)) => println!(
                        "validation {ea} attention x {ef} FFN experts: {}",
                        describe(&r, true)
                    ),
                }
            }
            return Ok(());
        }
    }
    if a.engine {
        return Err("--engine needs a GGUF file (the engine maps GGUF)".into());
    }
    let (mut model, ctx) = load_model(&a.model)?;
    model.emoe_mask = parse_mask(&a.emoe_mask)?;
    let (data, seq) = a.data.load()?;
    let c = model.cfg;
    check_fits(&model, data.as_ref()).map_err(|e| format!("{}: {e}", a.model.display()))?;
    let sizes: Vec<Option<[usize; 3]>> = match a.size.as_deref() {
        None => vec![None],
        Some("all") => c.nested_grid3().into_iter().map(Some).collect(),
        Some(sz) => {
            let parts: Option<Vec<usize>> = sz.split('x').map(|v| v.parse().ok()).collect();
            match parts.as_deref() {
                Some(&[dp, f]) => vec![Some([dp, f, c.heads])],
                Some(&[dp, f, h]) => vec![Some([dp, f, h])],
                _ => {
                    return Err(format!(
                    "--size {sz}: use DEPTHxFFN or DEPTHxFFNxHEADS, e.g. 2x128 or 2x128x2, or all"
                ))
                }
            }
        }
    };
    println!("model: {} (trained with context {ctx})", a.model.display());
    println!("data: {} at {seq} positions", data.describe());
    for sz in sizes {
        model.nested = sz.map(|[dp, f, _]| (dp, f));
        model.nested_heads = sz.map(|[_, _, h]| h);
        let r = eval_dense(&model, data.as_ref(), a.batches, a.batch, seq, a.seed)?;
        match sz {
            None => println!("validation {}", describe(&r, !c.is_classifier())),
            Some([dp, f, h]) => println!(
                "validation depth {dp} x FFN {f} x {h} heads: {}",
                describe(&r, !c.is_classifier())
            ),
        }
    }
    Ok(())
}

/// Arguments of `modula convert`.
#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// Input model (.gguf or .safetensors).
    #[arg(long = "in")]
    input: PathBuf,
    /// Output model (.gguf or .safetensors, by extension).
    #[arg(long)]
    out: PathBuf,
}

/// Run `modula convert`.
pub fn convert(a: &ConvertArgs) -> Result<(), String> {
    let (model, ctx) = load_model(&a.input)?;
    if a.out.extension().is_some_and(|e| e == "safetensors") {
        model.write_safetensors(&a.out, ctx)?;
    } else {
        model.write_gguf(&a.out, ctx, "modula dense model")?;
    }
    println!(
        "wrote {} ({} parameters)",
        a.out.display(),
        model.params.len()
    );
    Ok(())
}
