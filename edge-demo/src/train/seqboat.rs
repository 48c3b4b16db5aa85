//! `modula train --arch seqboat`.

use super::*;

/// SeqBoat (`--arch seqboat`) shape.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "SeqBoat")]
pub struct SbArgs {
    /// SeqBoat: EMA expansion N.
    #[arg(long, default_value_t = 16)]
    pub(crate) ndim: usize,
    /// SeqBoat: shared Q/K width z (default d/2).
    #[arg(long)]
    pub(crate) zdim: Option<usize>,
    /// SeqBoat: value/gate width e (default 2d).
    #[arg(long)]
    pub(crate) hdim: Option<usize>,
    /// SeqBoat: working-memory window w in activated tokens (0: the whole compressed
    /// sequence).
    #[arg(long, default_value_t = 16)]
    pub(crate) window: usize,
    /// SeqBoat: which tokens run the attention unit — learned (SeqBoat), always (every
    /// token: dense with --window 0, local window otherwise) or off (EMA only).
    #[arg(long, default_value = "learned")]
    pub(crate) gate: String,
    /// SeqBoat: attention function, softmax or relu2.
    #[arg(long, default_value = "softmax")]
    pub(crate) sb_attn: String,
    /// SeqBoat: LayerNorm placement, pre or post (default: post for classifiers, pre for
    /// language models, as in the released configurations).
    #[arg(long)]
    pub(crate) norm: Option<String>,
    /// SeqBoat: initial temperature scale s (τ = s·√d).
    #[arg(long)]
    pub(crate) temp_scale: Option<f32>,
    /// SeqBoat: relative-position bias range M (offsets clamped to ±(M−1)).
    #[arg(long, default_value_t = 2002)]
    pub(crate) max_pos: usize,
}

/// `modula train --arch seqboat`.
pub(crate) fn run(a: &TrainArgs) -> Result<(), String> {
    if a.steps == 0 || a.batch == 0 || a.data.seq == 0 || a.accum == 0 {
        return Err("--steps, --batch, --accum and --seq must be positive".into());
    }
    let foreign = [
        ("--nested-ffn", a.sortednet.nested_ffn.is_some()),
        ("--nested-heads", a.sortednet.nested_heads.is_some()),
        ("--nested-experts", a.sortednet.nested_experts.is_some()),
        ("--freeze-experts", a.mf.freeze_experts.is_some()),
        ("--pool", a.pool.is_some()),
        ("--emoe-aux", a.emoe.emoe_aux != 0.0),
    ];
    if let Some((flag, _)) = foreign.iter().find(|(_, set)| *set) {
        return Err(format!(
            "{flag} does not apply to --arch seqboat (SeqBoat models nest depths only; no \
             experts or pooling choice)"
        ));
    }
    if let Some(t) = a.threads {
        crate::set_threads(t)?;
    }
    let (data, seq) = a.data.load()?;
    let shape = data.shape();
    if shape.patch_dim > 0 {
        return Err("--arch seqboat takes token data (listops, recall, copy or text)".into());
    }
    let (mut model, mut state) = start(
        a,
        seq,
        |p| Ok(load_sb(p)?),
        |p| init_from(p, SbModel::read_gguf),
        || {
            let lm = shape.classes == 0;
            let causal = match a.attention.as_deref() {
                None => lm,
                Some(m) => parse_mask(m)?,
            };
            let prenorm = match a.sb.norm.as_deref() {
                None => lm,
                Some("pre") => true,
                Some("post") => false,
                Some(o) => return Err(format!("--norm {o}: use pre or post")),
            };
            let attn = match a.sb.sb_attn.as_str() {
                "softmax" => SbAttn::Softmax,
                "relu2" => SbAttn::Relu2,
                o => return Err(format!("--sb-attn {o}: use softmax or relu2")),
            };
            let cfg = SbConfig {
                vocab: shape.vocab,
                classes: shape.classes,
                d: a.d,
                layers: a.layers,
                ndim: a.sb.ndim,
                z: a.sb.zdim.unwrap_or((a.d / 2).max(1)),
                e: a.sb.hdim.unwrap_or(2 * a.d),
                window: a.sb.window,
                causal,
                attn,
                prenorm,
                temp_scale: a.sb.temp_scale.unwrap_or(if lm { 1.0 } else { 0.3 }),
                max_pos: a.sb.max_pos,
                gate: SbGate::parse(&a.sb.gate).map_err(|e| format!("--gate: {e}"))?,
                pad: (a.data.data == "listops").then_some(0),
                nested_depths: 0,
            };
            Ok(SbModel::new(cfg, a.seed)?)
        },
    )?;
    if let Some(list) = &a.sortednet.nested_depths {
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
    let sorted = match &a.sortednet.sorted {
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
