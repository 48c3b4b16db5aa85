//! SeqBoat (Sparse Modular Activation, spec `spec_seqboat_sortednet.md` Part A) for
//! training: per layer a multi-dimensional damped EMA over all tokens, a per-token 2-way
//! tempered-softmax gate, and a single-head Gated Attention Unit that runs only on the
//! activated tokens, gathered into a shorter sequence, with a band of `w` in that
//! compressed index and a relative-position bias on the original positions.
//!
//! ```text
//! x̃ = prenorm ? LN(x) : x;  x̃[pad] = 0
//! m = silu(EMA(x̃) + ω⊙x̃);  [u, c] = W_u m + b_u
//! π = softmax((u + [b_act, 0]) / e^θ);  act = u₁ > u₀ + b_act;  g = act ? π₁ : 0
//! P = activated positions;  [Z, R, V] = silu(W_m m[P] + b_m);  Q = Z⊙κ_q+μ_q, K = Z⊙κ_k+μ_k
//! s_kj = ⟨Q_k, K_j⟩·α + b[M−1 + clamp(P_j − P_k)] over the band;  A = softmax(s) | relu(s)²
//! H = W_h ((A V) ⊙ R) + b_h;  G[P] = g[P]·H
//! out = silu(c + G + x);  postnorm ? LN(out) : out
//! ```
//!
//! Backward follows spec A5 exactly: the gate gradient flows only through the chosen
//! probability on activated tokens (no straight-through estimate), the log-temperature
//! included. Sequences are independent (each its own compression), one task per sequence
//! for the scans and the attention; the projections are single matrix products over all
//! (activated) rows of the batch.

use super::dense::{normal, Input};
use crate::layers::activation::derivative;
use crate::layers::ema::{ema_scan_backward, ema_scan_forward, EmaCoef, EmaCoefGrad};
use crate::layers::linear::{linear_backward, linear_forward};
use crate::layers::loss::cross_entropy;
use crate::layers::norm::{layernorm_backward, layernorm_forward};
use crate::params::{ParamStore, ParamTable};
use crate::stack::{Grads, Layer as StackLayer, Rows, Run, Saved, Stack, StackSaved, Sublayer};
use modula_core::kernels::elementwise::{gelu1, silu1};
use modula_core::kernels::expert_ffn::Activation;
use modula_core::kernels::par;
use modula_core::rng::SplitMix64;
use modula_core::Error;

/// LayerNorm epsilon (every SeqBoat norm uses 1e-5, spec A8).
pub const LN_EPS: f32 = 1e-5;

/// The attention function of the GAU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SbAttn {
    /// `softmax(QKᵀ/√z + bias)` over the band.
    Softmax,
    /// `relu(QKᵀ/ℓ + bias)²`, `ℓ = 2w` (bidirectional) or `w` (causal), a constant.
    Relu2,
}

/// What decides which tokens run the GAU (the arms of spec C1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SbGate {
    /// SeqBoat: the learned tempered-softmax gate.
    Learned,
    /// Every (non-pad) token runs the GAU with gate value 1: with `w = 0` dense attention,
    /// with `w > 0` a local window in original positions (MEGA-chunk analogue).
    AlwaysOn,
    /// No token runs the GAU: the EMA path alone.
    Off,
}

impl SbGate {
    /// Name on the command line and in model files.
    pub fn name(self) -> &'static str {
        match self {
            SbGate::Learned => "learned",
            SbGate::AlwaysOn => "always",
            SbGate::Off => "off",
        }
    }

    /// Parse [`SbGate::name`].
    pub fn parse(s: &str) -> Result<Self, Error> {
        match s {
            "learned" => Ok(SbGate::Learned),
            "always" => Ok(SbGate::AlwaysOn),
            "off" => Ok(SbGate::Off),
            _ => Err(Error::input(format!(
                "unknown gate '{s}' (learned | always | off)"
            ))),
        }
    }
}

/// Shape and options of a SeqBoat model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SbConfig {
    /// Token vocabulary.
    pub vocab: usize,
    /// Classes of a sequence classifier (mean pooling over non-pad tokens, then
    /// `Linear(d→2d)`, GELU, `Linear(2d→classes)`); 0 for a causal LM with the embedding
    /// tied to the output (embedding scaled by √d).
    pub classes: usize,
    /// Model width `d`.
    pub d: usize,
    /// SeqBoat layers.
    pub layers: usize,
    /// EMA expansion `N`.
    pub ndim: usize,
    /// Shared Q/K width `z`.
    pub z: usize,
    /// Value/gate width `e`.
    pub e: usize,
    /// Working-memory window `w` in compressed (activated-token) index; 0: no band (every
    /// activated token of the sequence).
    pub window: usize,
    /// Causal (one EMA direction, band to the left) or bidirectional.
    pub causal: bool,
    /// Attention function.
    pub attn: SbAttn,
    /// LayerNorm before the layer (and a final norm) or after it.
    pub prenorm: bool,
    /// `init_temp_scale` `s`: the log-temperature starts at `ln(s·√d)`.
    pub temp_scale: f32,
    /// `M` of the relative-position bias (offsets clamped to `±(M−1)`).
    pub max_pos: usize,
    /// Gate mode.
    pub gate: SbGate,
    /// Padding token: zeroed before the EMA, never activated, not pooled.
    pub pad: Option<u32>,
    /// SortedNet: nested depths (bit `l − 1` = the first `l` layers, then the head; 0 =
    /// none). The full depth is always a size.
    pub nested_depths: u64,
}

impl SbConfig {
    /// The ListOps-mini model of spec C1a: `d = 64, z = 32, e = 128, N = 8, w = 16`,
    /// bidirectional, softmax, post-LN, τ-scale 0.3.
    pub fn listops_mini(vocab: usize, classes: usize, layers: usize) -> Self {
        SbConfig {
            vocab,
            classes,
            d: 64,
            layers,
            ndim: 8,
            z: 32,
            e: 128,
            window: 16,
            causal: false,
            attn: SbAttn::Softmax,
            prenorm: false,
            temp_scale: 0.3,
            max_pos: 2002,
            gate: SbGate::Learned,
            pad: Some(0),
            nested_depths: 0,
        }
    }

    /// A causal byte/token LM (pre-LN, softmax, τ-scale 1).
    pub fn lm(vocab: usize, d: usize, layers: usize, window: usize) -> Self {
        SbConfig {
            vocab,
            classes: 0,
            d,
            layers,
            ndim: 16,
            z: (d / 2).max(1),
            e: 2 * d,
            window,
            causal: true,
            attn: SbAttn::Softmax,
            prenorm: true,
            temp_scale: 1.0,
            max_pos: 2048,
            gate: SbGate::Learned,
            pad: None,
            nested_depths: 0,
        }
    }

    /// Check the shape.
    pub fn validate(&self) -> Result<(), Error> {
        let c = self;
        if c.vocab == 0 || c.d == 0 || c.layers == 0 || c.ndim == 0 || c.z == 0 || c.e == 0 {
            return Err(Error::input(
                "vocab, d, layers, ndim, z and e must be at least 1",
            ));
        }
        if c.max_pos == 0 || c.max_pos > 1 << 20 {
            return Err(Error::input(format!(
                "max_pos {} must be in 1..=2^20",
                c.max_pos
            )));
        }
        if !(c.temp_scale.is_finite() && c.temp_scale > 0.0) {
            return Err(Error::input(format!(
                "temp_scale {} must be positive",
                c.temp_scale
            )));
        }
        if c.classes == 0 && !c.causal {
            return Err(Error::input(
                "a language model (classes = 0) must be causal",
            ));
        }
        if c.layers < 64 && c.nested_depths >> (c.layers - 1) != 0 {
            return Err(Error::input(format!(
                "nested depths beyond the {} layers",
                c.layers
            )));
        }
        if let Some(p) = c.pad {
            if p as usize >= c.vocab {
                return Err(Error::input(format!(
                    "pad token {p} is outside the vocabulary"
                )));
            }
        }
        let big = [c.vocab, c.d, c.z, c.e, c.ndim, c.layers, c.window];
        if big.iter().any(|&v| v > 1 << 24) {
            return Err(Error::input("a dimension is implausibly large"));
        }
        Ok(())
    }

    /// The nested depths, ascending, ending with the full depth.
    pub fn nested_depth_list(&self) -> Vec<usize> {
        let mut v: Vec<usize> = (1..self.layers.min(65))
            .filter(|&l| self.nested_depths >> (l - 1) & 1 == 1)
            .collect();
        v.push(self.layers);
        v
    }

    /// Set the nested depths (the full depth is implied), checking them.
    pub fn with_nested_depths(mut self, depths: &[usize]) -> Result<Self, Error> {
        self.nested_depths = 0;
        for &l in depths {
            if l == 0 || l > self.layers || l > 64 {
                return Err(Error::input(format!(
                    "nested depth {l} is outside 1..={}",
                    self.layers
                )));
            }
            if l < self.layers {
                self.nested_depths |= 1 << (l - 1);
            }
        }
        Ok(self)
    }

    /// Logits per row (classes, or the vocabulary of an LM).
    pub fn outputs(&self) -> usize {
        if self.classes > 0 {
            self.classes
        } else {
            self.vocab
        }
    }

    /// EMA parameter rows: `d` (causal) or `2d` (two directions).
    pub fn ema_rows(&self) -> usize {
        if self.causal {
            self.d
        } else {
            2 * self.d
        }
    }

    /// Score scale `α`: `1/√z` (softmax) or `1/ℓ` (relu², `ℓ = 2w` or `w`; `M` without a
    /// band).
    pub fn score_scale(&self) -> f32 {
        match self.attn {
            SbAttn::Softmax => 1.0 / (self.z as f32).sqrt(),
            SbAttn::Relu2 => {
                let l = if self.window == 0 {
                    self.max_pos
                } else if self.causal {
                    self.window
                } else {
                    2 * self.window
                };
                1.0 / l as f32
            }
        }
    }

    /// Keys of compressed query `k` among `lc` activated tokens (inclusive range).
    pub fn band(&self, k: usize, lc: usize) -> (usize, usize) {
        let w = self.window;
        let lo = if w == 0 { 0 } else { k.saturating_sub(w) };
        let hi = if self.causal {
            k
        } else if w == 0 {
            lc - 1
        } else {
            (k + w).min(lc - 1)
        };
        (lo, hi)
    }

    /// Index of the relative bias for key position `pj` seen from query position `pk`.
    pub fn bias_index(&self, pk: usize, pj: usize) -> usize {
        let m = self.max_pos as i64 - 1;
        let off = (pj as i64 - pk as i64).clamp(-m, m);
        (m + off) as usize
    }
}

/// Parameter indices of one layer.
#[derive(Clone, Copy, Debug)]
pub struct SbIdx {
    norm_g: usize,
    norm_b: usize,
    delta: usize,
    ahat: usize,
    beta: usize,
    eta: usize,
    omega: usize,
    gate_w: usize,
    gate_b: usize,
    log_temp: usize,
    in_w: usize,
    in_b: usize,
    qk_scale: usize,
    qk_offset: usize,
    rel: usize,
    out_w: usize,
    out_b: usize,
}

/// A SeqBoat model with its parameters.
#[derive(Clone, Debug)]
pub struct SbModel {
    /// Shape.
    pub cfg: SbConfig,
    /// Parameters.
    pub params: ParamStore,
    layers: Vec<SbIdx>,
    /// The layers as the trainer's block stack (one SeqBoat sub-layer per block).
    stack: Stack,
    embd: usize,
    final_norm: Option<(usize, usize)>,
    cls: Option<(usize, usize, usize)>,
    /// Inference-time bias towards "skip" (`b_act`, 0 in training).
    pub act_bias: f32,
    /// Test hook: per layer, the activation decision of every row (overrides the gate's
    /// decision; the gate value is still the computed π₁).
    pub forced: Option<Vec<Vec<bool>>>,
    /// SortedNet: run only the first this many layers (then the final norm and the head);
    /// `None`: all.
    pub depth: Option<usize>,
}

/// What one layer's forward keeps.
#[derive(Clone, Debug, Default)]
pub struct LayerActs {
    act_bias: f32,
    keep: Vec<bool>,
    ln_mean: Vec<f32>,
    ln_rstd: Vec<f32>,
    xs: Vec<f32>,
    hs: Vec<f32>,
    hs_rev: Vec<f32>,
    y: Vec<f32>,
    m: Vec<f32>,
    uc: Vec<f32>,
    act: Vec<bool>,
    pi1: Vec<f32>,
    gate: Vec<f32>,
    rows: Vec<u32>,
    seq_off: Vec<usize>,
    zrv_pre: Vec<f32>,
    zrv: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    att: Vec<Vec<f32>>,
    scores: Vec<Vec<f32>>,
    o: Vec<f32>,
    or: Vec<f32>,
    h: Vec<f32>,
    pre: Vec<f32>,
    out: Vec<f32>,
}

/// What the forward keeps for the backward.
#[derive(Clone, Debug, Default)]
pub struct SbActivations {
    b: usize,
    t: usize,
    blocks: StackSaved,
    last: Vec<f32>,
    lnf_mean: Vec<f32>,
    lnf_rstd: Vec<f32>,
    feats: Vec<f32>,
    pooled: Vec<f32>,
    cls_pre: Vec<f32>,
    cls_hidden: Vec<f32>,
    keep: Vec<bool>,
    logits: Vec<f32>,
}

impl SbActivations {
    /// Each layer's saved state, in order.
    fn layers(&self) -> impl Iterator<Item = &LayerActs> {
        self.blocks.saved.iter().filter_map(|s| match s {
            Saved::SeqBoat(l) => Some(&**l),
            _ => None,
        })
    }

    /// The logits: `[b·t, vocab]` (LM) or `[b, classes]`.
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    /// Per layer: activated tokens / non-pad tokens.
    pub fn activation_ratio(&self) -> Vec<f32> {
        let real = self.keep.iter().filter(|&&k| k).count().max(1);
        self.layers()
            .map(|l| l.rows.len() as f32 / real as f32)
            .collect()
    }

    /// Per layer: the mean original-position distance between an activated query and the
    /// keys of its compressed band (the "attention span"; 0 where nothing is activated).
    pub fn mean_span(&self, cfg: &SbConfig) -> Vec<f32> {
        self.layers()
            .map(|l| {
                let (mut sum, mut cnt) = (0f64, 0usize);
                for s in 0..self.b {
                    let rows = &l.rows[l.seq_off[s]..l.seq_off[s + 1]];
                    for k in 0..rows.len() {
                        let (lo, hi) = cfg.band(k, rows.len());
                        for j in lo..=hi {
                            sum += (rows[j] as i64 - rows[k] as i64).unsigned_abs() as f64;
                            cnt += 1;
                        }
                    }
                }
                if cnt == 0 {
                    0.0
                } else {
                    (sum / cnt as f64) as f32
                }
            })
            .collect()
    }
}

/// A LayerNorm's output and its saved mean and 1/std per row.
type Normed = (Vec<f32>, Vec<f32>, Vec<f32>);

/// LayerNorm of `rows` rows.
fn ln_rows(x: &[f32], rows: usize, d: usize, g: &[f32], b: &[f32]) -> Result<Normed, Error> {
    let mut y = vec![0f32; rows * d];
    let (mut mean, mut rstd) = (vec![0f32; rows], vec![0f32; rows]);
    layernorm_forward(x, rows, d, g, b, LN_EPS, &mut y, &mut mean, &mut rstd)?;
    Ok((y, mean, rstd))
}

fn silu_grad(u: f32) -> f32 {
    derivative(Activation::Silu, u)
}

fn trunc_normal(rng: &mut SplitMix64, std: f32) -> f32 {
    loop {
        let v = normal(rng);
        if v.abs() <= 2.0 {
            return v * std;
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Per-sequence attention result.
struct SeqAtt {
    att: Vec<Vec<f32>>,
    scores: Vec<Vec<f32>>,
    o: Vec<f32>,
}

/// Per-sequence attention gradients.
struct SeqAttGrad {
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    drel: Vec<(usize, f32)>,
}

impl SbModel {
    /// A freshly initialised model (spec A2 initialisation: truncated normals).
    pub fn new(cfg: SbConfig, seed: u64) -> Result<Self, Error> {
        cfg.validate()?;
        let c = cfg;
        let (d, n) = (c.d, c.ndim);
        let mut t = ParamTable::new();
        let embd = t.add("token_embd.weight", &[c.vocab, d], true)?;
        let mut layers = Vec::new();
        for i in 0..c.layers {
            let p = |s: &str| format!("blk.{i}.{s}");
            let er = c.ema_rows();
            layers.push(SbIdx {
                norm_g: t.add(&p("norm.weight"), &[d], false)?,
                norm_b: t.add(&p("norm.bias"), &[d], false)?,
                delta: t.add(&p("ema.delta"), &[er, n], false)?,
                ahat: t.add(&p("ema.alpha"), &[er, n], false)?,
                beta: t.add(&p("ema.beta"), &[er, n], false)?,
                eta: t.add(&p("ema.gamma"), &[er, n], false)?,
                omega: t.add(&p("ema.omega"), &[d], false)?,
                gate_w: t.add(&p("gate.weight"), &[2 + d, d], true)?,
                gate_b: t.add(&p("gate.bias"), &[2 + d], false)?,
                log_temp: t.add(&p("gate.log_temp"), &[1], false)?,
                in_w: t.add(&p("gau_in.weight"), &[c.z + 2 * c.e, d], true)?,
                in_b: t.add(&p("gau_in.bias"), &[c.z + 2 * c.e], false)?,
                qk_scale: t.add(&p("gau_qk.scale"), &[2, c.z], false)?,
                qk_offset: t.add(&p("gau_qk.offset"), &[2, c.z], false)?,
                rel: t.add(&p("gau_rel_bias"), &[2 * c.max_pos - 1], false)?,
                out_w: t.add(&p("gau_out.weight"), &[d, c.e], true)?,
                out_b: t.add(&p("gau_out.bias"), &[d], false)?,
            });
        }
        let final_norm = if c.prenorm {
            Some((
                t.add("output_norm.weight", &[d], false)?,
                t.add("output_norm.bias", &[d], false)?,
            ))
        } else {
            None
        };
        let cls = if c.classes > 0 {
            Some((
                t.add("cls.0.weight", &[2 * d, d], true)?,
                t.add("cls.0.bias", &[2 * d], false)?,
                t.add("cls.1.weight", &[c.classes, 2 * d], true)?,
            ))
        } else {
            None
        };
        let stack = Stack {
            blocks: layers
                .iter()
                .enumerate()
                .map(|(block, &idx)| vec![Sublayer::SeqBoat(Box::new(SbLayer { cfg, idx, block }))])
                .collect(),
        };
        let mut m = SbModel {
            cfg,
            params: t.build(),
            layers,
            stack,
            embd,
            final_norm,
            cls,
            act_bias: 0.0,
            forced: None,
            depth: None,
        };
        let mut rng = SplitMix64(seed ^ 0x005e_b0a7);
        let p = &mut m.params;
        let std_e = 1.0 / (d as f32).sqrt();
        p.value_mut(embd)
            .iter_mut()
            .for_each(|v| *v = trunc_normal(&mut rng, std_e));
        for l in m.layers.clone() {
            p.value_mut(l.norm_g).fill(1.0);
            for (idx, std) in [(l.delta, 0.2), (l.ahat, 0.2), (l.eta, 1.0), (l.omega, 1.0)] {
                p.value_mut(idx)
                    .iter_mut()
                    .for_each(|v| *v = trunc_normal(&mut rng, std));
            }
            for (i, v) in p.value_mut(l.beta).iter_mut().enumerate() {
                let sign = if (i % n) % 2 == 0 { 1.0 } else { -1.0 };
                *v = sign + trunc_normal(&mut rng, 0.02);
            }
            for idx in [l.gate_w, l.in_w, l.out_w, l.qk_scale, l.rel] {
                p.value_mut(idx)
                    .iter_mut()
                    .for_each(|v| *v = trunc_normal(&mut rng, 0.02));
            }
            p.value_mut(l.log_temp)[0] = (c.temp_scale * (d as f32).sqrt()).ln();
        }
        if let Some((g, _)) = m.final_norm {
            p.value_mut(g).fill(1.0);
        }
        if let Some((w1, _, w2)) = m.cls {
            for idx in [w1, w2] {
                p.value_mut(idx)
                    .iter_mut()
                    .for_each(|v| *v = trunc_normal(&mut rng, 0.02));
            }
        }
        Ok(m)
    }

    /// Rebuild the index tables of a model whose parameter values come from elsewhere
    /// (a checkpoint); `params` must have exactly this configuration's tensors.
    pub fn from_params(cfg: SbConfig, params: ParamStore) -> Result<Self, Error> {
        let mut m = SbModel::new(cfg, 0)?;
        let want: Vec<_> = m
            .params
            .specs()
            .iter()
            .map(|s| (s.name.clone(), s.shape.clone()))
            .collect();
        let got: Vec<_> = params
            .specs()
            .iter()
            .map(|s| (s.name.clone(), s.shape.clone()))
            .collect();
        if want != got {
            return Err(Error::input(
                "the parameters do not match the SeqBoat configuration",
            ));
        }
        m.params = params;
        Ok(m)
    }

    /// Forward over `tokens: [b, t]` with `targets` (`[b·t]` for an LM, `[b]` for a
    /// classifier): returns the mean cross-entropy, the saved activations and ∂L/∂logits.
    pub fn forward(
        &self,
        tokens: &[u32],
        targets: &[u32],
        b: usize,
        t: usize,
    ) -> Result<(f64, SbActivations, Vec<f32>), Error> {
        let c = self.cfg;
        let rows = b * t;
        if tokens.len() != rows {
            return Err(Error::input(format!(
                "expected {rows} tokens ({b} x {t}), got {}",
                tokens.len()
            )));
        }
        let want_targets = if c.classes > 0 { b } else { rows };
        if targets.len() != want_targets {
            return Err(Error::input(format!(
                "expected {want_targets} targets, got {} ({})",
                targets.len(),
                if c.classes > 0 {
                    "one class per sequence"
                } else {
                    "one next token per position"
                }
            )));
        }
        if let Some(&bad) = tokens.iter().find(|&&x| x as usize >= c.vocab) {
            return Err(Error::input(format!(
                "token {bad} is outside the vocabulary of {}",
                c.vocab
            )));
        }
        let depth = self.depth.unwrap_or(c.layers);
        if depth == 0 || depth > c.layers {
            return Err(Error::input(format!(
                "depth {depth} is outside 1..={}",
                c.layers
            )));
        }
        if let Some(f) = &self.forced {
            if f.len() < depth || f.iter().any(|v| v.len() != rows) {
                return Err(Error::input("forced decisions must be [layers][b·t]"));
            }
        }
        let d = c.d;
        let p = &self.params;
        let mut a = SbActivations {
            b,
            t,
            keep: tokens.iter().map(|&x| Some(x) != c.pad).collect(),
            ..SbActivations::default()
        };
        let scale = if c.classes == 0 {
            (d as f32).sqrt()
        } else {
            1.0
        };
        let emb = p.value(self.embd);
        let mut x = vec![0f32; rows * d];
        for (r, &tok) in tokens.iter().enumerate() {
            let src = &emb[tok as usize * d..(tok as usize + 1) * d];
            for (o, s) in x[r * d..(r + 1) * d].iter_mut().zip(src) {
                *o = s * scale;
            }
        }
        let forced = self.forced.as_deref().unwrap_or(&[]);
        let run = Run {
            keep: &a.keep,
            act_bias: self.act_bias,
            forced_act: forced,
            ..Run::default()
        };
        a.blocks = self
            .stack
            .forward(p, Rows { b, t, d }, &run, depth, &mut x)?;
        // final norm (pre-norm models)
        let feats = if let Some((g, bb)) = self.final_norm {
            let (y, mean, rstd) = ln_rows(&x, rows, d, p.value(g), p.value(bb))?;
            (a.lnf_mean, a.lnf_rstd) = (mean, rstd);
            y
        } else {
            x.clone()
        };
        a.last = x;
        let out = c.outputs();
        if let Some((w1, b1, w2)) = self.cls {
            // mean over non-pad positions
            let mut pooled = vec![0f32; b * d];
            for s in 0..b {
                let cnt = (0..t).filter(|&i| a.keep[s * t + i]).count();
                if cnt == 0 {
                    return Err(Error::input(format!("sequence {s} is all padding")));
                }
                let inv = 1.0 / cnt as f32;
                for i in 0..t {
                    if a.keep[s * t + i] {
                        let r = &feats[(s * t + i) * d..(s * t + i + 1) * d];
                        for (o, v) in pooled[s * d..(s + 1) * d].iter_mut().zip(r) {
                            *o += v * inv;
                        }
                    }
                }
            }
            let mut pre = vec![0f32; b * 2 * d];
            linear_forward(
                &pooled,
                b,
                p.value(w1),
                Some(p.value(b1)),
                2 * d,
                d,
                &mut pre,
            )?;
            let hidden: Vec<f32> = pre.iter().map(|&v| gelu1(v)).collect();
            let mut logits = vec![0f32; b * out];
            linear_forward(&hidden, b, p.value(w2), None, out, 2 * d, &mut logits)?;
            a.pooled = pooled;
            a.cls_pre = pre;
            a.cls_hidden = hidden;
            a.logits = logits;
        } else {
            let mut logits = vec![0f32; rows * out];
            linear_forward(&feats, rows, emb, None, out, d, &mut logits)?;
            a.logits = logits;
        }
        a.feats = feats;
        let mut dlogits = vec![0f32; a.logits.len()];
        let loss = cross_entropy(&a.logits, targets, out, &mut dlogits)?;
        Ok((loss, a, dlogits))
    }

    /// Backward from ∂L/∂logits (already scaled by the caller), accumulating into the
    /// parameter gradients.
    pub fn backward(
        &mut self,
        tokens: &[u32],
        a: &SbActivations,
        dlogits: &[f32],
    ) -> Result<(), Error> {
        let c = self.cfg;
        let (b, t, d) = (a.b, a.t, c.d);
        let rows = b * t;
        let out = c.outputs();
        if dlogits.len() != a.logits.len() || tokens.len() != rows {
            return Err(Error::input(
                "backward: logits or tokens do not match the forward",
            ));
        }
        let mut dfeat = vec![0f32; rows * d];
        if let Some((w1, b1, w2)) = self.cls {
            let mut dhidden = vec![0f32; b * 2 * d];
            let (wv, gw) = self.params.value_grad(w2, w2);
            let wv = wv.to_vec();
            linear_backward(
                dlogits,
                &a.cls_hidden,
                &wv,
                b,
                out,
                2 * d,
                Some(&mut dhidden),
                gw,
                None,
            )?;
            let dpre: Vec<f32> = dhidden
                .iter()
                .zip(&a.cls_pre)
                .map(|(g, &u)| g * derivative(Activation::Gelu, u))
                .collect();
            let mut dpooled = vec![0f32; b * d];
            let w1v = self.params.value(w1).to_vec();
            linear_backward(
                &dpre,
                &a.pooled,
                &w1v,
                b,
                2 * d,
                d,
                Some(&mut dpooled),
                self.params.grad_mut(w1),
                None,
            )?;
            let gb = self.params.grad_mut(b1);
            for row in dpre.chunks_exact(2 * d) {
                for (g, v) in gb.iter_mut().zip(row) {
                    *g += v;
                }
            }
            for s in 0..b {
                let cnt = (0..t).filter(|&i| a.keep[s * t + i]).count().max(1);
                let inv = 1.0 / cnt as f32;
                for i in 0..t {
                    if a.keep[s * t + i] {
                        let r = s * t + i;
                        for j in 0..d {
                            dfeat[r * d + j] = dpooled[s * d + j] * inv;
                        }
                    }
                }
            }
        } else {
            let emb = self.params.value(self.embd).to_vec();
            linear_backward(
                dlogits,
                &a.feats,
                &emb,
                rows,
                out,
                d,
                Some(&mut dfeat),
                self.params.grad_mut(self.embd),
                None,
            )?;
        }
        let mut dx = if let Some((g, bb)) = self.final_norm {
            let mut dx = vec![0f32; rows * d];
            let gv = self.params.value(g).to_vec();
            let mut dg = vec![0f32; d];
            let mut db = vec![0f32; d];
            layernorm_backward(
                &dfeat,
                &a.last,
                rows,
                d,
                &gv,
                &a.lnf_mean,
                &a.lnf_rstd,
                &mut dx,
                &mut dg,
                &mut db,
            );
            add(self.params.grad_mut(g), &dg);
            add(self.params.grad_mut(bb), &db);
            dx
        } else {
            dfeat
        };
        self.stack
            .backward(&mut self.params, &a.blocks, &mut dx, Grads::default())?;
        let scale = if c.classes == 0 {
            (d as f32).sqrt()
        } else {
            1.0
        };
        let ge = self.params.grad_mut(self.embd);
        for (r, &tok) in tokens.iter().enumerate() {
            let dst = &mut ge[tok as usize * d..(tok as usize + 1) * d];
            for (g, v) in dst.iter_mut().zip(&dx[r * d..(r + 1) * d]) {
                *g += v * scale;
            }
        }
        Ok(())
    }
}

/// One SeqBoat layer as a sub-layer of the trainer's block stack ([`crate::stack`]): its
/// shape, parameter indices and block index (keys [`Run::forced_act`]). It reads the pad
/// mask ([`Run::keep`]) and the inference bias ([`Run::act_bias`]) from the run.
#[derive(Clone, Copy, Debug)]
pub struct SbLayer {
    /// Shape.
    pub cfg: SbConfig,
    /// Parameters.
    pub idx: SbIdx,
    /// Block index.
    pub block: usize,
}

impl SbLayer {
    /// The EMA coefficients of layer `li`: forward direction, and the reverse one for a
    /// bidirectional model.
    fn coefs(&self, p: &ParamStore) -> (EmaCoef, Option<EmaCoef>) {
        let c = self.cfg;
        let l = &self.idx;
        let dn = c.d * c.ndim;
        let part = |idx: usize, h: usize| &p.value(idx)[h * dn..(h + 1) * dn];
        let one = |h: usize| {
            EmaCoef::new(
                c.ndim,
                part(l.delta, h),
                part(l.ahat, h),
                part(l.beta, h),
                part(l.eta, h),
            )
        };
        (one(0), (!c.causal).then(|| one(1)))
    }

    /// Band attention of one sequence's compressed tokens (`rows` are global row ids;
    /// original positions are `row − base`).
    fn attend(
        &self,
        q: &[f32],
        k: &[f32],
        zrv: &[f32],
        rows: &[u32],
        rel: &[f32],
        base: usize,
    ) -> SeqAtt {
        let c = self.cfg;
        let (z, e) = (c.z, c.e);
        let zw = z + 2 * e;
        let lc = rows.len();
        let alpha = c.score_scale();
        let mut out = SeqAtt {
            att: Vec::with_capacity(lc),
            scores: Vec::with_capacity(lc),
            o: vec![0f32; lc * e],
        };
        for qi in 0..lc {
            let (lo, hi) = c.band(qi, lc);
            let pk = rows[qi] as usize - base;
            let s: Vec<f32> = (lo..=hi)
                .map(|j| {
                    let pj = rows[j] as usize - base;
                    alpha * dot(&q[qi * z..(qi + 1) * z], &k[j * z..(j + 1) * z])
                        + rel[c.bias_index(pk, pj)]
                })
                .collect();
            let a: Vec<f32> = match c.attn {
                SbAttn::Softmax => {
                    let mx = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let ex: Vec<f32> = s.iter().map(|&v| (v - mx).exp()).collect();
                    let sum: f32 = ex.iter().sum();
                    ex.iter().map(|v| v / sum).collect()
                }
                SbAttn::Relu2 => s.iter().map(|&v| v.max(0.0) * v.max(0.0)).collect(),
            };
            let orow = &mut out.o[qi * e..(qi + 1) * e];
            for (jj, &w) in a.iter().enumerate() {
                let v = &zrv[(lo + jj) * zw + z + e..(lo + jj) * zw + z + 2 * e];
                for (o, vv) in orow.iter_mut().zip(v) {
                    *o += w * vv;
                }
            }
            out.att.push(a);
            out.scores.push(s);
        }
        out
    }

    /// Backward of [`SbLayer::attend`] for one sequence, from `dO: [lc, e]`.
    #[allow(clippy::too_many_arguments)]
    fn attend_backward(
        &self,
        q: &[f32],
        k: &[f32],
        zrv: &[f32],
        rows: &[u32],
        base: usize,
        att: &[Vec<f32>],
        scores: &[Vec<f32>],
        d_o: &[f32],
    ) -> SeqAttGrad {
        let c = self.cfg;
        let (z, e) = (c.z, c.e);
        let zw = z + 2 * e;
        let lc = rows.len();
        let alpha = c.score_scale();
        let mut g = SeqAttGrad {
            dq: vec![0f32; lc * z],
            dk: vec![0f32; lc * z],
            dv: vec![0f32; lc * e],
            drel: Vec::new(),
        };
        for qi in 0..lc {
            let (lo, _) = c.band(qi, lc);
            let a = &att[qi];
            let dorow = &d_o[qi * e..(qi + 1) * e];
            let da: Vec<f32> = (0..a.len())
                .map(|jj| {
                    let j = lo + jj;
                    dot(dorow, &zrv[j * zw + z + e..j * zw + z + 2 * e])
                })
                .collect();
            for (jj, &w) in a.iter().enumerate() {
                let j = lo + jj;
                for (dv, dd) in g.dv[j * e..(j + 1) * e].iter_mut().zip(dorow) {
                    *dv += w * dd;
                }
            }
            let ds: Vec<f32> = match c.attn {
                SbAttn::Softmax => {
                    let inner: f32 = a.iter().zip(&da).map(|(x, y)| x * y).sum();
                    a.iter().zip(&da).map(|(x, y)| x * (y - inner)).collect()
                }
                SbAttn::Relu2 => scores[qi]
                    .iter()
                    .zip(&da)
                    .map(|(s, y)| 2.0 * s.max(0.0) * y)
                    .collect(),
            };
            let pk = rows[qi] as usize - base;
            for (jj, &dsv) in ds.iter().enumerate() {
                let j = lo + jj;
                let pj = rows[j] as usize - base;
                g.drel.push((c.bias_index(pk, pj), dsv));
                for i in 0..z {
                    g.dq[qi * z + i] += alpha * dsv * k[j * z + i];
                    g.dk[j * z + i] += alpha * dsv * q[qi * z + i];
                }
            }
        }
        g
    }

    #[allow(clippy::too_many_arguments)]
    fn ln_backward(
        &self,
        p: &mut ParamStore,
        dy: &[f32],
        x: &[f32],
        la: &LayerActs,
        rows: usize,
        dx: &mut [f32],
    ) {
        let d = self.cfg.d;
        let gv = p.value(self.idx.norm_g).to_vec();
        let mut dg = vec![0f32; d];
        let mut db = vec![0f32; d];
        layernorm_backward(
            dy,
            x,
            rows,
            d,
            &gv,
            &la.ln_mean,
            &la.ln_rstd,
            dx,
            &mut dg,
            &mut db,
        );
        add(p.grad_mut(self.idx.norm_g), &dg);
        add(p.grad_mut(self.idx.norm_b), &db);
    }
}

impl StackLayer for SbLayer {
    fn forward(
        &self,
        p: &ParamStore,
        r: Rows,
        run: &Run<'_>,
        x: &mut [f32],
    ) -> Result<Saved, Error> {
        let c = self.cfg;
        let (d, n) = (c.d, c.ndim);
        let (b, t) = (r.b, r.t);
        let rows = b * t;
        let l = self.idx;
        let keep = run.keep;
        if keep.len() != rows || x.len() != rows * d {
            return Err(Error::input(format!(
                "SeqBoat layer: {} rows and a pad mask of {}, not [{b}·{t}, {d}]",
                x.len() / d.max(1),
                keep.len()
            )));
        }
        let mut la = LayerActs {
            act_bias: run.act_bias,
            keep: keep.to_vec(),
            ..LayerActs::default()
        };
        // 1. input norm and pad masking
        let mut xs = if c.prenorm {
            let (y, mean, rstd) = ln_rows(x, rows, d, p.value(l.norm_g), p.value(l.norm_b))?;
            (la.ln_mean, la.ln_rstd) = (mean, rstd);
            y
        } else {
            x.to_vec()
        };
        for (r, &k) in keep.iter().enumerate() {
            if !k {
                xs[r * d..(r + 1) * d].fill(0.0);
            }
        }
        // 2. EMA (one task per sequence) + skip
        let (cf, cr) = self.coefs(p);
        let dn = d * n;
        let per: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = par::map_indexed(b, |s| {
            let xseq = &xs[s * t * d..(s + 1) * t * d];
            let mut y = vec![0f32; t * d];
            let mut hs = vec![0f32; t * dn];
            ema_scan_forward(xseq, t, d, n, &cf, false, &mut hs, &mut y);
            let mut hr = Vec::new();
            if let Some(cr) = &cr {
                hr = vec![0f32; t * dn];
                ema_scan_forward(xseq, t, d, n, cr, true, &mut hr, &mut y);
            }
            (y, hs, hr)
        });
        let mut y = Vec::with_capacity(rows * d);
        la.hs = Vec::with_capacity(rows * dn);
        for (ys, hs, hr) in per {
            y.extend_from_slice(&ys);
            la.hs.extend_from_slice(&hs);
            la.hs_rev.extend_from_slice(&hr);
        }
        let omega = p.value(l.omega);
        for r in 0..rows {
            for j in 0..d {
                y[r * d + j] += omega[j] * xs[r * d + j];
            }
        }
        let m: Vec<f32> = y.iter().map(|&v| silu1(v)).collect();
        // 3. gate logits and SSM path
        let uw = 2 + d;
        let mut uc = vec![0f32; rows * uw];
        linear_forward(
            &m,
            rows,
            p.value(l.gate_w),
            Some(p.value(l.gate_b)),
            uw,
            d,
            &mut uc,
        )?;
        let tau = p.value(l.log_temp)[0].exp();
        la.act = vec![false; rows];
        la.pi1 = vec![0.0; rows];
        la.gate = vec![0.0; rows];
        for r in 0..rows {
            let diff = uc[r * uw + 1] - (uc[r * uw] + run.act_bias);
            let pi1 = 1.0 / (1.0 + (-diff / tau).exp());
            la.pi1[r] = pi1;
            let act = match c.gate {
                SbGate::Learned => diff > 0.0,
                SbGate::AlwaysOn => true,
                SbGate::Off => false,
            };
            let act = match run.forced_act.get(self.block) {
                Some(f) => f[r],
                None => act,
            } && keep[r];
            la.act[r] = act;
            la.gate[r] = match (act, c.gate) {
                (false, _) => 0.0,
                (true, SbGate::AlwaysOn) => 1.0,
                (true, _) => pi1,
            };
        }
        // 4. compress
        la.seq_off.push(0);
        for s in 0..b {
            for i in 0..t {
                if la.act[s * t + i] {
                    la.rows.push((s * t + i) as u32);
                }
            }
            la.seq_off.push(la.rows.len());
        }
        let lc = la.rows.len();
        let zw = c.z + 2 * c.e;
        let mut mh = vec![0f32; lc * d];
        for (k, &r) in la.rows.iter().enumerate() {
            let r = r as usize;
            mh[k * d..(k + 1) * d].copy_from_slice(&m[r * d..(r + 1) * d]);
        }
        let mut zrv_pre = vec![0f32; lc * zw];
        if lc > 0 {
            linear_forward(
                &mh,
                lc,
                p.value(l.in_w),
                Some(p.value(l.in_b)),
                zw,
                d,
                &mut zrv_pre,
            )?;
        }
        let zrv: Vec<f32> = zrv_pre.iter().map(|&v| silu1(v)).collect();
        let (ks, ko) = (p.value(l.qk_scale), p.value(l.qk_offset));
        let z = c.z;
        let mut q = vec![0f32; lc * z];
        let mut kk = vec![0f32; lc * z];
        for k in 0..lc {
            for i in 0..z {
                let zv = zrv[k * zw + i];
                q[k * z + i] = zv * ks[i] + ko[i];
                kk[k * z + i] = zv * ks[z + i] + ko[z + i];
            }
        }
        // 5. band attention per sequence
        let rel = p.value(l.rel);
        let e = c.e;
        let per: Vec<SeqAtt> = par::map_indexed(b, |s| {
            let (a0, a1) = (la.seq_off[s], la.seq_off[s + 1]);
            self.attend(
                &q[a0 * z..a1 * z],
                &kk[a0 * z..a1 * z],
                &zrv[a0 * zw..a1 * zw],
                &la.rows[a0..a1],
                rel,
                s * t,
            )
        });
        let mut o = Vec::with_capacity(lc * e);
        for sa in per {
            o.extend_from_slice(&sa.o);
            la.att.extend(sa.att);
            la.scores.extend(sa.scores);
        }
        let mut or = vec![0f32; lc * e];
        for k in 0..lc {
            for i in 0..e {
                or[k * e + i] = o[k * e + i] * zrv[k * zw + z + i];
            }
        }
        let mut h = vec![0f32; lc * d];
        if lc > 0 {
            linear_forward(
                &or,
                lc,
                p.value(l.out_w),
                Some(p.value(l.out_b)),
                d,
                e,
                &mut h,
            )?;
        }
        // 6. extract, gate, residual, SiLU
        let mut pre = vec![0f32; rows * d];
        for r in 0..rows {
            for j in 0..d {
                pre[r * d + j] = uc[r * uw + 2 + j] + x[r * d + j];
            }
        }
        for (k, &r) in la.rows.iter().enumerate() {
            let r = r as usize;
            let g = la.gate[r];
            for j in 0..d {
                pre[r * d + j] += g * h[k * d + j];
            }
        }
        let out: Vec<f32> = pre.iter().map(|&v| silu1(v)).collect();
        let next = if c.prenorm {
            out.clone()
        } else {
            let (y, mean, rstd) = ln_rows(&out, rows, d, p.value(l.norm_g), p.value(l.norm_b))?;
            (la.ln_mean, la.ln_rstd) = (mean, rstd);
            y
        };
        la.xs = xs;
        la.y = y;
        la.m = m;
        la.uc = uc;
        la.zrv_pre = zrv_pre;
        la.zrv = zrv;
        la.q = q;
        la.k = kk;
        la.o = o;
        la.or = or;
        la.h = h;
        la.pre = pre;
        la.out = out;
        x.copy_from_slice(&next);
        Ok(Saved::SeqBoat(Box::new(la)))
    }

    fn backward(
        &self,
        p: &mut ParamStore,
        r: Rows,
        saved: &Saved,
        x_in: &[f32],
        dx_io: &mut [f32],
        g: Grads,
    ) -> Result<(), Error> {
        let c = self.cfg;
        let (d, n, z, e) = (c.d, c.ndim, c.z, c.e);
        let Saved::SeqBoat(la) = saved else {
            return Err(Error::input(
                "SeqBoat backward: saved activations of another layer",
            ));
        };
        if !g.params {
            return Err(Error::input("SeqBoat layers always train their parameters"));
        }
        let (b, t) = (r.b, r.t);
        let rows = b * t;
        let keep = &la.keep;
        if dx_io.len() != rows * d || keep.len() != rows || x_in.len() != rows * d {
            return Err(Error::input(
                "SeqBoat backward: saved activations do not match the shape",
            ));
        }
        let dnext = dx_io.to_vec();
        let l = self.idx;
        let uw = 2 + d;
        let zw = z + 2 * e;
        let lc = la.rows.len();
        // post-norm
        let dout = if c.prenorm {
            dnext
        } else {
            let mut g = vec![0f32; rows * d];
            self.ln_backward(p, &dnext, &la.out, la, rows, &mut g);
            g
        };
        let dpre: Vec<f32> = dout
            .iter()
            .zip(&la.pre)
            .map(|(g, &u)| g * silu_grad(u))
            .collect();
        // residual
        let mut dx = dpre.clone();
        // gate, SSM path
        let mut duc = vec![0f32; rows * uw];
        for r in 0..rows {
            duc[r * uw + 2..(r + 1) * uw].copy_from_slice(&dpre[r * d..(r + 1) * d]);
        }
        let tau = p.value(l.log_temp)[0].exp();
        let mut dtheta = 0f32;
        let mut dh = vec![0f32; lc * d];
        for (k, &r) in la.rows.iter().enumerate() {
            let r = r as usize;
            let g = la.gate[r];
            let dp = &dpre[r * d..(r + 1) * d];
            let hk = &la.h[k * d..(k + 1) * d];
            for j in 0..d {
                dh[k * d + j] = g * dp[j];
            }
            if c.gate == SbGate::Learned {
                let s = dot(dp, hk);
                let (p1, p0) = (la.pi1[r], 1.0 - la.pi1[r]);
                duc[r * uw + 1] += s * p1 * p0 / tau;
                duc[r * uw] -= s * p1 * p0 / tau;
                let diff = la.uc[r * uw + 1] - (la.uc[r * uw] + la.act_bias);
                dtheta -= s * p1 * p0 * diff / tau;
            }
        }
        p.grad_mut(l.log_temp)[0] += dtheta;
        let mut dm = vec![0f32; rows * d];
        let wu = p.value(l.gate_w).to_vec();
        {
            let mut gw = vec![0f32; uw * d];
            let mut gb = vec![0f32; uw];
            linear_backward(
                &duc,
                &la.m,
                &wu,
                rows,
                uw,
                d,
                Some(&mut dm),
                &mut gw,
                Some(&mut gb),
            )?;
            add(p.grad_mut(l.gate_w), &gw);
            add(p.grad_mut(l.gate_b), &gb);
        }
        if lc > 0 {
            // GAU output projection
            let mut dor = vec![0f32; lc * e];
            let wh = p.value(l.out_w).to_vec();
            let mut gw = vec![0f32; d * e];
            let mut gb = vec![0f32; d];
            linear_backward(
                &dh,
                &la.or,
                &wh,
                lc,
                d,
                e,
                Some(&mut dor),
                &mut gw,
                Some(&mut gb),
            )?;
            add(p.grad_mut(l.out_w), &gw);
            add(p.grad_mut(l.out_b), &gb);
            let mut dzrv = vec![0f32; lc * zw];
            let mut d_o = vec![0f32; lc * e];
            for k in 0..lc {
                for i in 0..e {
                    let g = dor[k * e + i];
                    d_o[k * e + i] = g * la.zrv[k * zw + z + i];
                    dzrv[k * zw + z + i] = g * la.o[k * e + i];
                }
            }
            // attention
            let grads: Vec<SeqAttGrad> = {
                let this = self;
                par::map_indexed(b, |s| {
                    let (a0, a1) = (la.seq_off[s], la.seq_off[s + 1]);
                    this.attend_backward(
                        &la.q[a0 * z..a1 * z],
                        &la.k[a0 * z..a1 * z],
                        &la.zrv[a0 * zw..a1 * zw],
                        &la.rows[a0..a1],
                        s * t,
                        &la.att[a0..a1],
                        &la.scores[a0..a1],
                        &d_o[a0 * e..a1 * e],
                    )
                })
            };
            let mut dq = Vec::with_capacity(lc * z);
            let mut dk = Vec::with_capacity(lc * z);
            {
                let grel = p.grad_mut(l.rel);
                for (s, g) in grads.iter().enumerate() {
                    let a0 = la.seq_off[s];
                    dq.extend_from_slice(&g.dq);
                    dk.extend_from_slice(&g.dk);
                    for (kk, row) in g.dv.chunks_exact(e).enumerate() {
                        let k = a0 + kk;
                        dzrv[k * zw + z + e..k * zw + z + 2 * e].copy_from_slice(row);
                    }
                    for &(i, v) in &g.drel {
                        grel[i] += v;
                    }
                }
            }
            // shared Z with per-dimension scale/offset
            let ks = p.value(l.qk_scale).to_vec();
            let mut dks = vec![0f32; 2 * z];
            let mut dko = vec![0f32; 2 * z];
            for k in 0..lc {
                for i in 0..z {
                    let zv = la.zrv[k * zw + i];
                    let (gq, gk) = (dq[k * z + i], dk[k * z + i]);
                    dks[i] += gq * zv;
                    dks[z + i] += gk * zv;
                    dko[i] += gq;
                    dko[z + i] += gk;
                    dzrv[k * zw + i] = gq * ks[i] + gk * ks[z + i];
                }
            }
            add(p.grad_mut(l.qk_scale), &dks);
            add(p.grad_mut(l.qk_offset), &dko);
            // SiLU of the projections, then the projection itself
            for (g, &u) in dzrv.iter_mut().zip(&la.zrv_pre) {
                *g *= silu_grad(u);
            }
            let mut mh = vec![0f32; lc * d];
            for (k, &r) in la.rows.iter().enumerate() {
                let r = r as usize;
                mh[k * d..(k + 1) * d].copy_from_slice(&la.m[r * d..(r + 1) * d]);
            }
            let wm = p.value(l.in_w).to_vec();
            let mut dmh = vec![0f32; lc * d];
            let mut gw = vec![0f32; zw * d];
            let mut gb = vec![0f32; zw];
            linear_backward(
                &dzrv,
                &mh,
                &wm,
                lc,
                zw,
                d,
                Some(&mut dmh),
                &mut gw,
                Some(&mut gb),
            )?;
            add(p.grad_mut(l.in_w), &gw);
            add(p.grad_mut(l.in_b), &gb);
            for (k, &r) in la.rows.iter().enumerate() {
                let r = r as usize;
                add(&mut dm[r * d..(r + 1) * d], &dmh[k * d..(k + 1) * d]);
            }
        }
        // m = silu(y)
        let dy: Vec<f32> = dm
            .iter()
            .zip(&la.y)
            .map(|(g, &u)| g * silu_grad(u))
            .collect();
        // skip ω⊙x̃
        let mut dxs = vec![0f32; rows * d];
        {
            let omega = p.value(l.omega).to_vec();
            let mut dom = vec![0f32; d];
            for r in 0..rows {
                for j in 0..d {
                    let g = dy[r * d + j];
                    dxs[r * d + j] += omega[j] * g;
                    dom[j] += g * la.xs[r * d + j];
                }
            }
            add(p.grad_mut(l.omega), &dom);
        }
        // EMA scans (one task per sequence)
        let (cf, cr) = self.coefs(p);
        let dn = d * n;
        let per: Vec<(Vec<f32>, EmaCoefGrad, Option<EmaCoefGrad>)> = par::map_indexed(b, |s| {
            let xseq = &la.xs[s * t * d..(s + 1) * t * d];
            let gy = &dy[s * t * d..(s + 1) * t * d];
            let mut dxq = vec![0f32; t * d];
            let mut gf = EmaCoefGrad::zeros(dn);
            let hs = &la.hs[s * t * dn..(s + 1) * t * dn];
            ema_scan_backward(xseq, t, d, n, &cf, false, hs, gy, &mut dxq, &mut gf);
            let gr = cr.as_ref().map(|cr| {
                let mut gr = EmaCoefGrad::zeros(dn);
                let hr = &la.hs_rev[s * t * dn..(s + 1) * t * dn];
                ema_scan_backward(xseq, t, d, n, cr, true, hr, gy, &mut dxq, &mut gr);
                gr
            });
            (dxq, gf, gr)
        });
        let mut gf = EmaCoefGrad::zeros(dn);
        let mut gr = EmaCoefGrad::zeros(dn);
        for (s, (dxq, f, r)) in per.into_iter().enumerate() {
            add(&mut dxs[s * t * d..(s + 1) * t * d], &dxq);
            gf.add(&f);
            if let Some(r) = r {
                gr.add(&r);
            }
        }
        let halves: Vec<(EmaCoef, EmaCoefGrad)> = match cr {
            Some(cr) => vec![(cf, gf), (cr, gr)],
            None => vec![(cf, gf)],
        };
        for (h, (coef, g)) in halves.iter().enumerate() {
            let beta = p.value(l.beta)[h * dn..(h + 1) * dn].to_vec();
            let mut raw = [
                vec![0f32; dn],
                vec![0f32; dn],
                vec![0f32; dn],
                vec![0f32; dn],
            ];
            let [r0, r1, r2, r3] = &mut raw;
            g.to_raw(coef, &beta, n, r0, r1, r2, r3);
            for (idx, r) in [l.delta, l.ahat, l.beta, l.eta].into_iter().zip(&raw) {
                add(&mut p.grad_mut(idx)[h * dn..(h + 1) * dn], r);
            }
        }
        // pads: x̃ was zeroed
        for (r, &k) in keep.iter().enumerate() {
            if !k {
                dxs[r * d..(r + 1) * d].fill(0.0);
            }
        }
        if c.prenorm {
            self.ln_backward(p, &dxs, x_in, la, rows, &mut dx);
        } else {
            add(&mut dx, &dxs);
        }
        dx_io.copy_from_slice(&dx);
        Ok(())
    }
}

fn add(dst: &mut [f32], src: &[f32]) {
    for (a, b) in dst.iter_mut().zip(src) {
        *a += b;
    }
}

/// The tokens of a batch (SeqBoat models take token ids).
pub fn sb_tokens(input: Input<'_>) -> Result<&[u32], Error> {
    match input {
        Input::Tokens(t) => Ok(t),
        Input::Features(_) => Err(Error::input(
            "SeqBoat models take tokens, not feature vectors",
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::gradcheck::{check_grad, GradCheck};

    fn tiny(causal: bool, attn: SbAttn, prenorm: bool, classes: usize) -> SbConfig {
        SbConfig {
            vocab: 7,
            classes,
            d: 6,
            layers: 2,
            ndim: 3,
            z: 4,
            e: 5,
            window: 2,
            causal,
            attn,
            prenorm,
            temp_scale: 0.5,
            max_pos: 4,
            gate: SbGate::Learned,
            pad: if classes > 0 { Some(0) } else { None },
            nested_depths: 0,
        }
    }

    /// Every parameter's gradient against central differences, with the gate decisions of
    /// the unperturbed model held fixed (a decision is a step function; the gate value
    /// π₁ still moves with the parameters).
    fn check_model(name: &str, cfg: SbConfig) {
        check_model_at(name, cfg, None);
    }

    fn check_model_at(name: &str, cfg: SbConfig, depth: Option<usize>) {
        let (b, t) = (2, 9);
        let mut m = SbModel::new(cfg, 3).unwrap();
        m.depth = depth;
        // larger random values than the init so every path matters
        let mut rng = SplitMix64(11);
        for v in m.params.values.iter_mut() {
            *v += 0.4 * (2.0 * rng.next_f32() - 1.0);
        }
        let mut tokens: Vec<u32> = (0..b * t).map(|i| 1 + (i * 5 % 6) as u32).collect();
        let targets: Vec<u32> = if cfg.classes > 0 {
            tokens[0] = 0; // one pad
            tokens[1] = 0;
            vec![1, 2]
        } else {
            (0..b * t).map(|i| (i * 3 % 7) as u32).collect()
        };
        let (_, acts, dl) = m.forward(&tokens, &targets, b, t).unwrap();
        let forced: Vec<Vec<bool>> = acts.layers().map(|l| l.act.clone()).collect();
        // both decisions present in every layer
        for f in &forced {
            assert!(f.iter().any(|&x| x), "{name}: some token activated");
        }
        m.forced = Some(forced);
        m.params.zero_grads();
        m.backward(&tokens, &acts, &dl).unwrap();
        let grads = m.params.grads.clone();
        let cfgc = GradCheck {
            eps: 2e-3,
            tol: 3e-2,
            floor: 2e-3,
        };
        let specs = m.params.specs().to_vec();
        for s in specs {
            let mut vals = m.params.values[s.range.clone()].to_vec();
            let probe = m.clone();
            let r = s.range.clone();
            check_grad(
                &format!("{name}: {}", s.name),
                &mut vals,
                &grads[r.clone()],
                |v| {
                    let mut mm = probe.clone();
                    mm.params.values[r.clone()].copy_from_slice(v);
                    mm.forward(&tokens, &targets, b, t).unwrap().0
                },
                cfgc,
            )
            .unwrap();
        }
    }

    #[test]
    fn classifier_gradients_match_finite_differences() {
        check_model(
            "bidir softmax post-LN",
            tiny(false, SbAttn::Softmax, false, 3),
        );
        check_model("bidir relu2 pre-LN", tiny(false, SbAttn::Relu2, true, 3));
    }

    #[test]
    fn lm_gradients_match_finite_differences() {
        check_model(
            "causal softmax pre-LN",
            tiny(true, SbAttn::Softmax, true, 0),
        );
        let mut c = tiny(true, SbAttn::Relu2, false, 0);
        c.window = 0;
        check_model("causal relu2 full", c);
    }

    #[test]
    fn nested_depth_gradients_match_and_touch_only_the_prefix() {
        let c = tiny(false, SbAttn::Softmax, false, 3)
            .with_nested_depths(&[1])
            .unwrap();
        assert_eq!(c.nested_depth_list(), vec![1, 2]);
        let (b, t) = (2, 9);
        let mut m = SbModel::new(c, 4).unwrap();
        m.depth = Some(1);
        let tok: Vec<u32> = (0..b * t).map(|i| 1 + (i * 5 % 6) as u32).collect();
        let (_, a, dl) = m.forward(&tok, &[0, 2], b, t).unwrap();
        assert_eq!(a.activation_ratio().len(), 1);
        m.params.zero_grads();
        m.backward(&tok, &a, &dl).unwrap();
        for s in m.params.specs() {
            let g = &m.params.grads[s.range.clone()];
            let touched = g.iter().any(|&v| v != 0.0);
            assert_eq!(
                touched,
                !s.name.starts_with("blk.1."),
                "{}: only the first layer and the head train at depth 1",
                s.name
            );
        }
        let mut tc = c;
        tc.nested_depths = 0;
        let mut m2 = SbModel::from_params(tc, m.params.clone()).unwrap();
        m2.depth = Some(1);
        let (l2, _, _) = m2.forward(&tok, &[0, 2], b, t).unwrap();
        let (l1, _, _) = m.forward(&tok, &[0, 2], b, t).unwrap();
        assert_eq!(l1, l2);
        m.depth = Some(3);
        assert!(m.forward(&tok, &[0, 2], b, t).is_err());
        assert!(c.with_nested_depths(&[0]).is_err());
        assert!(c.with_nested_depths(&[3]).is_err());
        // the sub-model's gradients against finite differences
        check_model_at("depth-1 sub-model", c, Some(1));
    }

    #[test]
    fn always_on_and_off_gates() {
        let mut c = tiny(false, SbAttn::Softmax, false, 3);
        c.gate = SbGate::AlwaysOn;
        check_model("always on", c);
        let (b, t) = (2, 9);
        c.gate = SbGate::Off;
        let m = SbModel::new(c, 1).unwrap();
        let tok: Vec<u32> = (0..b * t).map(|i| 1 + (i % 6) as u32).collect();
        let (_, a, _) = m.forward(&tok, &[0, 1], b, t).unwrap();
        assert_eq!(a.activation_ratio(), vec![0.0, 0.0]);
        c.gate = SbGate::AlwaysOn;
        let m = SbModel::new(c, 1).unwrap();
        let (_, a, _) = m.forward(&tok, &[0, 1], b, t).unwrap();
        assert_eq!(a.activation_ratio(), vec![1.0, 1.0]);
    }

    #[test]
    fn left_padding_does_not_change_a_causal_prediction() {
        // pads are zeroed before the EMA and never activated: a padded sequence gives the
        // same logits as the unpadded one (classifier pooling ignores pads).
        let mut c = tiny(true, SbAttn::Softmax, true, 3);
        c.window = 2;
        let m = SbModel::new(c, 5).unwrap();
        let body = [3u32, 1, 4, 1, 5, 2];
        let mut padded = vec![0u32; 3];
        padded.extend_from_slice(&body);
        let (_, a1, _) = m.forward(&body, &[1], 1, body.len()).unwrap();
        let (_, a2, _) = m.forward(&padded, &[1], 1, padded.len()).unwrap();
        for (x, y) in a1.logits().iter().zip(a2.logits()) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let c = tiny(false, SbAttn::Softmax, false, 3);
        let m = SbModel::new(c, 1).unwrap();
        assert!(m.forward(&[1, 2, 3], &[0], 1, 4).is_err());
        assert!(m.forward(&[1, 2, 9], &[0], 1, 3).is_err());
        assert!(m.forward(&[0, 0, 0], &[0], 1, 3).is_err(), "all padding");
        assert!(
            m.forward(&[1, 2, 3], &[5], 1, 3).is_err(),
            "class out of range"
        );
        let mut bad = c;
        bad.classes = 0;
        assert!(SbModel::new(bad, 1).is_err(), "bidirectional LM");
        bad = c;
        bad.temp_scale = f32::NAN;
        assert!(SbModel::new(bad, 1).is_err());
    }
}
