//! `modula eval`: a written model on a data set (the engine for quantised files).

use super::*;

/// Arguments of `modula eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Model file (.gguf or .safetensors).
    #[arg(long)]
    pub(crate) model: PathBuf,
    #[command(flatten)]
    pub(crate) data: DataArgs,
    /// Sequences per batch.
    #[arg(long, default_value_t = 16)]
    pub(crate) batch: usize,
    /// Batches (finite validation sets: up to batches × batch examples, in order).
    #[arg(long, default_value_t = 32)]
    pub(crate) batches: usize,
    /// Seed of random validation windows (text and generated LM tasks).
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Threads for the kernels.
    #[arg(long)]
    pub(crate) threads: Option<usize>,
    /// For a model with EMoE layers: evaluate with the expert mask (on) or densely (off).
    #[arg(long, default_value = "on")]
    pub(crate) emoe_mask: String,
    /// Evaluate a nested sub-model — `DEPTHxFFN` (e.g. 2x128) of a dense model, `N` or
    /// `ATTxFFN` experts of a ModuleFormer model — or `all` for every nested size the file
    /// declares.
    #[arg(long)]
    pub(crate) size: Option<String>,
    /// SeqBoat: bias(es) towards skipping the attention unit at test time (b_act,
    /// comma-separated to trace accuracy against the activation ratio; default 0).
    #[arg(long)]
    pub(crate) act_bias: Option<String>,
    /// Score through the inference engine (`modula run`'s arithmetic: the file's weight
    /// types with the quantised kernels, one token at a time from a fresh state per
    /// window) instead of the training forward pass (which dequantises to f32): the
    /// quality a device actually gets. Language models; same windows.
    #[arg(long)]
    pub(crate) engine: bool,
    /// With --engine: keep activations in f32 in the products over Q8_0/Q4_0 weights
    /// (as `modula run --f32-activations`).
    #[arg(long, requires = "engine")]
    f32_activations: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

/// A model with its own tokenizer (llama.cpp files) scored on a text file: the text's ids
/// (the beginning-of-sequence token first, when the file asks for it) in windows of `--seq`
/// tokens, each from a fresh state through the decode engine, every token after a window's
/// first predicted. Mean negative log-likelihood per predicted token, and bits per byte of
/// the predicted tokens' text.
pub(crate) fn eval_tokenized<B: AsRef<[u8]>>(
    a: &EvalArgs,
    f: &Model<B>,
    tok: &modula_train::tokenizer::Tokenizer,
) -> Result<(), String> {
    let at = |e: &dyn std::fmt::Display| format!("{}: {e}", a.model.display());
    if a.act_bias.is_some() || a.size.is_some() || a.emoe_mask != "on" {
        return Err("--act-bias, --size and --emoe-mask do not apply to this model".into());
    }
    let path = std::path::Path::new(&a.data.data);
    let text = std::fs::read(path).map_err(|e| {
        format!(
            "--data {}: {e} (a model with its own tokenizer is scored on a text file)",
            path.display()
        )
    })?;
    let ids = tok.encode(&text, true).map_err(|e| at(&e))?;
    if ids.len() < 2 {
        return Err(format!("--data {}: fewer than 2 tokens", path.display()));
    }
    let seq = a.data.seq;
    let mut e = crate::run::open_engine(f, Some(seq)).map_err(|e| at(&e))?;
    let (mut nats, mut right, mut n, mut bytes) = (0.0f64, 0usize, 0usize, 0usize);
    for w in ids.chunks(seq) {
        e.reset();
        for (t, &id) in w.iter().enumerate() {
            let l = e.step(id).map_err(|e| at(&e))?;
            let Some(&target) = w.get(t + 1) else { break };
            let Some(&lt) = l.get(target as usize) else {
                return Err(format!("token {target} is outside the model's vocabulary"));
            };
            nats += crate::run::log_sum_exp(l) - f64::from(lt);
            right += usize::from(crate::run::greedy(l) == target);
            bytes += tok.decode(&[target]).len();
            n += 1;
        }
    }
    if n == 0 {
        return Err("no token to predict (use a longer text or a larger --seq)".into());
    }
    let nll = nats / n as f64;
    let bpb = nats / std::f64::consts::LN_2 / bytes.max(1) as f64;
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "nll_per_token": nll,
                "bits_per_byte": bpb,
                "accuracy": right as f64 / n as f64,
                "predicted_tokens": n,
                "tokens": ids.len(),
                "bytes": bytes,
                "window": seq,
            })
        );
    } else {
        println!(
            "{}: {} tokens of {} in windows of {seq}: {nll:.5} nats per token, {bpb:.4} bits per byte, accuracy {:.2}% ({n} predicted)",
            a.model.display(),
            ids.len(),
            path.display(),
            100.0 * right as f64 / n as f64
        );
    }
    Ok(())
}

/// `modula eval --engine`: the validation windows of a plain `modula eval` scored by the
/// decode engine, token by token, each window from a fresh state.
pub(crate) fn eval_engine<B: AsRef<[u8]>>(a: &EvalArgs, f: &Model<B>) -> Result<(), String> {
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
pub(crate) fn eval_sb<B: AsRef<[u8]>>(a: &EvalArgs, f: &Model<B>) -> Result<(), String> {
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
    for (flag, v) in [
        ("--batch", a.batch),
        ("--batches", a.batches),
        ("--seq", a.data.seq),
    ] {
        if v == 0 {
            return Err(format!("{flag} 0: must be at least 1"));
        }
    }
    if let Some(t) = a.threads {
        crate::set_threads(t)?;
    }
    if a.model.extension().is_none_or(|e| e != "safetensors") {
        let f = Model::open(&a.model).map_err(|e| format!("{}: {e}", a.model.display()))?;
        if f.get_str("tokenizer.ggml.model").is_some() || f.get_str("modula.model").is_none() {
            let tok = modula_train::tokenizer::Tokenizer::from_model(&f)
                .map_err(|e| format!("{}: {e}", a.model.display()))?;
            return eval_tokenized(a, &f, &tok);
        }
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
