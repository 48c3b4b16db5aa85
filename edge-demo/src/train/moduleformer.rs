//! `modula train --arch moduleformer` and `modula moduleformer extend`.

use super::*;

/// ModuleFormer (`--arch moduleformer`) shape and losses.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "ModuleFormer")]
pub struct MfArgs {
    /// ModuleFormer: experts per mixture (attention and FFN, unless set separately).
    #[arg(long, default_value_t = 8)]
    pub(crate) experts: usize,
    /// ModuleFormer: attention experts (default --experts).
    #[arg(long)]
    pub(crate) att_experts: Option<usize>,
    /// ModuleFormer: FFN experts (default --experts).
    #[arg(long)]
    pub(crate) ffn_experts: Option<usize>,
    /// ModuleFormer: experts per token in both mixtures (top-k).
    #[arg(long, default_value_t = 2)]
    pub(crate) top_k: usize,
    /// ModuleFormer: router MLP hidden width (0 = linear routers).
    #[arg(long, default_value_t = 64)]
    pub(crate) router_hidden: usize,
    /// ModuleFormer: shared key/value projections (with --heads and --att-hidden) instead of
    /// K = V = LN1(x) (MoLM's choice: one head of width d per attention expert).
    #[arg(long)]
    pub(crate) kv_proj: bool,
    /// ModuleFormer: query/output width of an attention expert (default d; needs --kv-proj
    /// when different from d).
    #[arg(long)]
    pub(crate) att_hidden: Option<usize>,
    /// ModuleFormer: weight of the mutual-information load-balancing loss (summed over all
    /// routers).
    #[arg(long, default_value_t = 0.01)]
    pub(crate) aux_mi: f32,
    /// ModuleFormer: weight of the load-concentration loss H(e) (fine-tuning).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) aux_lc: f32,
    /// ModuleFormer: renormalise the top-k gates to sum to 1 (MoLM does not).
    #[arg(long)]
    pub(crate) renormalize: bool,
    /// ModuleFormer: train only experts from this index on (in every mixture) and their
    /// router rows; everything else is frozen (e.g. to resume an extension run).
    #[arg(long)]
    pub(crate) freeze_experts: Option<usize>,
}

/// `modula moduleformer extend`: `--init` model plus `new` experts per mixture, only they
/// (and their router rows) train.
pub fn run_extend(a: &TrainArgs, new: usize) -> Result<(), String> {
    if a.init.is_none() {
        return Err("extension needs the trained model (--init MODEL.gguf)".into());
    }
    super::validate(a)?;
    super::refuse_overwrites(a)?;
    run_mf_with(a, new)
}

/// `modula train --arch moduleformer`.
pub(crate) fn run(a: &TrainArgs) -> Result<(), String> {
    run_mf_with(a, 0)
}

pub(crate) fn run_mf_with(a: &TrainArgs, extend: usize) -> Result<(), String> {
    if a.sortednet.nested_heads.is_some()
        || a.sortednet.nested_ffn.is_some()
        || a.sortednet.nested_depths.is_some()
    {
        return Err(
            "--nested-heads/--nested-ffn/--nested-depths do not apply to --arch moduleformer: \
             its heads and FFN units are experts, nested with --nested-experts"
                .into(),
        );
    }
    if a.steps == 0 || a.batch == 0 || a.data.seq == 0 || a.accum == 0 {
        return Err("--steps, --batch, --accum and --seq must be positive".into());
    }
    if !(a.mf.aux_mi.is_finite()
        && a.mf.aux_lc.is_finite()
        && a.mf.aux_mi >= 0.0
        && a.mf.aux_lc >= 0.0)
    {
        return Err("--aux-mi and --aux-lc must be finite and >= 0".into());
    }
    if let Some(t) = a.threads {
        crate::set_threads(t)?;
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
        |p| Ok(load_mf(p)?),
        |p| init_from(p, MfModel::read_gguf),
        || {
            let cfg = MfConfig {
                vocab: shape.vocab,
                d: a.d,
                layers: a.layers,
                att_experts: a.mf.att_experts.unwrap_or(a.mf.experts),
                att_k: a.mf.top_k,
                att_hidden: a.mf.att_hidden.unwrap_or(a.d),
                heads: if a.mf.kv_proj { a.heads } else { 1 },
                kv_proj: a.mf.kv_proj,
                ffn_experts: a.mf.ffn_experts.unwrap_or(a.mf.experts),
                ffn_k: a.mf.top_k,
                ffn_hidden: a.ffn,
                router_hidden: a.mf.router_hidden,
                renormalize: a.mf.renormalize,
                aux_mi: a.mf.aux_mi,
                aux_lc: a.mf.aux_lc,
                nested_experts: [0; 8],
            };
            Ok(MfModel::new(cfg, a.seed)?)
        },
    )?;
    model.cfg.aux_mi = a.mf.aux_mi;
    model.cfg.aux_lc = a.mf.aux_lc;
    if let Some(list) = &a.sortednet.nested_experts {
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
    } else if let Some(first) = a.mf.freeze_experts {
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
    let sorted = match &a.sortednet.sorted {
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
