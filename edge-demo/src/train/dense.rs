//! `modula train --arch dense`: the dense model, EMoE fine-tuning, SortedNet nesting.

use super::*;

/// EMoE fine-tuning options (models from `modula emoe convert`, trained with `--arch dense --init`).
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "EMoE")]
pub struct EmoeArgs {
    /// For a model with EMoE layers: train with the top-k expert mask (on, the default) or
    /// densely (off).
    #[arg(long, default_value = "on")]
    pub(crate) emoe_mask: String,
    /// EMoE routing noise while training (std = value / experts; the published code's 1.0;
    /// default off).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) emoe_noise: f32,
    /// EMoE capacity factor (the published code's 1.5; default 0 = no capacity limit).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) emoe_capacity: f32,
    /// EMoE auxiliary load/importance loss weight (the published code's 0.01; default 0 =
    /// off; its gradient reaches the FFN input, never the gates).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) emoe_aux: f32,
}

/// `modula train --arch dense` (also EMoE fine-tuning and SortedNet nesting).
pub(crate) fn run(a: &TrainArgs) -> Result<(), String> {
    if a.steps == 0 || a.batch == 0 || a.data.seq == 0 || a.accum == 0 {
        return Err("--steps, --batch, --accum and --seq must be positive".into());
    }
    if let Some(t) = a.threads {
        crate::set_threads(t)?;
    }
    let (data, seq) = a.data.load()?;
    let shape = data.shape();
    let (mut model, mut state) = start(
        a,
        seq,
        |p| Ok(load_dense(p)?),
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
            Ok(DenseModel::new(cfg, a.seed)?)
        },
    )?;
    model.emoe_mask = parse_mask(&a.emoe.emoe_mask)?;
    let ok = a.emoe.emoe_noise >= 0.0
        && a.emoe.emoe_capacity >= 0.0
        && a.emoe.emoe_aux >= 0.0
        && a.emoe.emoe_aux.is_finite();
    if !ok {
        return Err("--emoe-noise, --emoe-capacity and --emoe-aux must be >= 0".into());
    }
    model.emoe_noise = a.emoe.emoe_noise;
    model.emoe_capacity = a.emoe.emoe_capacity;
    model.emoe_aux = a.emoe.emoe_aux;
    if a.sortednet.nested_depths.is_some()
        || a.sortednet.nested_ffn.is_some()
        || a.sortednet.nested_heads.is_some()
    {
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
        let depths = list(&a.sortednet.nested_depths, "depths")?;
        let ffn = list(&a.sortednet.nested_ffn, "ffn")?;
        let heads = list(&a.sortednet.nested_heads, "heads")?;
        model.cfg = model.cfg.with_nested(&depths, &ffn)?;
        model.cfg = model.cfg.with_nested_heads(&heads)?;
    }
    let sorted = match &a.sortednet.sorted {
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

pub(crate) fn parse_mask(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("--emoe-mask {s}: use on or off")),
    }
}

/// The model's input and head must match the data.
pub(crate) fn check_fits(model: &DenseModel, data: &dyn Dataset) -> Result<(), String> {
    let (c, shape) = (model.cfg, data.shape());
    if (shape.vocab, shape.patch_dim, shape.classes) != (c.vocab, c.patch_dim, c.classes) {
        return Err(format!(
            "the model does not fit this data (model: vocab {}, patch {}, classes {}; data: vocab {}, patch {}, classes {})",
            c.vocab, c.patch_dim, c.classes, shape.vocab, shape.patch_dim, shape.classes
        ));
    }
    Ok(())
}
