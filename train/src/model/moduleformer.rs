//! ModuleFormer (MoLM) byte/token language model for training (spec Part A): token
//! embedding (no position embedding of any kind), `L` pre-LN blocks of
//! `x += MoA(LN1(x))` (a mixture of stick-breaking attention-head experts) and
//! `x += MoE(LN2(x))` (a mixture of tanh-GELU FFN experts without biases), final
//! LayerNorm, untied LM head.
//!
//! Each mixture has its own router (MLP `d → G → E` with exact GELU, or linear), softmax over
//! all experts, top-k, gates = the probabilities (not renormalised unless configured).
//! An attention expert owns a query projection `W_q[e]: [D_a, d]` and an output projection
//! stored `[D_a, d]` (input-major, the `matmul_rows` layout); keys and values are shared by
//! all experts — either projections with bias, or `K = V = LN1(x)` (the MoLM case, needs
//! `D_a = d`). Every (token, slot, head) query attends causally to the shared head slice
//! with stick-breaking attention.
//!
//! Loss = CE + Σ over all 2·L routers of `mi·(H(e|x) − H(e)) + lc·H(e)` (the
//! mutual-information load-balancing loss and the load-concentration loss, per router per
//! micro-batch). The forward returns the CE; the auxiliary total and the per-router
//! entropies are in the activations.
//!
//! Expert weights are stacked `[E, rows, d]`, one tensor per kind, so an expert is a
//! contiguous block (what the engine pages and the pruner slices).

use super::dense::normal;
use crate::compute::{linear, matmul_rows, matmul_tn_acc};
use crate::layers::activation::{activation_backward, activation_forward};
use crate::layers::linear::{linear_backward, linear_forward};
use crate::layers::loss::cross_entropy;
use crate::layers::norm::layernorm_backward;
use crate::layers::router::{
    aux_loss, gate_backward, router_backward, router_forward, RouterEntropy, RouterGrads,
    RouterSaved, RouterWeights,
};
use crate::layers::stickbreak::{stickbreak_backward, stickbreak_forward};
use crate::params::{ParamStore, ParamTable};
use crate::stack::{Grads, Layer as StackLayer, Rows, Run, Saved, Stack, StackSaved, Sublayer};
use modula_core::kernels::expert_ffn::Activation;
use modula_core::kernels::linear::MatRef;
use modula_core::kernels::par;
use modula_core::kernels::routing::{route, Dispatch};
use modula_core::rng::SplitMix64;
use modula_core::Error;

pub(crate) const LN_EPS: f32 = 1e-5;

/// LayerNorm mean and reciprocal standard deviation per row.
type LnStats = (Vec<f32>, Vec<f32>);

/// Shape and options of a ModuleFormer model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MfConfig {
    /// Vocabulary (256 for bytes).
    pub vocab: usize,
    /// Model width.
    pub d: usize,
    /// Blocks.
    pub layers: usize,
    /// Attention experts `E_a`.
    pub att_experts: usize,
    /// Attention experts per token `k_a`.
    pub att_k: usize,
    /// Query/output width of one attention expert `D_a` (= `heads · head dim`).
    pub att_hidden: usize,
    /// Heads per attention expert.
    pub heads: usize,
    /// Shared key/value projections (with bias); false: `K = V = LN1(x)` (needs `D_a = d`).
    pub kv_proj: bool,
    /// FFN experts `E_f`.
    pub ffn_experts: usize,
    /// FFN experts per token `k_f`.
    pub ffn_k: usize,
    /// Hidden width of one FFN expert `D_f`.
    pub ffn_hidden: usize,
    /// Router MLP hidden width `G` (0: linear routers).
    pub router_hidden: usize,
    /// Renormalise the k gates to sum to 1 (MoLM: false).
    pub renormalize: bool,
    /// Weight of the mutual-information load-balancing loss (summed over routers).
    pub aux_mi: f32,
    /// Weight of the load-concentration loss `H(e)` (fine-tuning).
    pub aux_lc: f32,
    /// SortedNet along experts: nested expert counts (the first `c` experts of every
    /// mixture), ascending, 0-padded; all 0 = not nested. Needs as many attention as FFN
    /// experts.
    pub nested_experts: [u32; 8],
}

impl MfConfig {
    /// A byte/token LM with MoLM's structure at a small scale: `K = V = LN1(x)` (one head of
    /// width d per attention expert), MLP routers of width 64, top-2 in both mixtures,
    /// MI-loss weight 0.01.
    pub fn lm(vocab: usize, d: usize, layers: usize, experts: usize, ffn_hidden: usize) -> Self {
        MfConfig {
            vocab,
            d,
            layers,
            att_experts: experts,
            att_k: 2.min(experts),
            att_hidden: d,
            heads: 1,
            kv_proj: false,
            ffn_experts: experts,
            ffn_k: 2.min(experts),
            ffn_hidden,
            router_hidden: 64,
            renormalize: false,
            aux_mi: 0.01,
            aux_lc: 0.0,
            nested_experts: [0; 8],
        }
    }

    /// Check the shape; a clear message otherwise.
    pub fn validate(&self) -> Result<(), Error> {
        if self.vocab == 0 || self.d == 0 || self.layers == 0 {
            return Err(Error::input(
                "vocabulary, width and depth must be at least 1",
            ));
        }
        if self.heads == 0 || self.att_hidden == 0 || !self.att_hidden.is_multiple_of(self.heads) {
            return Err(Error::input(format!(
                "attention width {} must be a positive multiple of heads {}",
                self.att_hidden, self.heads
            )));
        }
        if !self.kv_proj && self.att_hidden != self.d {
            return Err(Error::input(format!(
                "K = V = LN1(x) needs the attention width ({}) to equal d ({}); enable the key/value projections otherwise",
                self.att_hidden, self.d
            )));
        }
        for (what, e, k) in [
            ("attention", self.att_experts, self.att_k),
            ("FFN", self.ffn_experts, self.ffn_k),
        ] {
            if e == 0 {
                return Err(Error::input(format!(
                    "{what} mixture: 0 experts (--experts / --{}-experts must be positive)",
                    if what == "FFN" { "ffn" } else { "att" }
                )));
            }
            if k == 0 || k > e {
                return Err(Error::input(format!(
                    "{what} mixture: top-k {k} must be in 1..={e} experts"
                )));
            }
        }
        if self.ffn_hidden == 0 {
            return Err(Error::input("FFN expert width must be at least 1"));
        }
        if !(self.aux_mi.is_finite() && self.aux_lc.is_finite()) {
            return Err(Error::input("auxiliary loss weights must be finite"));
        }
        Ok(())
    }

    /// The nested expert counts, ascending, ending with all experts (just all experts when
    /// not nested).
    pub fn nested_expert_list(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .nested_experts
            .iter()
            .map(|&c| c as usize)
            .filter(|&c| c > 0 && c < self.ffn_experts)
            .collect();
        v.sort_unstable();
        v.dedup();
        v.push(self.ffn_experts);
        v
    }

    /// Declare nested expert counts (the full count is implied); each must be at least both
    /// top-k values; attention and FFN mixtures must have the same number of experts.
    pub fn with_nested_experts(mut self, counts: &[usize]) -> Result<Self, Error> {
        if self.att_experts != self.ffn_experts {
            return Err(Error::input(
                "nested experts need as many attention as FFN experts",
            ));
        }
        let mut v: Vec<usize> = counts
            .iter()
            .copied()
            .filter(|&c| c != self.ffn_experts)
            .collect();
        v.sort_unstable();
        v.dedup();
        if v.len() > 8 {
            return Err(Error::input(
                "at most 8 nested expert counts besides the full one",
            ));
        }
        self.nested_experts = [0; 8];
        for (i, &c) in v.iter().enumerate() {
            if c < self.att_k.max(self.ffn_k) || c > self.ffn_experts {
                return Err(Error::input(format!(
                    "nested expert count {c} must be in {}..={}",
                    self.att_k.max(self.ffn_k),
                    self.ffn_experts
                )));
            }
            self.nested_experts[i] = c as u32;
        }
        Ok(self)
    }

    /// Parameters active per token, excluding the embedding table (routers, chosen experts,
    /// shared K/V, norms, head).
    pub fn active_params(&self) -> usize {
        let (d, da, df) = (self.d, self.att_hidden, self.ffn_hidden);
        let router = |e: usize| {
            if self.router_hidden > 0 {
                self.router_hidden * (d + 1) + e * self.router_hidden
            } else {
                e * d
            }
        };
        let kv = if self.kv_proj { 2 * (da * d + da) } else { 0 };
        let per_layer = router(self.att_experts)
            + router(self.ffn_experts)
            + kv
            + self.att_k * 2 * da * d
            + self.ffn_k * 2 * df * d
            + 4 * d;
        self.layers * per_layer + 2 * d + self.vocab * d
    }
}

/// Parameter indices of one router.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RouterIdx {
    /// `[E, G]` or `[E, d]`.
    pub(crate) out: usize,
    /// MLP: `[G, d]` and `[G]`.
    pub(crate) hid: Option<(usize, usize)>,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct MfBlock {
    pub(crate) ln1_g: usize,
    pub(crate) ln1_b: usize,
    pub(crate) att_router: RouterIdx,
    /// `(k_w, k_b, v_w, v_b)` when projected.
    pub(crate) kv: Option<(usize, usize, usize, usize)>,
    pub(crate) q_exps: usize,
    pub(crate) o_exps: usize,
    pub(crate) ln2_g: usize,
    pub(crate) ln2_b: usize,
    pub(crate) ffn_router: RouterIdx,
    pub(crate) up_exps: usize,
    pub(crate) down_exps: usize,
}

/// A trainable ModuleFormer model.
#[derive(Clone, Debug)]
pub struct MfModel {
    /// Shape and options.
    pub cfg: MfConfig,
    /// Parameters, gradients, optimiser moments.
    pub params: ParamStore,
    pub(crate) embed: usize,
    /// The blocks as the trainer's block stack (attention mixture, FFN mixture).
    stack: Stack,
    pub(crate) lnf_g: usize,
    pub(crate) lnf_b: usize,
    pub(crate) head: usize,
    /// Run a nested sub-model (SortedNet along experts): only the first `(attention, FFN)`
    /// experts of every mixture, routers restricted to them (softmax over those). `None`:
    /// all experts.
    pub nested: Option<(usize, usize)>,
    /// Test hook: fixed expert choices per router (`[n, k]` each), so finite differences
    /// see the gradient of the routing the analytic backward assumes.
    #[cfg(test)]
    pub(crate) forced: Option<Vec<Vec<u32>>>,
}

/// One router call's decision and statistics.
#[derive(Clone, Debug, Default)]
struct RouteSaved {
    saved: RouterSaved,
    /// `[n, E]`
    probs: Vec<f32>,
    /// `[n, k]`
    sel: Vec<u32>,
    /// `[n, k]`
    gates: Vec<f32>,
    disp: Dispatch,
    ent: RouterEntropy,
}

/// What one mixture's forward keeps for its backward.
#[derive(Clone, Debug, Default)]
pub struct BlockActs {
    /// The FFN mixture (false: the attention mixture).
    ffn: bool,
    /// Experts in use (attention, FFN).
    experts: (usize, usize),
    h1: Vec<f32>,
    ln1: (Vec<f32>, Vec<f32>),
    r1: RouteSaved,
    /// Projected K and V `[n, D_a]` (empty when K = V = h1).
    k: Vec<f32>,
    v: Vec<f32>,
    /// `[n·k, D_a]` per (token, slot).
    q: Vec<f32>,
    o: Vec<f32>,
    /// `[n·k, d]` ungated expert outputs (attention).
    ya: Vec<f32>,
    h2: Vec<f32>,
    ln2: (Vec<f32>, Vec<f32>),
    r2: RouteSaved,
    /// `[n·k, D_f]` pre-activations and activations.
    u: Vec<f32>,
    act: Vec<f32>,
    /// `[n·k, d]` ungated expert outputs (FFN).
    yf: Vec<f32>,
}

/// What the forward keeps for the backward.
#[derive(Clone, Debug, Default)]
pub struct MfActivations {
    b: usize,
    t: usize,
    blocks: StackSaved,
    x_out: Vec<f32>,
    lnf: Vec<f32>,
    lnf_stats: (Vec<f32>, Vec<f32>),
    logits: Vec<f32>,
    /// Weighted auxiliary loss summed over routers.
    pub aux: f64,
    /// Experts in use (attention, FFN): all, or a nested prefix.
    experts: (usize, usize),
}

impl BlockActs {
    /// This mixture's routing.
    fn route(&self) -> &RouteSaved {
        if self.ffn {
            &self.r2
        } else {
            &self.r1
        }
    }
}

impl MfActivations {
    /// The mixtures' saved states in order (block 0 attention, block 0 FFN, …).
    fn mixtures(&self) -> impl Iterator<Item = &BlockActs> {
        self.blocks.saved.iter().filter_map(|s| match s {
            Saved::Mf(b) => Some(&**b),
            _ => None,
        })
    }

    /// `[b·t, vocab]` logits.
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    /// Per router, in order (block 0 attention, block 0 FFN, block 1 attention, …): the
    /// entropies of this batch.
    pub fn router_entropies(&self) -> Vec<RouterEntropy> {
        self.mixtures().map(|b| b.route().ent).collect()
    }

    /// Per router: how many (token, slot) pairs each expert received.
    pub fn expert_counts(&self) -> Vec<Vec<u32>> {
        self.mixtures()
            .map(|b| b.route().disp.counts.clone())
            .collect()
    }

    /// Per router: chosen experts `[n, k]`.
    pub fn selections(&self) -> Vec<&[u32]> {
        self.mixtures().map(|b| b.route().sel.as_slice()).collect()
    }
}

fn add(dst: &mut [f32], src: &[f32]) {
    for (a, b) in dst.iter_mut().zip(src) {
        *a += b;
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Run `f(e, pairs)` for every expert with routed pairs, one task per expert on the kernel
/// pool (the kernels inside a task run on its thread); results in expert order.
fn per_expert<R: Send>(
    disp: &Dispatch,
    experts: usize,
    f: impl Fn(usize, &[u32]) -> Result<R, Error> + Sync,
) -> Result<Vec<Option<R>>, Error> {
    par::map_indexed(experts, |e| {
        let pairs = disp.pairs(e);
        if pairs.is_empty() {
            Ok(None)
        } else {
            f(e, pairs).map(Some)
        }
    })
    .into_iter()
    .collect()
}

/// `[pairs, d]`: the output gradient row of each pair's token times the pair's gate.
fn gated_rows(dy: &[f32], d: usize, pairs: &[u32], k: usize, gates: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(pairs.len() * d);
    for &pair in pairs {
        let (pr, tok) = (pair as usize, pair as usize / k);
        let g = gates[pr];
        out.extend(dy[tok * d..(tok + 1) * d].iter().map(|v| g * v));
    }
    out
}

/// Copy row `r` of `src: [pairs, w]` to row `pairs[r]` of `dst` (per-expert results back to
/// their (token, slot) places).
fn scatter_rows(dst: &mut [f32], w: usize, pairs: &[u32], src: &[f32]) {
    for (r, &pair) in pairs.iter().enumerate() {
        let pr = pair as usize;
        dst[pr * w..(pr + 1) * w].copy_from_slice(&src[r * w..(r + 1) * w]);
    }
}

/// `x[t] += Σ_s gates[t·k + s] · y[t·k + s]` for every token (`x: [n, d]`, `y: [n·k, d]`).
fn add_gated(x: &mut [f32], y: &[f32], gates: &[f32], d: usize, k: usize) {
    for (tok, xr) in x.chunks_exact_mut(d).enumerate() {
        for slot in 0..k {
            let pr = tok * k + slot;
            let g = gates[pr];
            for (xv, yv) in xr.iter_mut().zip(&y[pr * d..(pr + 1) * d]) {
                *xv += g * yv;
            }
        }
    }
}

/// Add row `r` of `src: [pairs, d]` into row `pairs[r] / k` of `dst`.
fn scatter_add(dst: &mut [f32], d: usize, pairs: &[u32], k: usize, src: &[f32]) {
    for (r, &pair) in pairs.iter().enumerate() {
        let tok = pair as usize / k;
        add(&mut dst[tok * d..(tok + 1) * d], &src[r * d..(r + 1) * d]);
    }
}

/// Rows `rows[i] / div` of `src: [_, w]` gathered into `[rows.len(), w]`.
fn gather(src: &[f32], w: usize, rows: &[u32], div: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows.len() * w);
    for &r in rows {
        let r = r as usize / div;
        out.extend_from_slice(&src[r * w..(r + 1) * w]);
    }
    out
}

impl MfModel {
    /// A model initialised as the released code does: embedding, head and routers
    /// N(0, 0.02) (router biases 0), expert weights Uniform(±1/fan_in), K/V projections
    /// N(0, 0.02), norms γ = 1, β = 0. Deterministic in `seed`.
    pub fn new(cfg: MfConfig, seed: u64) -> Result<Self, Error> {
        cfg.validate()?;
        let (d, da, df) = (cfg.d, cfg.att_hidden, cfg.ffn_hidden);
        let mut t = ParamTable::new();
        let embed = t.add("token_embd.weight", &[cfg.vocab, d], true)?;
        let router = |t: &mut ParamTable, name: &str, e: usize| -> Result<RouterIdx, Error> {
            if cfg.router_hidden > 0 {
                let g = cfg.router_hidden;
                let hw = t.add(&format!("{name}_hid.weight"), &[g, d], true)?;
                let hb = t.add(&format!("{name}_hid.bias"), &[g], false)?;
                let out = t.add(&format!("{name}.weight"), &[e, g], true)?;
                Ok(RouterIdx {
                    out,
                    hid: Some((hw, hb)),
                })
            } else {
                let out = t.add(&format!("{name}.weight"), &[e, d], true)?;
                Ok(RouterIdx { out, hid: None })
            }
        };
        let mut blocks = Vec::new();
        for l in 0..cfg.layers {
            let p = |s: &str| format!("blk.{l}.{s}");
            let ln1_g = t.add(&p("attn_norm.weight"), &[d], false)?;
            let ln1_b = t.add(&p("attn_norm.bias"), &[d], false)?;
            let att_router = router(&mut t, &p("attn_router"), cfg.att_experts)?;
            let kv = if cfg.kv_proj {
                Some((
                    t.add(&p("attn_k.weight"), &[da, d], true)?,
                    t.add(&p("attn_k.bias"), &[da], false)?,
                    t.add(&p("attn_v.weight"), &[da, d], true)?,
                    t.add(&p("attn_v.bias"), &[da], false)?,
                ))
            } else {
                None
            };
            let q_exps = t.add(&p("attn_q_exps.weight"), &[cfg.att_experts, da, d], true)?;
            let o_exps = t.add(
                &p("attn_output_t_exps.weight"),
                &[cfg.att_experts, da, d],
                true,
            )?;
            let ln2_g = t.add(&p("ffn_norm.weight"), &[d], false)?;
            let ln2_b = t.add(&p("ffn_norm.bias"), &[d], false)?;
            let ffn_router = router(&mut t, &p("ffn_router"), cfg.ffn_experts)?;
            let up_exps = t.add(&p("ffn_up_exps.weight"), &[cfg.ffn_experts, df, d], true)?;
            let down_exps = t.add(
                &p("ffn_down_t_exps.weight"),
                &[cfg.ffn_experts, df, d],
                true,
            )?;
            blocks.push(MfBlock {
                ln1_g,
                ln1_b,
                att_router,
                kv,
                q_exps,
                o_exps,
                ln2_g,
                ln2_b,
                ffn_router,
                up_exps,
                down_exps,
            });
        }
        let lnf_g = t.add("output_norm.weight", &[d], false)?;
        let lnf_b = t.add("output_norm.bias", &[d], false)?;
        let head = t.add("output.weight", &[cfg.vocab, d], true)?;
        let mut params = t.build();
        let mut rng = SplitMix64(seed);
        for (i, s) in params.specs().to_vec().iter().enumerate() {
            let v = params.value_mut(i);
            if s.name.ends_with("norm.weight") {
                v.fill(1.0);
            } else if s.name.ends_with(".bias") {
                v.fill(0.0);
            } else if s.name.contains("_exps") {
                // Uniform(±1/fan_in), fan_in = the expert's input width
                let fan_in = if s.name.contains("attn_output_t") {
                    da
                } else if s.name.contains("ffn_down_t") {
                    df
                } else {
                    d
                };
                let a = 1.0 / fan_in as f32;
                v.iter_mut()
                    .for_each(|x| *x = a * (2.0 * rng.next_f32() - 1.0));
            } else {
                v.iter_mut().for_each(|x| *x = 0.02 * normal(&mut rng));
            }
        }
        let stack = Stack {
            blocks: blocks
                .iter()
                .enumerate()
                .map(|(block, &blk)| {
                    vec![
                        Sublayer::MfAttention(Box::new(MfMixture { cfg, blk, block })),
                        Sublayer::MfFfn(Box::new(MfMixture { cfg, blk, block })),
                    ]
                })
                .collect(),
        };
        Ok(MfModel {
            cfg,
            params,
            embed,
            stack,
            lnf_g,
            lnf_b,
            head,
            nested: None,
            #[cfg(test)]
            forced: None,
        })
    }

    /// The experts in use per mixture: all, or the nested prefix ([`MfModel::nested`]).
    pub fn active_experts(&self) -> Result<(usize, usize), Error> {
        let c = self.cfg;
        match self.nested {
            None => Ok((c.att_experts, c.ffn_experts)),
            Some((ea, ef)) => {
                if ea < c.att_k || ea > c.att_experts || ef < c.ffn_k || ef > c.ffn_experts {
                    return Err(Error::input(format!(
                        "nested sub-model of {ea} attention / {ef} FFN experts is outside {}..={} / {}..={}",
                        c.att_k, c.att_experts, c.ffn_k, c.ffn_experts
                    )));
                }
                Ok((ea, ef))
            }
        }
    }

    /// Forward over `b` sequences of `t` tokens; returns the mean CE against `targets`
    /// (`[b, t]`, [`crate::layers::loss::IGNORE`] skipped), the activations (with the
    /// weighted auxiliary loss) and `∂CE/∂logits`.
    pub fn forward(
        &self,
        tokens: &[u32],
        targets: &[u32],
        b: usize,
        t: usize,
    ) -> Result<(f64, MfActivations, Vec<f32>), Error> {
        let c = self.cfg;
        let n = b * t;
        if tokens.len() != n || targets.len() != n {
            return Err(Error::input(format!(
                "expected {n} tokens and targets ({b} x {t}), got {} and {}",
                tokens.len(),
                targets.len()
            )));
        }
        if let Some(&bad) = tokens.iter().find(|&&x| x as usize >= c.vocab) {
            return Err(Error::input(format!(
                "token {bad} is outside the vocabulary of {}",
                c.vocab
            )));
        }
        let d = c.d;
        let p = &self.params;
        let mut acts = MfActivations {
            b,
            t,
            experts: self.active_experts()?,
            ..MfActivations::default()
        };
        let mut x = vec![0f32; n * d];
        let emb = p.value(self.embed);
        for (i, &tok) in tokens.iter().enumerate() {
            let r = tok as usize * d;
            x[i * d..(i + 1) * d].copy_from_slice(&emb[r..r + d]);
        }
        let ln = |x: &[f32], g: usize, bb: usize| ln_rows(p, x, n, d, g, bb);
        #[cfg(test)]
        let forced: Vec<(usize, Vec<u32>)> =
            self.forced.iter().flatten().cloned().enumerate().collect();
        #[cfg(not(test))]
        let forced: Vec<(usize, Vec<u32>)> = Vec::new();
        let run = Run {
            experts: Some(acts.experts),
            forced: &forced,
            ..Run::default()
        };
        acts.blocks = self
            .stack
            .forward(p, Rows { b, t, d }, &run, c.layers, &mut x)?;
        let (hf, stf) = ln(&x, self.lnf_g, self.lnf_b)?;
        let mut logits = vec![0f32; n * c.vocab];
        linear(
            &hf,
            d,
            n,
            &MatRef::f32(p.value(self.head), c.vocab, d)?,
            None,
            &mut logits,
            c.vocab,
        )?;
        let mut dlogits = vec![0f32; n * c.vocab];
        let loss = cross_entropy(&logits, targets, c.vocab, &mut dlogits)?;
        // weighted auxiliary losses (values only; gradients are added in the backward)
        let mut aux = 0.0;
        for ba in acts.mixtures() {
            let r = ba.route();
            let (mi, lc) = (f64::from(c.aux_mi), f64::from(c.aux_lc));
            aux += mi * (r.ent.conditional - r.ent.marginal) + lc * r.ent.marginal;
        }
        acts.aux = aux;
        acts.x_out = x;
        acts.lnf = hf;
        acts.lnf_stats = stf;
        acts.logits = logits;
        Ok((loss, acts, dlogits))
    }

    /// Backward from `dlogits` (possibly scaled by `aux_scale` for gradient accumulation;
    /// the auxiliary-loss gradients are scaled by the same `aux_scale`), accumulating into
    /// the parameter gradients.
    pub fn backward(
        &mut self,
        tokens: &[u32],
        a: &MfActivations,
        dlogits: &[f32],
        aux_scale: f32,
    ) -> Result<(), Error> {
        let c = self.cfg;
        let (b, t) = (a.b, a.t);
        let n = b * t;
        let d = c.d;
        if dlogits.len() != n * c.vocab || a.blocks.depth != c.layers || tokens.len() != n {
            return Err(Error::input(
                "backward: activations or dlogits do not match this model",
            ));
        }
        let mut dhf = vec![0f32; n * d];
        {
            let p = &mut self.params;
            let (w, gw) = p.value_grad(self.head, self.head);
            linear_backward(dlogits, &a.lnf, w, n, c.vocab, d, Some(&mut dhf), gw, None)?;
        }
        let mut dx = vec![0f32; n * d];
        let c = self.cfg;
        ln_backward(
            &c,
            &mut self.params,
            &dhf,
            &a.x_out,
            self.lnf_g,
            self.lnf_b,
            &a.lnf_stats,
            n,
            &mut dx,
        );
        self.stack.backward(
            &mut self.params,
            &a.blocks,
            &mut dx,
            Grads {
                params: true,
                aux_scale,
            },
        )?;
        let gw = self.params.grad_mut(self.embed);
        for (i, &tok) in tokens.iter().enumerate() {
            add(
                &mut gw[tok as usize * d..(tok as usize + 1) * d],
                &dx[i * d..(i + 1) * d],
            );
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// the two mixtures of a block as sub-layers of the trainer's block stack

/// Row length of a router's output layer (`G`, or `d` for a linear router).
fn router_cols(c: &MfConfig) -> usize {
    if c.router_hidden > 0 {
        c.router_hidden
    } else {
        c.d
    }
}

/// A router's weights, its output layer restricted to the first `e` experts.
fn router_weights<'a>(
    c: &MfConfig,
    p: &'a ParamStore,
    r: RouterIdx,
    e: usize,
) -> RouterWeights<'a> {
    let out = &p.value(r.out)[..e * router_cols(c)];
    match r.hid {
        Some((hw, hb)) => RouterWeights::Mlp {
            w1: p.value(hw),
            b1: p.value(hb),
            w2: out,
        },
        None => RouterWeights::Linear { w: out },
    }
}

#[allow(clippy::too_many_arguments)]
fn mixture_route(
    c: &MfConfig,
    p: &ParamStore,
    run: &Run<'_>,
    which: usize,
    r: RouterIdx,
    h: &[f32],
    n: usize,
    e: usize,
    k: usize,
) -> Result<RouteSaved, Error> {
    let mut logits = vec![0f32; n * e];
    let saved = router_forward(router_weights(c, p, r, e), h, n, c.d, e, &mut logits)?;
    if logits.iter().any(|v| !v.is_finite()) {
        return Err(Error::input(
            "router logits are not finite; lower the learning rate",
        ));
    }
    let mut routing = route(logits, n, e, k, c.renormalize)?;
    if let Some((_, f)) = run.forced.iter().find(|(i, _)| *i == which) {
        routing.experts.clone_from(f);
        for tok in 0..n {
            let row = &routing.probs[tok * e..(tok + 1) * e];
            let sel = &routing.experts[tok * k..(tok + 1) * k];
            let sum: f32 = sel.iter().map(|&x| row[x as usize]).sum();
            for (g, &x) in routing.gates[tok * k..(tok + 1) * k].iter_mut().zip(sel) {
                *g = if c.renormalize {
                    row[x as usize] / sum
                } else {
                    row[x as usize]
                };
            }
        }
    }
    let disp = Dispatch::new(&routing.experts, e)?;
    let (ent, _) = crate::layers::router::router_entropy(&routing.probs, n, e);
    Ok(RouteSaved {
        saved,
        probs: routing.probs,
        sel: routing.experts,
        gates: routing.gates,
        disp,
        ent,
    })
}

/// Router backward for one mixture: the gate gradient from `dy` (the block output's
/// gradient) and the ungated expert outputs `y: [n·k, d]`, plus `scale ×` the
/// auxiliary-loss gradient; accumulates into the router's weights and `dh: [n, d]`.
#[allow(clippy::too_many_arguments)]
fn mixture_router_backward(
    c: &MfConfig,
    p: &mut ParamStore,
    r: RouterIdx,
    rs: &RouteSaved,
    h: &[f32],
    dy: &[f32],
    y: &[f32],
    n: usize,
    e: usize,
    k: usize,
    aux_scale: f32,
    dh: &mut [f32],
) -> Result<(), Error> {
    let d = c.d;
    let mut dl = vec![0f32; n * e];
    let mut a = vec![0f32; k];
    for tok in 0..n {
        for (slot, av) in a.iter_mut().enumerate() {
            let pr = tok * k + slot;
            *av = dot(&dy[tok * d..(tok + 1) * d], &y[pr * d..(pr + 1) * d]);
        }
        gate_backward(
            &rs.probs[tok * e..(tok + 1) * e],
            &rs.sel[tok * k..(tok + 1) * k],
            &a,
            c.renormalize,
            &mut dl[tok * e..(tok + 1) * e],
        );
    }
    aux_loss(&rs.probs, n, e, c.aux_mi, c.aux_lc, aux_scale, &mut dl);
    // split borrows: weights read, gradients written
    let cols = if c.router_hidden > 0 {
        c.router_hidden
    } else {
        d
    };
    let full_out = p.specs()[r.out].range.clone();
    let specs_out = full_out.start..full_out.start + e * cols;
    match r.hid {
        Some((hw, hb)) => {
            let (rw1, rb1) = (p.specs()[hw].range.clone(), p.specs()[hb].range.clone());
            let (vals, grads) = (&p.values, &mut p.grads);
            let w = RouterWeights::Mlp {
                w1: &vals[rw1.clone()],
                b1: &vals[rb1.clone()],
                w2: &vals[specs_out.clone()],
            };
            let (g_lo, g_hi) = split3(grads, rw1, rb1, specs_out);
            let gr = RouterGrads::Mlp {
                dw1: g_lo.0,
                db1: g_lo.1,
                dw2: g_hi,
            };
            router_backward(w, gr, &rs.saved, h, n, d, e, &dl, dh).map_err(Error::from)
        }
        None => {
            let (vals, grads) = (&p.values, &mut p.grads);
            let w = RouterWeights::Linear {
                w: &vals[specs_out.clone()],
            };
            let gr = RouterGrads::Linear {
                dw: &mut grads[specs_out],
            };
            router_backward(w, gr, &rs.saved, h, n, d, e, &dl, dh).map_err(Error::from)
        }
    }
}

/// LayerNorm backward: `dx += LN'(dy)`, parameter gradients accumulated.
#[allow(clippy::too_many_arguments)]
fn ln_backward(
    c: &MfConfig,
    p: &mut ParamStore,
    dy: &[f32],
    x: &[f32],
    g: usize,
    bb: usize,
    stats: &(Vec<f32>, Vec<f32>),
    n: usize,
    dx: &mut [f32],
) {
    let d = c.d;
    let (mut dg, mut db) = (vec![0f32; d], vec![0f32; d]);
    layernorm_backward(
        dy,
        x,
        n,
        d,
        p.value(g),
        &stats.0,
        &stats.1,
        dx,
        &mut dg,
        &mut db,
    );
    add(p.grad_mut(g), &dg);
    add(p.grad_mut(bb), &db);
}

/// One of a ModuleFormer block's two mixtures as a sub-layer of the trainer's block stack
/// ([`crate::stack`]): stick-breaking attention experts (`FFN = false`) or FFN experts
/// (`FFN = true`), each with its router and pre-LN. The active experts (SortedNet nesting)
/// come from [`Run::experts`]; fixed choices for a gradient check from [`Run::forced`]
/// keyed by router index (`2·block` attention, `2·block + 1` FFN).
#[derive(Clone, Copy, Debug)]
pub struct MfMixture<const FFN: bool> {
    /// Shape and options.
    pub cfg: MfConfig,
    pub(crate) blk: MfBlock,
    /// Block index.
    pub block: usize,
}

impl<const FFN: bool> MfMixture<FFN> {
    /// A forward's experts in use and its empty saved state, the input checked.
    fn begin(&self, r: Rows, run: &Run<'_>, x: &[f32]) -> Result<BlockActs, Error> {
        let c = self.cfg;
        if x.len() != r.n() * c.d {
            return Err(Error::input(format!(
                "ModuleFormer block: {} values, not [{}, {}]",
                x.len(),
                r.n(),
                c.d
            )));
        }
        Ok(BlockActs {
            ffn: FFN,
            experts: run.experts.unwrap_or((c.att_experts, c.ffn_experts)),
            ..BlockActs::default()
        })
    }

    /// A backward's saved state, checked against this mixture and the shapes.
    fn saved<'s>(
        &self,
        r: Rows,
        saved: &'s Saved,
        x_in: &[f32],
        dx: &[f32],
        g: Grads,
    ) -> Result<&'s BlockActs, Error> {
        let Saved::Mf(ba) = saved else {
            return Err(Error::input(
                "ModuleFormer backward: saved activations of another layer",
            ));
        };
        if !g.params {
            return Err(Error::input(
                "ModuleFormer mixtures always train their parameters",
            ));
        }
        let nd = r.n() * self.cfg.d;
        if dx.len() != nd || x_in.len() != nd || ba.ffn != FFN {
            return Err(Error::input(
                "ModuleFormer backward: saved activations do not match the shape",
            ));
        }
        Ok(ba)
    }
}

/// LayerNorm of `n` rows of width `d` with the trainer's epsilon: output and statistics.
fn ln_rows(
    p: &ParamStore,
    x: &[f32],
    n: usize,
    d: usize,
    g: usize,
    b: usize,
) -> Result<(Vec<f32>, LnStats), Error> {
    let s = crate::stack::Norm { g, b, eps: LN_EPS }.forward(p, x, n, d)?;
    Ok((s.y, (s.mu, s.rs)))
}

impl StackLayer for MfMixture<false> {
    fn forward(
        &self,
        p: &ParamStore,
        r: Rows,
        run: &Run<'_>,
        x: &mut [f32],
    ) -> Result<Saved, Error> {
        let mut ba = self.begin(r, run, x)?;
        let (c, blk, experts) = (self.cfg, self.blk, ba.experts);
        let (b, t) = (r.b, r.t);
        let n = b * t;
        let (d, da) = (c.d, c.att_hidden);
        let ln = |x: &[f32], g: usize, bb: usize| ln_rows(p, x, n, d, g, bb);
        let dh = da / c.heads;
        let scale = 1.0 / (dh as f32).sqrt();
        // ---- mixture of stick-breaking attention heads
        let (h1, st1) = ln(x, blk.ln1_g, blk.ln1_b)?;
        let (ea, ka) = (experts.0, c.att_k);
        let r1 = mixture_route(&c, p, run, 2 * self.block, blk.att_router, &h1, n, ea, ka)?;
        if let Some((kw, kb, vw, vb)) = blk.kv {
            ba.k = vec![0f32; n * da];
            ba.v = vec![0f32; n * da];
            linear_forward(&h1, n, p.value(kw), Some(p.value(kb)), da, d, &mut ba.k)?;
            linear_forward(&h1, n, p.value(vw), Some(p.value(vb)), da, d, &mut ba.v)?;
        }
        let (kk, vv): (&[f32], &[f32]) = if blk.kv.is_some() {
            (&ba.k, &ba.v)
        } else {
            (&h1, &h1)
        };
        // map: q per (token, slot) by its expert's query projection
        let mut q = vec![0f32; n * ka * da];
        let wq = p.value(blk.q_exps);
        let qs = per_expert(&r1.disp, ea, |e, pairs| {
            let xe = gather(&h1, d, pairs, ka);
            let mut qe = vec![0f32; pairs.len() * da];
            let w = &wq[e * da * d..(e + 1) * da * d];
            linear_forward(&xe, pairs.len(), w, None, da, d, &mut qe)?;
            Ok(qe)
        })?;
        for (e, qe) in qs.iter().enumerate() {
            if let Some(qe) = qe {
                scatter_rows(&mut q, da, r1.disp.pairs(e), qe);
            }
        }
        // attend: one task per (sequence, slot, head)
        let heads = c.heads;
        let outs = par::map_indexed(b * ka * heads, |task| {
            let (s, rest) = (task / (ka * heads), task % (ka * heads));
            let (slot, hh) = (rest / heads, rest % heads);
            let mut qh = vec![0f32; t * dh];
            let mut kh = vec![0f32; t * dh];
            let mut vh = vec![0f32; t * dh];
            for i in 0..t {
                let tok = s * t + i;
                let pr = tok * ka + slot;
                qh[i * dh..(i + 1) * dh]
                    .copy_from_slice(&q[pr * da + hh * dh..pr * da + (hh + 1) * dh]);
                kh[i * dh..(i + 1) * dh]
                    .copy_from_slice(&kk[tok * da + hh * dh..tok * da + (hh + 1) * dh]);
                vh[i * dh..(i + 1) * dh]
                    .copy_from_slice(&vv[tok * da + hh * dh..tok * da + (hh + 1) * dh]);
            }
            let mut o = vec![0f32; t * dh];
            stickbreak_forward(&qh, &kh, &vh, t, dh, scale, &mut o).map(|()| o)
        });
        let mut o = vec![0f32; n * ka * da];
        for (task, r) in outs.into_iter().enumerate() {
            let oh = r?;
            let (s, rest) = (task / (ka * heads), task % (ka * heads));
            let (slot, hh) = (rest / heads, rest % heads);
            for i in 0..t {
                let pr = (s * t + i) * ka + slot;
                o[pr * da + hh * dh..pr * da + (hh + 1) * dh]
                    .copy_from_slice(&oh[i * dh..(i + 1) * dh]);
            }
        }
        // reduce: each expert's output projection, gated, added to the residual
        let mut ya = vec![0f32; n * ka * d];
        let wo = p.value(blk.o_exps);
        let ys = per_expert(&r1.disp, ea, |e, pairs| {
            let oe = gather(&o, da, pairs, 1);
            let mut ye = vec![0f32; pairs.len() * d];
            let w = MatRef::f32(&wo[e * da * d..(e + 1) * da * d], da, d)?;
            matmul_rows(&oe, da, pairs.len(), &w, &mut ye, d, false)?;
            Ok(ye)
        })?;
        for (e, ye) in ys.iter().enumerate() {
            if let Some(ye) = ye {
                scatter_rows(&mut ya, d, r1.disp.pairs(e), ye);
            }
        }
        add_gated(x, &ya, &r1.gates, d, ka);
        ba.h1 = h1;
        ba.ln1 = st1;
        ba.r1 = r1;
        ba.q = q;
        ba.o = o;
        ba.ya = ya;
        Ok(Saved::Mf(Box::new(ba)))
    }

    fn backward(
        &self,
        p: &mut ParamStore,
        r: Rows,
        saved: &Saved,
        x_in: &[f32],
        dx: &mut [f32],
        g: Grads,
    ) -> Result<(), Error> {
        let ba = self.saved(r, saved, x_in, dx, g)?;
        let (c, blk) = (self.cfg, self.blk);
        let (b, t) = (r.b, r.t);
        let n = b * t;
        let (d, da) = (c.d, c.att_hidden);
        let dh_ = da / c.heads;
        let scale = 1.0 / (dh_ as f32).sqrt();
        // ---- attention mixture: x_mid = x_in + Σ g·ya
        let (ea, ka) = (ba.experts.0, c.att_k);
        let mut dh1 = vec![0f32; n * d];
        mixture_router_backward(
            &c,
            p,
            blk.att_router,
            &ba.r1,
            &ba.h1,
            dx,
            &ba.ya,
            n,
            ea,
            ka,
            g.aux_scale,
            &mut dh1,
        )?;
        // reduce backward → dO per pair
        let mut dobuf = vec![0f32; n * ka * da];
        {
            let p = &mut *p;
            let ro = p.specs()[blk.o_exps].range.clone();
            let vals = &p.values;
            let res = per_expert(&ba.r1.disp, ea, |e, pairs| {
                let m = pairs.len();
                let dye = gated_rows(dx, d, pairs, ka, &ba.r1.gates);
                let oe = gather(&ba.o, da, pairs, 1);
                let wo = &vals[ro.start + e * da * d..ro.start + (e + 1) * da * d];
                let mut doe = vec![0f32; m * da];
                let wom = MatRef::f32(wo, da, d)?;
                linear(&dye, d, m, &wom, None, &mut doe, da)?;
                let mut go = vec![0f32; da * d];
                matmul_tn_acc(&oe, &dye, m, da, d, &mut go)?;
                Ok((doe, go))
            })?;
            for (e, r) in res.iter().enumerate() {
                let Some((doe, go)) = r else { continue };
                add(
                    &mut p.grads[ro.start + e * da * d..ro.start + (e + 1) * da * d],
                    go,
                );
                scatter_rows(&mut dobuf, da, ba.r1.disp.pairs(e), doe);
            }
        }
        // stick-breaking backward per (sequence, slot, head)
        let (kk, vv): (&[f32], &[f32]) = if blk.kv.is_some() {
            (&ba.k, &ba.v)
        } else {
            (&ba.h1, &ba.h1)
        };
        let heads = c.heads;
        let dh = dh_;
        let grads = par::map_indexed(b * ka * heads, |task| {
            let (s, rest) = (task / (ka * heads), task % (ka * heads));
            let (slot, hh) = (rest / heads, rest % heads);
            let mut bufs: [Vec<f32>; 4] = core::array::from_fn(|_| vec![0f32; t * dh]);
            for i in 0..t {
                let tok = s * t + i;
                let pr = tok * ka + slot;
                let (qo, ko) = (pr * da + hh * dh, tok * da + hh * dh);
                bufs[0][i * dh..(i + 1) * dh].copy_from_slice(&ba.q[qo..qo + dh]);
                bufs[1][i * dh..(i + 1) * dh].copy_from_slice(&kk[ko..ko + dh]);
                bufs[2][i * dh..(i + 1) * dh].copy_from_slice(&vv[ko..ko + dh]);
                bufs[3][i * dh..(i + 1) * dh].copy_from_slice(&dobuf[qo..qo + dh]);
            }
            let [qh, kh, vh, doh] = bufs;
            let mut g: [Vec<f32>; 3] = core::array::from_fn(|_| vec![0f32; t * dh]);
            let [dq, dk, dv] = &mut g;
            stickbreak_backward(&doh, &qh, &kh, &vh, t, dh, scale, dq, dk, dv).map(|()| g)
        });
        let mut dq = vec![0f32; n * ka * da];
        let (mut dk, mut dv) = (vec![0f32; n * da], vec![0f32; n * da]);
        for (task, g) in grads.into_iter().enumerate() {
            let [gq, gk, gv] = g?;
            let (s, rest) = (task / (ka * heads), task % (ka * heads));
            let (slot, hh) = (rest / heads, rest % heads);
            for i in 0..t {
                let tok = s * t + i;
                let pr = tok * ka + slot;
                let (qo, ko) = (pr * da + hh * dh, tok * da + hh * dh);
                dq[qo..qo + dh].copy_from_slice(&gq[i * dh..(i + 1) * dh]);
                add(&mut dk[ko..ko + dh], &gk[i * dh..(i + 1) * dh]);
                add(&mut dv[ko..ko + dh], &gv[i * dh..(i + 1) * dh]);
            }
        }
        {
            let p = &mut *p;
            let rq = p.specs()[blk.q_exps].range.clone();
            let vals = &p.values;
            let res = per_expert(&ba.r1.disp, ea, |e, pairs| {
                let m = pairs.len();
                let dqe = gather(&dq, da, pairs, 1);
                let xe = gather(&ba.h1, d, pairs, ka);
                let mut dxe = vec![0f32; m * d];
                let wq = &vals[rq.start + e * da * d..rq.start + (e + 1) * da * d];
                let mut gq = vec![0f32; da * d];
                linear_backward(&dqe, &xe, wq, m, da, d, Some(&mut dxe), &mut gq, None)?;
                Ok((dxe, gq))
            })?;
            for (e, r) in res.iter().enumerate() {
                let Some((dxe, gq)) = r else { continue };
                add(
                    &mut p.grads[rq.start + e * da * d..rq.start + (e + 1) * da * d],
                    gq,
                );
                scatter_add(&mut dh1, d, ba.r1.disp.pairs(e), ka, dxe);
            }
            match blk.kv {
                Some((kw, kb, vw, vb)) => {
                    for (wi, bi, g) in [(kw, kb, &dk), (vw, vb, &dv)] {
                        let mut db = vec![0f32; da];
                        let (w, gw) = p.value_grad(wi, wi);
                        linear_backward(g, &ba.h1, w, n, da, d, Some(&mut dh1), gw, Some(&mut db))?;
                        add(p.grad_mut(bi), &db);
                    }
                }
                None => {
                    add(&mut dh1, &dk);
                    add(&mut dh1, &dv);
                }
            }
        }
        ln_backward(&c, p, &dh1, x_in, blk.ln1_g, blk.ln1_b, &ba.ln1, n, dx);
        Ok(())
    }
}

impl StackLayer for MfMixture<true> {
    fn forward(
        &self,
        p: &ParamStore,
        r: Rows,
        run: &Run<'_>,
        x: &mut [f32],
    ) -> Result<Saved, Error> {
        let mut ba = self.begin(r, run, x)?;
        let (c, blk, experts) = (self.cfg, self.blk, ba.experts);
        let (b, t) = (r.b, r.t);
        let n = b * t;
        let (d, df) = (c.d, c.ffn_hidden);
        let ln = |x: &[f32], g: usize, bb: usize| ln_rows(p, x, n, d, g, bb);
        // ---- mixture of FFN experts
        let (h2, st2) = ln(x, blk.ln2_g, blk.ln2_b)?;
        let (ef, kf) = (experts.1, c.ffn_k);
        let r2 = mixture_route(
            &c,
            p,
            run,
            2 * self.block + 1,
            blk.ffn_router,
            &h2,
            n,
            ef,
            kf,
        )?;
        let mut u = vec![0f32; n * kf * df];
        let mut act = vec![0f32; n * kf * df];
        let mut yf = vec![0f32; n * kf * d];
        let (wu, wd) = (p.value(blk.up_exps), p.value(blk.down_exps));
        let outs = per_expert(&r2.disp, ef, |e, pairs| {
            let m = pairs.len();
            let xe = gather(&h2, d, pairs, kf);
            let mut ue = vec![0f32; m * df];
            let w = &wu[e * df * d..(e + 1) * df * d];
            linear_forward(&xe, m, w, None, df, d, &mut ue)?;
            let mut ae = ue.clone();
            activation_forward(Activation::GeluTanh, &mut ae);
            let mut ye = vec![0f32; m * d];
            let w = MatRef::f32(&wd[e * df * d..(e + 1) * df * d], df, d)?;
            matmul_rows(&ae, df, m, &w, &mut ye, d, false)?;
            Ok((ue, ae, ye))
        })?;
        for (e, out) in outs.iter().enumerate() {
            if let Some((ue, ae, ye)) = out {
                let pairs = r2.disp.pairs(e);
                scatter_rows(&mut u, df, pairs, ue);
                scatter_rows(&mut act, df, pairs, ae);
                scatter_rows(&mut yf, d, pairs, ye);
            }
        }
        add_gated(x, &yf, &r2.gates, d, kf);
        ba.h2 = h2;
        ba.ln2 = st2;
        ba.r2 = r2;
        ba.u = u;
        ba.act = act;
        ba.yf = yf;
        Ok(Saved::Mf(Box::new(ba)))
    }

    fn backward(
        &self,
        p: &mut ParamStore,
        r: Rows,
        saved: &Saved,
        x_in: &[f32],
        dx: &mut [f32],
        g: Grads,
    ) -> Result<(), Error> {
        let ba = self.saved(r, saved, x_in, dx, g)?;
        let (c, blk) = (self.cfg, self.blk);
        let (b, t) = (r.b, r.t);
        let n = b * t;
        let (d, df) = (c.d, c.ffn_hidden);
        // ---- FFN mixture: x_out = x_mid + Σ g·yf
        let (ef, kf) = (ba.experts.1, c.ffn_k);
        let mut dh2 = vec![0f32; n * d];
        mixture_router_backward(
            &c,
            p,
            blk.ffn_router,
            &ba.r2,
            &ba.h2,
            dx,
            &ba.yf,
            n,
            ef,
            kf,
            g.aux_scale,
            &mut dh2,
        )?;
        {
            let p = &mut *p;
            let ru = p.specs()[blk.up_exps].range.clone();
            let rd = p.specs()[blk.down_exps].range.clone();
            let vals = &p.values;
            let res = per_expert(&ba.r2.disp, ef, |e, pairs| {
                let m = pairs.len();
                let dye = gated_rows(dx, d, pairs, kf, &ba.r2.gates);
                let ae = gather(&ba.act, df, pairs, 1);
                let ue = gather(&ba.u, df, pairs, 1);
                let xe = gather(&ba.h2, d, pairs, kf);
                let wd = &vals[rd.start + e * df * d..rd.start + (e + 1) * df * d];
                let mut dae = vec![0f32; m * df];
                let wdm = MatRef::f32(wd, df, d)?;
                linear(&dye, d, m, &wdm, None, &mut dae, df)?;
                let mut gd = vec![0f32; df * d];
                matmul_tn_acc(&ae, &dye, m, df, d, &mut gd)?;
                let mut due = vec![0f32; m * df];
                activation_backward(Activation::GeluTanh, &dae, &ue, &mut due);
                let mut dxe = vec![0f32; m * d];
                let wu = &vals[ru.start + e * df * d..ru.start + (e + 1) * df * d];
                let mut gu = vec![0f32; df * d];
                linear_backward(&due, &xe, wu, m, df, d, Some(&mut dxe), &mut gu, None)?;
                Ok((dxe, gu, gd))
            })?;
            for (e, r) in res.iter().enumerate() {
                let Some((dxe, gu, gd)) = r else { continue };
                add(
                    &mut p.grads[ru.start + e * df * d..ru.start + (e + 1) * df * d],
                    gu,
                );
                add(
                    &mut p.grads[rd.start + e * df * d..rd.start + (e + 1) * df * d],
                    gd,
                );
                scatter_add(&mut dh2, d, ba.r2.disp.pairs(e), kf, dxe);
            }
        }
        ln_backward(&c, p, &dh2, x_in, blk.ln2_g, blk.ln2_b, &ba.ln2, n, dx);
        Ok(())
    }
}

/// Three disjoint mutable ranges of `v` (in increasing order `a < b < c` or any order).
fn split3(
    v: &mut [f32],
    a: std::ops::Range<usize>,
    b: std::ops::Range<usize>,
    c: std::ops::Range<usize>,
) -> ((&mut [f32], &mut [f32]), &mut [f32]) {
    // the table lays a router out as hid.weight, hid.bias, out.weight: a < b < c
    debug_assert!(a.end <= b.start && b.end <= c.start);
    let (lo, rest) = v.split_at_mut(b.start);
    let (mid, hi) = rest.split_at_mut(c.start - b.start);
    (
        (&mut lo[a], &mut mid[..b.end - b.start]),
        &mut hi[..c.end - c.start],
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::gradcheck::{check_grad, GradCheck};

    fn check_model(name: &str, cfg: MfConfig) {
        let (b, t) = (2, 5);
        let tokens: Vec<u32> = (0..b * t).map(|i| (i * 7 % 11) as u32).collect();
        let mut targets: Vec<u32> = (0..b * t).map(|i| ((i * 3 + 1) % 11) as u32).collect();
        targets[4] = crate::layers::loss::IGNORE;
        let mut m = MfModel::new(cfg, 3).unwrap();
        let mut r = SplitMix64(9);
        for v in m.params.values.iter_mut() {
            *v += 0.3 * (2.0 * r.next_f32() - 1.0);
        }
        let (_, acts, dl) = m.forward(&tokens, &targets, b, t).unwrap();
        m.params.zero_grads();
        m.backward(&tokens, &acts, &dl, 1.0).unwrap();
        let grads = m.params.grads.clone();
        let mut values = m.params.values.clone();
        let mut probe = m.clone();
        probe.forced = Some(acts.selections().iter().map(|s| s.to_vec()).collect());
        let f = |v: &[f32]| {
            let mut mm = probe.clone();
            mm.params.values.copy_from_slice(v);
            // top-k selection is piecewise constant (no gradient): the perturbed forwards
            // keep the unperturbed choices
            let (l, a, _) = mm.forward(&tokens, &targets, b, t).unwrap();
            l + a.aux
        };
        let gc = GradCheck {
            eps: 3e-3,
            tol: 1e-2,
            floor: 1e-2,
        };
        check_grad(name, &mut values, &grads, f, gc).unwrap();
        // and one wrong element (in block 1's FFN router input norm) is caught
        let range = m.params.specs()[m.params.index_of("blk.1.ffn_norm.weight").unwrap()]
            .range
            .clone();
        let mut bad = grads[range.clone()].to_vec();
        bad[1] += 0.05;
        let mut sub = values[range.clone()].to_vec();
        let g = |v: &[f32]| {
            let mut all = values.clone();
            all[range.clone()].copy_from_slice(v);
            f(&all)
        };
        assert!(check_grad(name, &mut sub, &bad, g, gc).is_err());
    }

    #[test]
    fn whole_model_gradients_match_finite_differences() {
        let base = MfConfig {
            vocab: 11,
            d: 8,
            layers: 2,
            att_experts: 4,
            att_k: 2,
            att_hidden: 8,
            heads: 1,
            kv_proj: false,
            ffn_experts: 3,
            ffn_k: 2,
            ffn_hidden: 6,
            router_hidden: 5,
            renormalize: false,
            aux_mi: 0.5,
            aux_lc: 0.0,
            nested_experts: [0; 8],
        };
        check_model("MoLM-style (K = V = LN1(x), MLP routers, MI loss)", base);
        check_model(
            "projected K/V, 2 heads, linear routers, renormalised, MI + LC",
            MfConfig {
                kv_proj: true,
                heads: 2,
                att_hidden: 6,
                router_hidden: 0,
                renormalize: true,
                aux_lc: 0.3,
                ..base
            },
        );
    }

    #[test]
    fn nested_experts_gradients_match_and_touch_only_the_prefix() {
        // SortedNet along experts: the first 3 of 4 attention and 2 of 3 FFN experts
        let cfg = MfConfig {
            vocab: 11,
            d: 8,
            layers: 1,
            att_experts: 4,
            att_k: 2,
            att_hidden: 8,
            heads: 1,
            kv_proj: false,
            ffn_experts: 3,
            ffn_k: 2,
            ffn_hidden: 6,
            router_hidden: 5,
            renormalize: false,
            aux_mi: 0.5,
            aux_lc: 0.0,
            nested_experts: [0; 8],
        };
        let (b, t) = (2, 5);
        let tokens: Vec<u32> = (0..b * t).map(|i| (i * 7 % 11) as u32).collect();
        let targets: Vec<u32> = (0..b * t).map(|i| ((i * 3 + 1) % 11) as u32).collect();
        let mut m = MfModel::new(cfg, 3).unwrap();
        let mut r = SplitMix64(9);
        m.params
            .values
            .iter_mut()
            .for_each(|v| *v += 0.3 * (2.0 * r.next_f32() - 1.0));
        m.nested = Some((3, 2));
        let (_, acts, dl) = m.forward(&tokens, &targets, b, t).unwrap();
        assert!(acts.selections()[0].iter().all(|&e| e < 3));
        assert!(acts.selections()[1].iter().all(|&e| e < 2));
        m.params.zero_grads();
        m.backward(&tokens, &acts, &dl, 1.0).unwrap();
        for (i, s) in m.params.specs().iter().enumerate() {
            let g = m.params.grad(i);
            let (total, used) = if s.name.contains("attn_")
                && (s.name.contains("_exps") || s.name.ends_with("attn_router.weight"))
            {
                (4, 3)
            } else if s.name.contains("ffn_")
                && (s.name.contains("_exps") || s.name.ends_with("ffn_router.weight"))
            {
                (3, 2)
            } else {
                (1, 1)
            };
            let cut = g.len() / total * used;
            assert!(
                g[cut..].iter().all(|&v| v == 0.0),
                "{} has gradient past the prefix",
                s.name
            );
        }
        let grads = m.params.grads.clone();
        let mut values = m.params.values.clone();
        let mut probe = m.clone();
        probe.forced = Some(acts.selections().iter().map(|s| s.to_vec()).collect());
        let f = |v: &[f32]| {
            let mut mm = probe.clone();
            mm.params.values.copy_from_slice(v);
            let (l, a, _) = mm.forward(&tokens, &targets, b, t).unwrap();
            l + a.aux
        };
        let gc = GradCheck {
            eps: 3e-3,
            tol: 1e-2,
            floor: 1e-2,
        };
        check_grad("nested experts", &mut values, &grads, f, gc).unwrap();
        m.nested = Some((1, 2));
        assert!(
            m.forward(&tokens, &targets, b, t).is_err(),
            "fewer experts than top-k"
        );
        let c = MfConfig::lm(11, 8, 1, 4, 6)
            .with_nested_experts(&[2])
            .unwrap();
        assert_eq!(c.nested_expert_list(), vec![2, 4]);
        assert!(MfConfig::lm(11, 8, 1, 4, 6)
            .with_nested_experts(&[1])
            .is_err());
    }

    #[test]
    fn relabelling_experts_changes_nothing() {
        // Swap experts 0 and 2 of every mixture (their weights and router output rows):
        // the function is the same, so the loss must be too — this exercises dispatch,
        // gather/scatter and gating with k = E (every expert on every token) and k < E.
        for (ka, kf) in [(3, 2), (1, 1)] {
            let cfg = MfConfig {
                att_k: ka,
                att_experts: 3,
                ffn_k: kf,
                ffn_experts: 3,
                ..MfConfig::lm(11, 8, 2, 3, 6)
            };
            let mut m = MfModel::new(cfg, 1).unwrap();
            let mut r = SplitMix64(4);
            m.params
                .values
                .iter_mut()
                .for_each(|v| *v += 0.2 * (2.0 * r.next_f32() - 1.0));
            let tokens = [1u32, 2, 3, 4, 5, 6];
            let targets = [2u32, 3, 4, 5, 6, 7];
            let (l0, a0, _) = m.forward(&tokens, &targets, 2, 3).unwrap();
            let mut sw = m.clone();
            let specs = sw.params.specs().to_vec();
            for s in &specs {
                let rows_per = if s.name.contains("_exps") {
                    s.shape[1] * s.shape[2]
                } else if s.name.ends_with("router.weight") {
                    s.shape[1]
                } else {
                    continue;
                };
                let v = &mut sw.params.values[s.range.clone()];
                for i in 0..rows_per {
                    v.swap(i, 2 * rows_per + i);
                }
            }
            let (l1, a1, _) = sw.forward(&tokens, &targets, 2, 3).unwrap();
            assert!((l0 - l1).abs() < 1e-5, "{l0} vs {l1}");
            assert!((a0.aux - a1.aux).abs() < 1e-6);
            let counts0 = a0.expert_counts();
            let counts1 = a1.expert_counts();
            for (c0, c1) in counts0.iter().zip(&counts1) {
                assert_eq!((c0[0], c0[1], c0[2]), (c1[2], c1[1], c1[0]));
            }
            if ka == 3 {
                assert!(
                    counts0[0].iter().all(|&c| c == 6),
                    "k = E routes every token"
                );
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let mut c = MfConfig::lm(11, 8, 1, 4, 6);
        c.att_k = 5;
        assert!(MfModel::new(c, 1)
            .unwrap_err()
            .to_string()
            .contains("top-k"));
        let c = MfConfig {
            att_hidden: 6,
            ..MfConfig::lm(11, 8, 1, 4, 6)
        };
        assert!(MfModel::new(c, 1)
            .unwrap_err()
            .to_string()
            .contains("K = V"));
        let m = MfModel::new(MfConfig::lm(11, 8, 1, 4, 6), 1).unwrap();
        assert!(m
            .forward(&[1, 99], &[1, 2], 1, 2)
            .unwrap_err()
            .to_string()
            .contains("vocabulary"));
        assert!(m.forward(&[1], &[1, 2], 1, 2).is_err());
    }
}
