//! The default command: the whole story on a built-in default, no download. Train a small
//! nested (SortedNet) byte LM on the built-in text, write it as GGUF, quantise it, map the
//! quantised file, measure every nested size on this device (parameters, compute, quality,
//! latency per token, peak resident memory of a process that runs only that size), write
//! the table as CSV and as a picture, pick the largest size that fits a budget and show
//! what it writes.

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use modula_core::engine::{DenseEngine, DenseSpec};
use modula_core::kernels::par;
use modula_core::quantize::{parse_target, quantize_model};
use modula_core::rng::SplitMix64;
use modula_core::Model;
use modula_train::data::ByteText;
use modula_train::model::dense::{DenseConfig, DenseModel};
use modula_train::plot::{line_chart, Series};
use modula_train::tasks::Dataset;
use modula_train::trainer::{train_from, Sorted, TrainConfig, TrainState};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::run::{calibrate, greedy, log_sum_exp, pick_by_latency, sample};
use modula_core::engine::Size;

/// Arguments of `modula demo` (all defaulted: `modula` alone runs it).
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Directory for the files it writes (models, table, picture).
    #[arg(long, default_value = "modula-demo")]
    pub dir: PathBuf,
    /// Training steps (micro-batches of --batch sequences of 64 bytes).
    #[arg(long, default_value_t = 500)]
    pub steps: u64,
    /// Sequences per step.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Model width.
    #[arg(long, default_value_t = 128)]
    pub d: usize,
    /// Blocks (every depth from 1 to this is a nested sub-model).
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    /// Attention heads.
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// FFN width (nested widths: a quarter and a half of it).
    #[arg(long, default_value_t = 512)]
    pub ffn: usize,
    /// Weight type of the deployed file: q8_0, q4_0, f16 or bf16.
    #[arg(long, default_value = "q8_0")]
    pub quant: String,
    /// Latency budget per token (ms); default: half the full model's measured time, or the fastest size's if every size is slower than that.
    #[arg(long, conflicts_with = "budget_mb")]
    pub budget_ms: Option<f64>,
    /// Memory budget (MiB of weights read + the engine's arena) instead of a latency budget.
    #[arg(long)]
    pub budget_mb: Option<f64>,
    /// Prompt for the chosen sub-model.
    #[arg(long, default_value = "The old miller")]
    pub prompt: String,
    /// Bytes to generate.
    #[arg(long, default_value_t = 240)]
    pub tokens: usize,
    /// Validation windows of 64 bytes per size for the quality column.
    #[arg(long, default_value_t = 64)]
    pub eval_windows: usize,
    /// Seed (data, initialisation, batches, sampling).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Threads for the kernels (default: MODULA_THREADS, or RAYON_NUM_THREADS, or all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// No progress bars (plain lines instead), e.g. for logs.
    #[arg(long)]
    pub quiet: bool,
}

impl Default for DemoArgs {
    fn default() -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct P {
            #[command(flatten)]
            a: DemoArgs,
        }
        P::parse_from(["modula"]).a
    }
}

/// Positions per training sequence (and rows of the position table).
const SEQ: usize = 64;

/// One row of the table.
struct Row {
    size: (usize, usize),
    params: u64,
    active: u64,
    mflop: f64,
    bpb_f32: f64,
    bpb_q: f64,
    acc_q: f64,
    ms_f32: f64,
    ms_q: f64,
    weights_q: u64,
    arena: u64,
    /// (at start, peak) of a process running only this size.
    rss: Option<(u64, u64)>,
}

fn bar(n: u64, quiet: bool, template: &str) -> Result<ProgressBar, String> {
    let pb = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(n)
    };
    pb.set_style(ProgressStyle::with_template(template).map_err(|e| e.to_string())?);
    Ok(pb)
}

/// A memory budget is checked before the training: what a size needs (its weights in the
/// target type + its arena) depends on the shapes only, so the untrained model, quantised
/// the same way, gives the same answer the trained one will — an impossible budget is an
/// error before any work.
fn budget_fits(
    model: &DenseModel,
    target: modula_quant::DType,
    dir: &std::path::Path,
    mb: f64,
) -> Result<(), String> {
    let (f, q) = (
        dir.join(".budget-check-f32.gguf"),
        dir.join(".budget-check-q.gguf"),
    );
    let r = (|| -> Result<(), String> {
        model
            .write_gguf(&f, SEQ, "modula demo budget check")
            .map_err(|e| format!("{}: {e}", f.display()))?;
        let m = Model::open(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        let (w, _) = quantize_model(&m, target)?;
        w.write_to(&q)
            .map_err(|e| format!("{}: {e}", q.display()))?;
        let mq = Model::open(&q).map_err(|e| format!("{}: {e}", q.display()))?;
        let spec = DenseSpec::from_model(&mq)?;
        spec.pick_by_memory(&mq, (mb * 1048576.0) as u64, SEQ)?;
        Ok(())
    })();
    let _ = std::fs::remove_file(&f);
    let _ = std::fs::remove_file(&q);
    r.map_err(|e| format!("--budget-mb {mb}: {e}"))
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

/// Bits per byte and next-byte accuracy of the engine's current size over `windows`
/// (teacher-forced, a fresh sequence per window).
fn engine_quality(e: &mut DenseEngine<'_>, windows: &[&[u8]]) -> Result<(f64, f64), String> {
    let (mut nats, mut right, mut n) = (0.0f64, 0usize, 0usize);
    for w in windows {
        e.reset();
        for pair in w.windows(2) {
            let l = e.step(u32::from(pair[0]))?;
            let lse = log_sum_exp(l);
            let t = usize::from(pair[1]);
            nats += lse - f64::from(l[t]);
            right += usize::from(greedy(l) as usize == t);
            n += 1;
        }
    }
    if n == 0 {
        return Err("no validation bytes to score".into());
    }
    Ok((
        nats / n as f64 / std::f64::consts::LN_2,
        right as f64 / n as f64,
    ))
}

/// (resident bytes when it starts, peak resident bytes) of a child `modula run` that maps
/// `model` and generates with sub-model `size` only (readahead off, so only the pages it
/// reads become resident). The child reads its own counters: a parent's `wait4` figure
/// would include the parent's memory (the child starts as a copy of it).
fn child_rss(model: &Path, size: (usize, usize), prompt: &str) -> Result<(u64, u64), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let out = std::process::Command::new(exe)
        .args(["run", "--model"])
        .arg(model)
        .args([
            "--size",
            &format!("{}x{}", size.0, size.1),
            "--prompt",
            prompt,
            "--tokens",
            "32",
            "--no-readahead",
            "--threads",
            "1",
            "--quiet",
            "--report-rss",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot start the measuring process: {e}"))?;
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!(
            "the measuring process for {}x{} failed ({}): {}",
            size.0,
            size.1,
            out.status,
            err.trim()
        ));
    }
    err.lines()
        .find_map(|l| {
            let mut f = l.strip_prefix("rss_bytes ")?.split(' ');
            Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
        })
        .ok_or_else(|| "peak RSS is not available on this system".into())
}

/// Generate `n` bytes after `prompt` with the engine's current size, streaming them to
/// stdout; when the position table is full, continue from the last half of the text.
fn generate(
    e: &mut DenseEngine<'_>,
    prompt: &[u8],
    n: usize,
    seed: u64,
) -> Result<(f64, Vec<u8>), String> {
    let ctx = e.max_context();
    if prompt.is_empty() || prompt.len() >= ctx {
        return Err(format!(
            "the prompt must have 1 to {} bytes (the model's context is {ctx})",
            ctx - 1
        ));
    }
    let mut text = prompt.to_vec();
    let mut out = std::io::stdout().lock();
    let mut rng = SplitMix64(seed);
    let mut used = 0;
    let mut logits = Vec::new();
    let t = Instant::now();
    for &b in prompt {
        logits.clear();
        logits.extend_from_slice(e.step(u32::from(b))?);
        used += 1;
    }
    for _ in 0..n {
        let next = sample(&logits, 0.7, 20, &mut rng) as u8;
        text.push(next);
        out.write_all(&[next]).map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
        if used == ctx {
            e.reset();
            used = 0;
            let keep = &text[text.len() - ctx / 2..];
            for &b in &keep[..keep.len() - 1] {
                e.step(u32::from(b))?;
                used += 1;
            }
        }
        logits.clear();
        logits.extend_from_slice(e.step(u32::from(next))?);
        used += 1;
    }
    writeln!(out).map_err(|e| e.to_string())?;
    Ok((t.elapsed().as_secs_f64(), text))
}

/// Run the demo.
pub fn run(a: &DemoArgs) -> Result<(), String> {
    let t_all = Instant::now();
    if let Some(t) = a.threads {
        crate::set_threads(t)?;
    }
    if a.steps == 0 || a.batch == 0 || a.eval_windows == 0 {
        return Err("--steps, --batch and --eval-windows must be positive".into());
    }
    if a.layers == 0 {
        return Err("--layers 0: the model needs at least one block".into());
    }
    if !a.ffn.is_multiple_of(128) || a.ffn == 0 {
        return Err(format!(
            "--ffn {} must be a positive multiple of 128 (its quarter and half are nested \
             widths on 32-value quantisation blocks)",
            a.ffn
        ));
    }
    let target = parse_target(&a.quant)?;
    if a.budget_mb.is_some_and(|v| !(v.is_finite() && v > 0.0)) {
        return Err("--budget-mb must be a positive number".into());
    }
    if a.budget_ms.is_some_and(|v| !(v.is_finite() && v > 0.0)) {
        return Err("--budget-ms must be a positive number".into());
    }
    if a.prompt.is_empty() || a.prompt.len() >= SEQ {
        return Err(format!(
            "--prompt must have 1 to {} bytes (the demo model's context is {SEQ})",
            SEQ - 1
        ));
    }
    std::fs::create_dir_all(&a.dir)
        .map_err(|e| format!("cannot create {}: {e}", a.dir.display()))?;
    let f32_path = a.dir.join("model-f32.gguf");
    let q_path = a.dir.join(format!("model-{}.gguf", a.quant));

    // 1. data
    let text = modula_train::corpus::generated_text(crate::train::TALES_BYTES, a.seed);
    let data = ByteText::from_bytes(text, 0.1).map_err(|e| e.to_string())?;
    println!("Modula demo — the whole story on a built-in default, no download.");
    println!("[1/6] data: {}", data.describe());

    // 2. train a nested byte LM the SortedNet way
    let depths: Vec<usize> = (1..a.layers).collect();
    let widths = [a.ffn / 4, a.ffn / 2];
    let cfg = DenseConfig {
        max_seq: SEQ,
        ..DenseConfig::lm(256, a.d, a.layers, a.heads, a.ffn)
    }
    .with_nested(&depths, &widths)?;
    let mut model = DenseModel::new(cfg, a.seed)?;
    if let Some(mb) = a.budget_mb {
        budget_fits(&model, target, &a.dir, mb)?;
    }
    let grid = cfg.nested_grid();
    println!(
        "[2/6] training a byte LM (d {}, {} blocks, {} heads, FFN {}; {} parameters) with {} nested \
         sub-models (depths 1..{} x FFN widths {:?}), SortedNet: the full model and one drawn \
         sub-model per step; {} steps x {} x {SEQ} bytes on {} threads",
        a.d,
        a.layers,
        a.heads,
        a.ffn,
        model.params.len(),
        grid.len(),
        a.layers,
        cfg.nested_ffn_list(),
        a.steps,
        a.batch,
        par::threads()
    );
    let tc = TrainConfig {
        steps: a.steps,
        batch: a.batch,
        seq: SEQ,
        lr: 3e-3,
        min_lr: 3e-4,
        warmup: (a.steps / 10).max(1),
        seed: a.seed,
        sorted: Sorted::Uniform(1),
        ..TrainConfig::default()
    };
    let pb = bar(
        a.steps,
        a.quiet,
        "      {bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
    )?;
    let mut state = TrainState::new(a.seed);
    let t = Instant::now();
    let mut last = f64::NAN;
    let every = (a.steps / 5).max(1);
    train_from(&mut model, &data, &tc, &mut state, a.steps, |s| {
        last = s.loss;
        pb.set_position(s.step);
        pb.set_message(format!("loss {:.3}", s.loss));
        if pb.is_hidden() && (s.step % every == 0 || s.step == a.steps) {
            println!("      step {}/{}  loss {:.4}", s.step, a.steps, s.loss);
        }
    })?;
    pb.finish_and_clear();
    let n = model
        .write_gguf(&f32_path, SEQ, "modula demo (nested byte LM)")
        .map_err(|e| format!("{}: {e}", f32_path.display()))?;
    println!(
        "      trained in {:.1} s (last training loss {last:.3} nats); wrote {} ({:.2} MiB, f32)",
        t.elapsed().as_secs_f64(),
        f32_path.display(),
        mib(n)
    );

    // 3. quantise
    let mf32 = Model::open(&f32_path).map_err(|e| format!("{}: {e}", f32_path.display()))?;
    let (w, reports) = quantize_model(&mf32, target)?;
    let nq = w
        .write_to(&q_path)
        .map_err(|e| format!("{}: {e}", q_path.display()))?;
    let worst = reports
        .iter()
        .filter(|r| r.kept.is_none())
        .map(|r| (r.rel_rmse, r.name.as_str()))
        .fold((0.0f64, ""), |m, x| if x.0 > m.0 { x } else { m });
    println!(
        "[3/6] quantised to {}: {} ({:.2} MiB, {:.2}x smaller); worst relative RMSE {:.4} ({})",
        a.quant,
        q_path.display(),
        mib(nq),
        n as f64 / nq as f64,
        worst.0,
        worst.1
    );

    // 4. map and measure every nested size
    let mq = Model::open(&q_path).map_err(|e| format!("{}: {e}", q_path.display()))?;
    let spec = DenseSpec::from_model(&mq)?;
    println!(
        "[4/6] mapped {}; measuring {} nested sizes on this device: quality ({} validation \
         windows), decode latency, peak RSS of a process running only that size",
        q_path.display(),
        grid.len(),
        a.eval_windows
    );
    let val = data.split(modula_train::data::Split::Val);
    if val.len() < SEQ {
        return Err("the validation split is shorter than one window".into());
    }
    let stride = ((val.len() - SEQ) / a.eval_windows).max(1);
    let windows: Vec<&[u8]> = (0..a.eval_windows)
        .map(|i| &val[(i * stride).min(val.len() - SEQ)..][..SEQ])
        .collect();
    let pb = bar(
        grid.len() as u64 * 3,
        a.quiet,
        "      {bar:30} {pos}/{len}  {msg}",
    )?;
    let mut ef = DenseEngine::new(&mf32, SEQ)?;
    let mut eqd = DenseEngine::new(&mq, SEQ)?;
    pb.set_message("latency calibration");
    let lat_f32 = pb.suspend(|| calibrate(&mut ef, &f32_path, true))?;
    pb.inc(grid.len() as u64 / 2);
    let lat_q = pb.suspend(|| calibrate(&mut eqd, &q_path, true))?;
    pb.inc(grid.len() as u64 - grid.len() as u64 / 2);
    let mut rows = Vec::with_capacity(grid.len());
    let mut rss_err: Option<String> = None;
    for (i, &size) in grid.iter().enumerate() {
        pb.set_message(format!("{}x{}", size.0, size.1));
        ef.set_submodel(Some(size))?;
        eqd.set_submodel(Some(size))?;
        let (bpb_f32, _) = engine_quality(&mut ef, &windows)?;
        let (bpb_q, acc_q) = engine_quality(&mut eqd, &windows)?;
        pb.inc(1);
        let rss = child_rss(&q_path, size, &a.prompt);
        pb.inc(1);
        let params = spec.submodel_bytes(&mf32, size, SEQ)?.0 / 4;
        let (weights_q, arena) = spec.submodel_bytes(&mq, size, SEQ)?;
        let dd = a.d as u64;
        // a token reads one row of each table; every other weight is used per token
        let active = params - (256 - 1) * dd - (SEQ as u64 - 1) * dd;
        // multiply-adds of the matrices (2 flops each) + attention over half the context
        let mat = size.0 as u64 * (4 * dd * dd + 2 * dd * size.1 as u64) + 256 * dd;
        let mflop = (2 * mat + size.0 as u64 * 4 * dd * (SEQ as u64 / 2)) as f64 / 1e6;
        rows.push(Row {
            size,
            params,
            active,
            mflop,
            bpb_f32,
            bpb_q,
            acc_q,
            ms_f32: lat_f32[i].1,
            ms_q: lat_q[i].1,
            weights_q,
            arena,
            rss: match rss {
                Ok(v) => Some(v),
                Err(e) => {
                    rss_err.get_or_insert(e);
                    None
                }
            },
        });
    }
    pb.finish_and_clear();

    // 5. the table, as text, CSV and a picture
    println!(
        "[5/6] per nested size ({} weights, batch 1, {} threads):",
        a.quant,
        par::threads()
    );
    println!(
        "      {:>7} {:>9} {:>9} {:>8} {:>8} {:>8} {:>7} {:>10} {:>10} {:>13} {:>15}",
        "size",
        "params",
        "active",
        "MFLOP/t",
        "bpb f32",
        format!("bpb {}", a.quant),
        "acc",
        "ms/tok f32",
        format!("ms/tok {}", a.quant),
        "wts+arena MiB",
        "peak RSS MiB"
    );
    println!(
        "      (size: depth x FFN width; MFLOP/t and ms/tok: per generated token; bpb:          validation bits per byte; acc: next-byte accuracy; MiB: 2^20 bytes)"
    );
    let mut csv = String::from(
        "depth,ffn,params,active_params_per_token,mflop_per_token,bits_per_byte_f32,bits_per_byte_quant,accuracy_quant,ms_per_token_f32,ms_per_token_quant,weights_bytes_quant,arena_bytes,start_rss_bytes,peak_rss_bytes\n",
    );
    for r in &rows {
        let rss = r.rss.map_or("n/a".to_string(), |(s, p)| {
            format!("{:.1} (+{:.2})", mib(p), mib(p.saturating_sub(s)))
        });
        println!(
            "      {:>7} {:>9} {:>9} {:>8.2} {:>8.3} {:>8.3} {:>6.1}% {:>10.4} {:>10.4} {:>13.2} {:>15}",
            format!("{}x{}", r.size.0, r.size.1),
            r.params,
            r.active,
            r.mflop,
            r.bpb_f32,
            r.bpb_q,
            100.0 * r.acc_q,
            r.ms_f32,
            r.ms_q,
            mib(r.weights_q + r.arena),
            rss
        );
        csv.push_str(&format!(
            "{},{},{},{},{:.4},{:.5},{:.5},{:.5},{:.5},{:.5},{},{},{}\n",
            r.size.0,
            r.size.1,
            r.params,
            r.active,
            r.mflop,
            r.bpb_f32,
            r.bpb_q,
            r.acc_q,
            r.ms_f32,
            r.ms_q,
            r.weights_q,
            r.arena,
            r.rss.map_or(",".into(), |(s, p)| format!("{s},{p}"))
        ));
    }
    let csv_path = a.dir.join("sizes.csv");
    modula_core::io::atomic_write(&csv_path, |w| w.write_all(csv.as_bytes()))
        .map_err(|e| format!("{}: {e}", csv_path.display()))?;
    const COLORS: [&str; 8] = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    ];
    let series: Vec<Series> = cfg
        .nested_depth_list()
        .iter()
        .enumerate()
        .map(|(k, &dp)| Series {
            name: format!("depth {dp} (FFN widths {:?})", cfg.nested_ffn_list()),
            points: rows
                .iter()
                .filter(|r| r.size.0 == dp)
                .map(|r| (r.ms_q, r.bpb_q))
                .collect(),
            color: COLORS[k % COLORS.len()],
            dots: false,
        })
        .collect();
    let svg = line_chart(
        &format!(
            "Nested sub-models: quality vs decode latency ({}, this device)",
            a.quant
        ),
        "ms per token",
        "validation bits per byte",
        &series,
    );
    let svg_path = a.dir.join("sizes.svg");
    modula_core::io::atomic_write(&svg_path, |w| w.write_all(svg.as_bytes()))
        .map_err(|e| format!("{}: {e}", svg_path.display()))?;
    let full = rows.last().expect("the grid holds the full model");
    let smallest = rows.first().expect("the grid is not empty");
    println!(
        "      wrote {} and {}. Smallest/full: {:.2}x the FLOPs, {:.2}x the measured time, \
         {:+.3} bits per byte; {} costs {:+.3} bits per byte on the full model.",
        csv_path.display(),
        svg_path.display(),
        smallest.mflop / full.mflop,
        smallest.ms_q / full.ms_q,
        smallest.bpb_q - full.bpb_q,
        a.quant,
        full.bpb_q - full.bpb_f32
    );
    match rss_err {
        Some(e) => println!("      peak RSS not measured: {e}"),
        None => println!(
            "      peak RSS: of a separate `modula run --size S --no-readahead` process; (+x) = \
             its growth after start-up, to compare with the sub-model's weights + arena."
        ),
    }

    // 6. pick a size for a budget and show what it writes
    let (size, why) = if let Some(mb) = a.budget_mb {
        let ((dp, f, _), bytes) = spec.pick_by_memory(&mq, (mb * 1048576.0) as u64, SEQ)?;
        let size = (dp, f); // the demo's model does not nest heads
        (
            size,
            format!("memory budget {mb} MiB: needs {:.2} MiB", mib(bytes)),
        )
    } else {
        // the default budget is half the full model's time — or, where per-token
        // overheads make every size slower than that (tiny models, a busy machine), the
        // fastest size's time: a default must not make the demo fail
        let fastest = lat_q.iter().map(|&(_, t)| t).fold(f64::INFINITY, f64::min);
        let half = full.ms_q / 2.0;
        let ms = a.budget_ms.unwrap_or(half.max(fastest));
        let (s, t) = pick_by_latency(&lat_q, |s| s.capacity(a.d, a.heads), ms)?;
        let Size::Dense {
            depth: dp, ffn: f, ..
        } = s
        else {
            unreachable!("dense sizes")
        };
        let s = (dp, f);
        let how = match a.budget_ms {
            Some(_) => String::new(),
            None if fastest > half => format!(
                " (default: the fastest size's time; half the full model's, {half:.4} ms, is \
                 faster than every size here)"
            ),
            None => " (default: half the full model's time)".to_string(),
        };
        (
            s,
            format!("latency budget {ms:.4} ms per token{how}: measured {t:.4} ms"),
        )
    };
    let row = rows
        .iter()
        .find(|r| r.size == size)
        .expect("the pick is a grid size");
    println!(
        "[6/6] picked sub-model {}x{} — {why}; {:.3} bits per byte vs {:.3} for the full model. \
         Switching sizes re-points prefixes of the mapped weights (no reload, no copy). Its output:",
        size.0, size.1, row.bpb_q, full.bpb_q
    );
    eqd.set_submodel(Some(size))?;
    eqd.reset();
    print!("\n{}", a.prompt);
    let (secs, _) = generate(&mut eqd, a.prompt.as_bytes(), a.tokens, a.seed)?;
    println!(
        "\n      {} bytes in {:.3} s ({:.0} bytes/s). Done in {:.1} s. Next: `modula run --model {} \
         --size DEPTHxFFN` or `--latency-ms X`, `modula inspect {}`.",
        a.tokens,
        secs,
        (a.tokens + a.prompt.len()) as f64 / secs.max(1e-9),
        t_all.elapsed().as_secs_f64(),
        q_path.display(),
        q_path.display()
    );
    Ok(())
}
