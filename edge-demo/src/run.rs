//! `modula run`: generate text with a byte LM — dense, EMoE, ModuleFormer or SeqBoat —
//! straight from its (possibly quantised) model file, streaming each byte as it is produced.
//! A SeqBoat model streams with constant state (no context limit).

use clap::Args;
use modula_core::engine::{DecodeOptions, Decoder, DenseSpec, Size};
use modula_core::kernels::par;
use modula_core::rng::SplitMix64;
use modula_core::Family;
use modula_core::Model;
use modula_train::tokenizer::{StreamDecoder, Tokenizer};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

/// Arguments of `modula run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Model file (.gguf; F32, F16, BF16, Q8_0 or Q4_0 weights).
    #[arg(long)]
    model: PathBuf,
    /// Prompt: its bytes as given (any bytes, UTF-8 or not: the models read bytes).
    #[arg(long, default_value = "And God said")]
    prompt: std::ffi::OsString,
    /// Requests, one per line, from a file (`-`: standard input), answered one after the
    /// other by the same mapped model: `@SIZE prompt` runs that nested size for this
    /// request (switched in place, nothing reloaded or copied), a plain line the size the
    /// other flags chose. Instead of --prompt.
    #[arg(long, conflicts_with = "prompt")]
    input: Option<PathBuf>,
    /// Bytes to generate.
    #[arg(long, default_value_t = 200)]
    tokens: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Sample among the k most likely bytes (0 = all).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Threads for the kernels.
    #[arg(long)]
    threads: Option<usize>,
    /// Keep activations in f32 in the products over Q8_0/Q4_0 weights (by default they
    /// are rounded to 8 bits for integer arithmetic, as llama.cpp does: faster, with a
    /// small rounding of its own — `modula eval --engine` measures it).
    #[arg(long)]
    f32_activations: bool,
    /// Context capacity (default: the model's position table, else 1024).
    #[arg(long)]
    context: Option<usize>,
    /// ModuleFormer: stop each stick-breaking walk once the used stick exceeds this τ
    /// (older tokens then weigh at most e^-τ in total; default: exact).
    #[arg(long)]
    sb_stop: Option<f32>,
    /// Run a nested sub-model: `DEPTHxFFN` for dense models (e.g. 2x128), `N` or `ATTxFFN`
    /// experts for ModuleFormer, a depth `N` for SeqBoat (zero-copy prefixes of the mapped
    /// weights).
    #[arg(long)]
    size: Option<String>,
    /// Memory budget in MiB. Dense models: pick the largest declared nested sub-model whose
    /// weights plus arena fit (instead of --size). ModuleFormer: expert paging — keep at
    /// most what fits of the experts resident (LRU, the routers' runners-up read ahead,
    /// cold experts dropped) and report hits and misses.
    #[arg(long, conflicts_with = "size")]
    budget_mb: Option<f64>,
    /// Pick the largest declared nested sub-model whose decode step takes at most this many
    /// milliseconds on this device: each size is measured once (median of 8 x 8 steps
    /// after a short prompt) and the measurements are cached in MODEL.latency.json (reused while
    /// the file, thread count and SIMD level are the same). Also spelt --budget-ms.
    #[arg(long, alias = "budget-ms", conflicts_with_all = ["size", "budget_mb"])]
    latency_ms: Option<f64>,
    /// With --latency-ms: measure again even if a cached calibration matches.
    #[arg(long)]
    recalibrate: bool,
    /// Map the model without read-ahead (MADV_RANDOM): only the pages the chosen
    /// sub-model touches become resident.
    #[arg(long)]
    no_readahead: bool,
    /// SeqBoat: bias towards skipping the attention unit (b_act; 0 = as trained).
    #[arg(long, default_value_t = 0.0)]
    act_bias: f32,
    /// Print only the timing line (for benchmarks).
    #[arg(long)]
    quiet: bool,
    /// Print each request's result as one JSON object (prompt and generated token ids,
    /// generated text) instead of streaming the text.
    #[arg(long)]
    json: bool,
    /// Treat the prompt (each --input line) as a user's message and apply the model's chat
    /// template (`tokenizer.chat_template`) with the generation prompt.
    #[arg(long)]
    chat: bool,
    /// With --chat: a system message before the user's.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Also print this process's resident memory (Linux: VmRSS when the run starts, before
    /// the model is opened, and the peak VmHWM at the end) as `rss_bytes START PEAK`.
    #[arg(long)]
    report_rss: bool,
}

/// (resident, peak resident) bytes of this process from `/proc/self/status` (Linux; each
/// process's own address space, so a parent's memory never counts), else None.
pub(crate) fn own_rss() -> Option<(u64, u64)> {
    let f = status_fields(&["VmRSS:", "VmHWM:"])?;
    Some((f[0], f[1]))
}

/// Fields of `/proc/self/status` in bytes (Linux), else None.
fn status_fields(keys: &[&str]) -> Option<Vec<u64>> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    keys.iter()
        .map(|k| {
            let l = s.lines().find(|l| l.starts_with(k))?;
            let kib: u64 = l[k.len()..]
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()?;
            Some(kib * 1024)
        })
        .collect()
}

/// Pick the next token from `logits`.
pub(crate) fn sample(logits: &[f32], temperature: f32, top_k: usize, rng: &mut SplitMix64) -> u32 {
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if temperature <= 0.0 {
        return idx[0] as u32;
    }
    let k = if top_k == 0 {
        idx.len()
    } else {
        top_k.min(idx.len())
    };
    let m = logits[idx[0]];
    let w: Vec<f64> = idx[..k]
        .iter()
        .map(|&i| f64::from((logits[i] - m) / temperature).exp())
        .collect();
    let total: f64 = w.iter().sum();
    let mut r = f64::from(rng.next_f32()) * total;
    for (j, &wj) in w.iter().enumerate() {
        if r < wj {
            return idx[j] as u32;
        }
        r -= wj;
    }
    idx[k - 1] as u32
}

/// The decoder `modula run` drives: any family, through one interface.
pub(crate) type Engine<'a> = Box<dyn Decoder<'a> + 'a>;

/// The decoder for a byte LM file of any family (`modula_core::engine::open`): `context`
/// positions (default: the position table, else 1024; not for SeqBoat, whose state is
/// constant).
pub(crate) fn open_engine<'a, B: AsRef<[u8]>>(
    m: &'a Model<B>,
    context: Option<usize>,
) -> Result<Engine<'a>, String> {
    Ok(modula_core::engine::open(m, context, None)?)
}

/// `ln Σ exp(logits)`, computed in f64 after subtracting the maximum: with a target's
/// logit, its cross-entropy is `log_sum_exp(l) − l[t]`.
pub(crate) fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    f64::from(max)
        + logits
            .iter()
            .map(|&v| f64::from(v - max).exp())
            .sum::<f64>()
            .ln()
}

/// The index of the largest logit (the first on ties): the greedy next token.
pub(crate) fn greedy(logits: &[f32]) -> u32 {
    logits
        .iter()
        .enumerate()
        .fold(0, |b, (j, &v)| if v > logits[b] { j } else { b }) as u32
}

/// The chat template of `--chat`, and `--system`.
struct Chat<'t> {
    template: Option<&'t str>,
    system: Option<&'t str>,
}

impl Chat<'_> {
    /// The conversation (system message, then `prompt` as the user's) rendered by the
    /// template; and whether the text begins with the bos token.
    fn render(&self, t: &str, tok: &Tokenizer, prompt: &[u8]) -> Result<(String, bool), String> {
        use modula_train::chat::{render, Message};
        let user = std::str::from_utf8(prompt)
            .map_err(|e| format!("--chat: the prompt is not UTF-8 ({e})"))?;
        let mut msgs = Vec::new();
        if let Some(s) = self.system {
            msgs.push(Message {
                role: "system".into(),
                content: s.into(),
            });
        }
        msgs.push(Message {
            role: "user".into(),
            content: user.into(),
        });
        let (bos, eos) = tok.bos_eos();
        let name = |id: Option<u32>| id.and_then(|i| tok.token_text(i)).unwrap_or("");
        let text = render(t, &msgs, name(bos), name(eos), true)?;
        let first = !name(bos).is_empty() && text.starts_with(name(bos));
        Ok((text, first))
    }
}

/// One timed sequence with `size`: a fresh sequence, `prompt` prefilled, then `steps`
/// greedy decode steps. Returns the prefill time (s) and each step's time (ms).
pub(crate) fn timed_decode<'a, D: Decoder<'a> + ?Sized>(
    e: &mut D,
    size: Size,
    prompt: &[u32],
    steps: usize,
) -> Result<(f64, Vec<f64>), String> {
    e.set_size(size)?;
    e.reset();
    let t = Instant::now();
    let mut last = e.prefill(prompt)?.to_vec();
    let prefill = t.elapsed().as_secs_f64();
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps {
        let next = greedy(&last);
        let t = Instant::now();
        let l = e.step(next)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        last.copy_from_slice(l);
    }
    Ok((prefill, times))
}

/// What a cached calibration must match to be reused.
fn calibration_key(model: &std::path::Path) -> Result<String, String> {
    let meta = std::fs::metadata(model).map_err(|e| format!("{}: {e}", model.display()))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    Ok(format!(
        "{}:{}:{}:{}",
        meta.len(),
        mtime,
        par::threads(),
        modula_core::kernels::isa::label(modula_core::kernels::isa::active())
    ))
}

/// Per-token decode time (ms; the median of 8 rounds x 8 steps after a 16-token prompt,
/// rounds interleaved over the sizes) of every size,
/// from the cache file when it matches, else measured and cached (atomically).
pub(crate) fn calibrate<'a, D: Decoder<'a> + ?Sized>(
    e: &mut D,
    model: &std::path::Path,
    recalibrate: bool,
) -> Result<Vec<(Size, f64)>, String> {
    let sizes = e.sizes();
    let cache = {
        let mut p = model.as_os_str().to_owned();
        p.push(".latency.json");
        PathBuf::from(p)
    };
    let key = calibration_key(model)?;
    if !recalibrate {
        if let Ok(text) = std::fs::read_to_string(&cache) {
            let cached = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| {
                    if v.get("key")?.as_str()? != key {
                        return None;
                    }
                    let ms = v.get("ms")?.as_array()?;
                    (ms.len() == sizes.len())
                        .then(|| ms.iter().map(|x| x.as_f64()).collect::<Option<Vec<f64>>>())?
                });
            if let Some(ms) = cached {
                eprintln!("latency calibration: cached in {}", cache.display());
                return Ok(sizes.into_iter().zip(ms).collect());
            }
        }
    }
    let vocab = e.vocab();
    let ctx = e.max_context().unwrap_or(usize::MAX);
    let (np, ns) = (16.min(ctx / 3).max(1), 32.min(ctx.saturating_sub(17)));
    if ns < 3 {
        return Err(format!(
            "the context of {ctx} positions is too short to calibrate"
        ));
    }
    let prompt: Vec<u32> = (0..np).map(|i| ((i * 7 + 3) % vocab) as u32).collect();
    // Rounds over all sizes (each round: a fresh sequence, the same prompt and positions),
    // so a change in the machine's load during calibration hits every size alike instead
    // of the sizes measured last.
    const ROUNDS: usize = 8;
    let per = ns.div_ceil(4).max(3);
    let mut times = vec![Vec::with_capacity(per * ROUNDS); sizes.len()];
    for _ in 0..ROUNDS {
        for (k, &size) in sizes.iter().enumerate() {
            times[k].extend(timed_decode(e, size, &prompt, per)?.1);
        }
    }
    let out: Vec<(Size, f64)> = sizes
        .iter()
        .zip(&mut times)
        .map(|(&size, t)| {
            t.sort_by(f64::total_cmp);
            (size, t[t.len() / 2])
        })
        .collect();
    let json = serde_json::json!({
        "key": key,
        "sizes": sizes.iter().map(|s| s.label()).collect::<Vec<_>>(),
        "ms": out.iter().map(|(_, m)| m).collect::<Vec<_>>(),
    });
    modula_core::io::atomic_write(&cache, |w| w.write_all(json.to_string().as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", cache.display()))?;
    eprintln!(
        "latency calibration: measured, cached in {}",
        cache.display()
    );
    Ok(out)
}

/// The largest-capacity size (see [`Decoder::capacity`]) whose measured per-token time is
/// within `budget_ms`, or a clear error naming the fastest size's need.
///
/// Capacity, not the measured time, orders the sizes: two nested sizes that cost nearly the
/// same can swap places in a noisy calibration, and choosing "the slowest that fits" would
/// then pick the smaller model although the larger one fits too.
pub(crate) fn pick_by_latency(
    measured: &[(Size, f64)],
    capacity: impl Fn(Size) -> f64,
    budget_ms: f64,
) -> Result<(Size, f64), String> {
    measured
        .iter()
        .copied()
        .filter(|&(_, ms)| ms <= budget_ms)
        .max_by(|a, b| capacity(a.0).total_cmp(&capacity(b.0)).then(a.1.total_cmp(&b.1)))
        .ok_or_else(|| {
            let fastest = measured
                .iter()
                .map(|m| m.1)
                .fold(f64::INFINITY, f64::min);
            format!(
                "impossible latency budget: {budget_ms} ms per token, but the fastest sub-model needs {fastest:.4} ms on this device"
            )
        })
}

/// Run `modula run`.
pub fn run(a: &RunArgs) -> Result<(), String> {
    let start_rss = if a.report_rss { own_rss() } else { None };
    if let Some(t) = a.threads {
        crate::set_threads(t)?;
    }
    modula_core::kernels::linear::set_quantized_activations(!a.f32_activations);
    if !(a.temperature.is_finite() && a.temperature >= 0.0) {
        return Err(format!("--temperature {} must be >= 0", a.temperature));
    }
    let m = Model::open(&a.model).map_err(|e| format!("{}: {e}", a.model.display()))?;
    let at = |e: &dyn std::fmt::Display| format!("{}: {e}", a.model.display());
    if a.no_readahead {
        m.advise_no_readahead().map_err(|e| at(&e))?;
    }
    let desc = modula_core::ModelDesc::from_model(&m).map_err(|e| at(&e))?;
    let family = desc.family;
    if family == Family::SeqBoat && (a.budget_mb.is_some() || a.context.is_some()) {
        return Err(
            "--budget-mb and --context do not apply to SeqBoat files (constant state)".into(),
        );
    }
    let dense = family == Family::Dense;
    // A dense run at one size (--size without --input, or --budget-mb) builds only that
    // sub-model's engine: its arena is what was planned, and no full-size engine (whose
    // KV caches would count in the peak) is built first.
    let cap = if dense && ((a.size.is_some() && a.input.is_none()) || a.budget_mb.is_some()) {
        let spec = DenseSpec::from_desc(&desc).map_err(|e| at(&e))?;
        let ctx = a
            .context
            .unwrap_or_else(|| modula_core::engine::decoder::default_context(&desc, 1024));
        match (&a.size, a.budget_mb) {
            (Some(sz), _) => Some(Size::parse_dense(sz, spec.heads)?),
            (None, Some(mb)) => {
                if !(mb.is_finite() && mb > 0.0) {
                    return Err("--budget-mb must be a positive number".into());
                }
                let ((dp, f, h), bytes) = spec
                    .pick_by_memory(&m, (mb * 1048576.0) as u64, ctx)
                    .map_err(|e| at(&e))?;
                let heads = if h < spec.heads {
                    format!(" x {h} heads")
                } else {
                    String::new()
                };
                eprintln!(
                    "budget {mb} MiB: sub-model depth {dp} x FFN {f}{heads} ({:.2} MiB of weights + arena at {ctx} positions)",
                    bytes as f64 / 1048576.0
                );
                Some(Size::Dense {
                    depth: dp,
                    ffn: f,
                    heads: (h < spec.heads).then_some(h),
                })
            }
            (None, None) => return Err("internal: no size".into()),
        }
    } else {
        None
    };
    let mut e = modula_core::engine::open(&m, a.context, cap).map_err(|e| at(&e))?;
    // the file's own tokenizer (Modula's byte models: bytes); checked against the model
    let tok = Tokenizer::from_model(&m).map_err(|e| at(&e))?;
    // (a byte model's bytes are checked per token by the engine: a task model's vocabulary
    // may be smaller than 256)
    if !matches!(tok, Tokenizer::Bytes) && tok.vocab() > e.vocab() {
        return Err(at(&format!(
            "the tokenizer has {} tokens, the model's embedding {} rows",
            tok.vocab(),
            e.vocab()
        )));
    }
    e.configure(&DecodeOptions {
        sb_stop: a.sb_stop,
        act_bias: a.act_bias,
    })
    .map_err(|e| at(&e))?;
    if let (Some(sz), None) = (&a.size, cap) {
        let size = e.parse_size(sz)?;
        e.set_size(size).map_err(|e| at(&e))?;
    }
    // without read-ahead, read exactly the chosen sub-model's bytes ahead (one
    // MADV_WILLNEED per merged range of its tensor prefixes): a cold start then reads
    // those pages and no others
    // (not under expert paging: the pager decides which experts to read)
    let paging = e.moduleformer().is_some() && a.budget_mb.is_some();
    if a.no_readahead && !paging && (a.size.is_some() || a.budget_mb.is_some()) {
        let spec = e.size().nested_spec();
        let sub = m.submodel(spec).map_err(|x| at(&x))?;
        m.advise_submodel(&sub, true).map_err(|x| at(&x))?;
        eprintln!(
            "read ahead: the sub-model's {:.2} MiB in {} ranges (of {:.2} MiB mapped)",
            sub.weight_bytes() as f64 / 1048576.0,
            sub.ranges().len(),
            m.bytes().len() as f64 / 1048576.0
        );
    }
    // ModuleFormer under a memory budget: expert paging (the experts beyond what fits
    // are dropped and re-read as the routers choose them)
    let mut pager = match (e.moduleformer(), a.budget_mb) {
        (Some(mf), Some(mb)) => {
            if !(mb.is_finite() && mb > 0.0) {
                return Err("--budget-mb must be a positive number".into());
            }
            let s = mf.spec();
            let kv = 4
                * s.layers as u64
                * mf.max_context() as u64
                * s.att_hidden() as u64
                * if s.shared_kv { 1 } else { 2 };
            let mut p =
                modula_core::engine::paging::ExpertPager::new(&m, u64::MAX).map_err(|e| at(&e))?;
            let rest = m.bytes().len() as u64 - p.total_bytes() + kv;
            let budget = (mb * 1048576.0) as u64;
            if budget <= rest {
                return Err(at(&format!(
                    "impossible budget: {mb} MiB, but the shared weights and KV caches alone need {:.2} MiB",
                    rest as f64 / 1048576.0
                )));
            }
            p.set_budget(budget - rest).map_err(|e| at(&e))?;
            eprintln!(
                "budget {mb} MiB: {:.2} MiB shared weights + KV caches, up to {:.2} of {:.2} MiB of experts resident",
                rest as f64 / 1048576.0,
                p.budget() as f64 / 1048576.0,
                p.total_bytes() as f64 / 1048576.0
            );
            Some(p)
        }
        _ => None,
    };
    if let Some(ms) = a.latency_ms {
        if !(ms.is_finite() && ms > 0.0) {
            return Err("--latency-ms must be a positive number".into());
        }
        let measured = calibrate(e.as_mut(), &a.model, a.recalibrate)?;
        let list: Vec<String> = measured
            .iter()
            .map(|(s, m)| format!("{}: {m:.4} ms", s.label()))
            .collect();
        eprintln!("per-token decode time: {}", list.join(", "));
        let (size, t) = pick_by_latency(&measured, |s| e.capacity(s), ms)?;
        e.set_size(size)?;
        eprintln!(
            "latency budget {ms} ms: sub-model {} ({t:.4} ms per token)",
            size.label()
        );
    }
    let template = if a.chat {
        Some(modula_train::chat::template_of(&m).ok_or_else(|| {
            at(&"--chat: the file has no chat template (tokenizer.chat_template)")
        })?)
    } else {
        None
    };
    let chat = Chat {
        template: template.as_deref(),
        system: a.system.as_deref(),
    };
    let mut out = std::io::stdout().lock();
    match &a.input {
        None => serve(
            &mut e,
            &tok,
            pager.as_mut(),
            a.prompt.as_encoded_bytes(),
            &chat,
            a,
            &mut out,
        )?,
        Some(path) => {
            let mut served = 0usize;
            // a plain line runs the size the flags chose, whatever the line before ran
            let default_size = e.size();
            let text = if path.as_os_str() == "-" {
                let mut t = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut t)
                    .map_err(|x| format!("--input -: {x}"))?;
                t
            } else {
                std::fs::read_to_string(path)
                    .map_err(|x| format!("--input {}: {x}", path.display()))?
            };
            for (n, line) in text.lines().enumerate() {
                let line = line.trim_end_matches('\r');
                if line.trim().is_empty() {
                    continue;
                }
                let req = |x: &dyn std::fmt::Display| format!("--input line {}: {x}", n + 1);
                let (size, prompt) = match line.strip_prefix('@') {
                    Some(rest) => {
                        let (sz, p) = rest.split_once(' ').ok_or_else(|| {
                            req(&"'@SIZE prompt': a size, a space, then the prompt")
                        })?;
                        (Some(e.parse_size(sz).map_err(|x| req(&x))?), p)
                    }
                    None => (None, line),
                };
                let t = Instant::now();
                e.set_size(size.unwrap_or(default_size))
                    .map_err(|x| req(&x))?;
                let switch = t.elapsed().as_secs_f64();
                eprintln!(
                    "request {}: sub-model {} (switched in {:.1} µs)",
                    n + 1,
                    e.size().label(),
                    1e6 * switch
                );
                serve(
                    &mut e,
                    &tok,
                    pager.as_mut(),
                    prompt.as_bytes(),
                    &chat,
                    a,
                    &mut out,
                )
                .map_err(|x| req(&x))?;
                served += 1;
            }
            if served == 0 {
                return Err(format!(
                    "--input {}: no requests (every line is empty)",
                    path.display()
                ));
            }
        }
    }
    if let Some(p) = &pager {
        let st = p.stats();
        let mib = |b: u64| b as f64 / 1048576.0;
        eprintln!(
            "expert paging: {:.2} of {:.2} MiB of experts resident at most; hits {}, misses {} ({:.1} % hits), prefetched {} (used {}), evicted {}; {:.2} MiB resident at the end",
            mib(p.budget()),
            mib(p.total_bytes()),
            st.hits,
            st.misses,
            100.0 * st.hits as f64 / (st.hits + st.misses).max(1) as f64,
            st.prefetched,
            st.prefetch_used,
            st.evicted,
            mib(p.resident_bytes())
        );
    }
    if a.report_rss {
        match (start_rss, own_rss()) {
            (Some((start, _)), Some((_, peak))) => {
                eprintln!("rss_bytes {start} {peak}");
                // where the resident memory is now: heap and stacks vs pages of mapped files
                if let Some(f) = status_fields(&["RssAnon:", "RssFile:"]) {
                    eprintln!("rss_now anon {} file {}", f[0], f[1]);
                }
            }
            _ => eprintln!("rss_bytes: not available on this system"),
        }
    }
    if let Some(line) = e.stats_line() {
        eprintln!("{line}");
    }
    Ok(())
}

/// Consume `ids` from the engine's current position: one batched prefill, or token by token
/// under expert paging (a batched prefill reads every expert its tokens choose at once; one
/// at a time the resident set stays within the budget from the first token). Returns the
/// logits after the last id.
fn feed(
    e: &mut Engine<'_>,
    pager: &mut Option<&mut modula_core::engine::paging::ExpertPager<'_>>,
    ids: &[u32],
) -> Result<Vec<f32>, String> {
    match pager.as_deref_mut() {
        Some(p) => {
            let mut last = Vec::new();
            for &t in ids {
                last.clear();
                last.extend_from_slice(e.step(t)?);
                if let Some(mf) = e.moduleformer() {
                    p.after_step(mf)?;
                }
            }
            Ok(last)
        }
        None => Ok(e.prefill(ids)?.to_vec()),
    }
}

/// One request: `prompt`, then `--tokens` sampled bytes, streamed to `out` (unless
/// `--quiet`), and the timing line on stderr. The engine starts a new sequence. When the
/// generation outgrows a dense or ModuleFormer model's context, the window slides: the
/// sequence restarts from the last half-context of the text (said once on stderr); a
/// prompt longer than the context is refused before any work.
fn serve(
    e: &mut Engine<'_>,
    tok: &Tokenizer,
    mut pager: Option<&mut modula_core::engine::paging::ExpertPager<'_>>,
    prompt: &[u8],
    chat: &Chat<'_>,
    a: &RunArgs,
    out: &mut impl Write,
) -> Result<(), String> {
    if prompt.is_empty() {
        return Err("the prompt must not be empty".into());
    }
    let rendered;
    let (prompt, add_bos) = match chat.template {
        None => (prompt, true),
        Some(t) => {
            let (text, bos_first) = chat.render(t, tok, prompt)?;
            rendered = text;
            // a template that writes the bos itself gets no second one
            (rendered.as_bytes(), !bos_first)
        }
    };
    let ids = tok.encode(prompt, add_bos).map_err(|e| e.to_string())?;
    if ids.is_empty() {
        return Err("the prompt has no tokens".into());
    }
    let ctx = e.max_context();
    if let Some(c) = ctx {
        if ids.len() > c {
            return Err(format!(
                "the prompt ({} tokens) is longer than the model's context of {c} positions",
                ids.len()
            ));
        }
        if prompt.len() + a.tokens > c {
            eprintln!(
                "note: the context is {c} positions; past it the window slides (the sequence \
                 restarts from the last {} bytes)",
                (c / 2).max(1)
            );
        }
    }
    e.reset();
    let stream = !a.quiet && !a.json;
    if stream {
        out.write_all(prompt).map_err(|x| x.to_string())?;
    }
    let t0 = Instant::now();
    let n_prompt = ids.len();
    let mut dec = StreamDecoder::default();
    let mut generated = String::new();
    // a byte model's output: its bytes (text at the end, so no character is split)
    let mut raw = Vec::new();
    if let Some(p) = pager.as_deref_mut() {
        p.drop_all()?;
    }
    let mut logits = feed(e, &mut pager, &ids)?;
    let prefill = t0.elapsed().as_secs_f64();
    let mut rng = SplitMix64(a.seed);
    let mut text = ids;
    let mut used = text.len();
    let mut slides = 0usize;
    let t1 = Instant::now();
    let mut made = 0usize;
    for _ in 0..a.tokens {
        let next = sample(&logits, a.temperature, a.top_k, &mut rng);
        made += 1;
        if matches!(tok, Tokenizer::Bytes) {
            if stream {
                out.write_all(&[next as u8]).map_err(|x| x.to_string())?;
                out.flush().map_err(|x| x.to_string())?;
            }
            raw.push(next as u8);
        } else {
            let piece = dec.push(tok, next);
            if stream {
                out.write_all(piece.as_bytes()).map_err(|x| x.to_string())?;
                out.flush().map_err(|x| x.to_string())?;
            }
            generated.push_str(&piece);
        }
        text.push(next);
        if tok.is_eos(next) {
            break;
        }
        if let Some(c) = ctx.filter(|&c| used >= c) {
            // slide: restart from the last half-context, `next` then steps as usual
            e.reset();
            let keep = (c / 2).max(1);
            let start = text.len() - keep;
            if keep > 1 {
                feed(e, &mut pager, &text[start..text.len() - 1])?;
            }
            used = keep - 1;
            slides += 1;
        }
        logits.copy_from_slice(e.step(next)?);
        used += 1;
        if let (Some(p), Some(mf)) = (pager.as_deref_mut(), e.moduleformer()) {
            p.after_step(mf)?;
        }
    }
    let decode = t1.elapsed().as_secs_f64();
    let tail = dec.finish();
    if stream {
        out.write_all(tail.as_bytes()).map_err(|x| x.to_string())?;
        writeln!(out).map_err(|x| x.to_string())?;
    }
    generated.push_str(&tail);
    generated.push_str(&String::from_utf8_lossy(&raw));
    if a.json {
        let v = serde_json::json!({
            "prompt_ids": &text[..n_prompt],
            "ids": &text[n_prompt..],
            "text": generated,
        });
        writeln!(out, "{v}").map_err(|x| x.to_string())?;
    }
    eprintln!(
        "prefill {} tokens: {:.1} tokens/s; decode {} tokens: {:.1} tokens/s ({:.3} ms/token); {} threads{}",
        n_prompt,
        n_prompt as f64 / prefill.max(1e-9),
        made,
        made as f64 / decode.max(1e-9),
        1e3 * decode / made.max(1) as f64,
        par::threads(),
        if slides > 0 {
            format!("; the window slid {slides} times (context {})", ctx.unwrap_or(0))
        } else {
            String::new()
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_budget_picks_by_capacity_not_by_noisy_time() {
        // a noisy calibration measured the deeper model faster than the shallower one
        let measured = [
            (Size::Depth(1), 0.1258),
            (Size::Depth(2), 0.0804),
            (Size::Depth(3), 2.0),
        ];
        let cap = |s: Size| match s {
            Size::Depth(d) => d as f64,
            _ => 0.0,
        };
        assert_eq!(
            pick_by_latency(&measured, cap, 1000.0).unwrap().0,
            Size::Depth(3)
        );
        assert_eq!(
            pick_by_latency(&measured, cap, 1.0).unwrap().0,
            Size::Depth(2)
        );
        assert_eq!(
            pick_by_latency(&measured, cap, 0.1).unwrap().0,
            Size::Depth(2)
        );
        let err = pick_by_latency(&measured, cap, 0.01).unwrap_err();
        assert!(
            err.contains("impossible latency budget") && err.contains("0.0804"),
            "{err}"
        );
    }
}
