//! The training loop for the dense baseline on any [`Dataset`]: batches, forward, backward
//! (optionally accumulated over several micro-batches), global-norm clipping, AdamW with
//! warm-up + cosine schedule; evaluation (loss and accuracy) on the validation split.
//! Deterministic in the seed, bit-identical for any thread count.

use crate::compute::ParamsOnDevice;
use crate::data::Split;
use crate::layers::loss::IGNORE;
use crate::m2mkd::loss::{kd_kl, KlNorm};
use crate::model::dense::{DenseModel, Input};
use crate::model::moduleformer::{MfActivations, MfModel};
use crate::model::seqboat::{sb_tokens, SbActivations, SbModel};
use crate::optim::{clip_grad_norm, lr_at, AdamW};
use crate::params::ParamStore;
use crate::tasks::{Batch, Dataset};
use modula_core::rng::SplitMix64;
use modula_core::Error;

/// A model the loop can train: a forward that returns the task loss, the saved activations
/// and `∂loss/∂logits`; a backward that accumulates gradients (scaled by `scale` for
/// gradient accumulation — `dlogits` arrive already scaled, auxiliary losses are scaled
/// by the model).
pub trait Trainable {
    /// What the forward keeps for the backward.
    type Acts;
    /// The parameter store.
    fn params_mut(&mut self) -> &mut ParamStore;
    /// The parameter store, read-only.
    fn params(&self) -> &ParamStore;
    /// Other parameters the forward reads that never change while training (a frozen
    /// teacher or meta model): kept on the GPU for the whole run when one is selected.
    fn frozen_values(&self) -> Vec<&[f32]> {
        Vec::new()
    }
    /// Logits per row.
    fn outputs(&self) -> usize;
    /// Seed this micro-batch's training-only randomness (EMoE routing noise); `None` (as
    /// evaluation has) turns it off.
    fn set_noise(&mut self, _seed: Option<u64>) {}
    /// Forward.
    fn forward_batch(&self, batch: &Batch) -> Result<(f64, Self::Acts, Vec<f32>), Error>;
    /// The logits of a forward.
    fn logits(acts: &Self::Acts) -> &[f32];
    /// Backward.
    fn backward_batch(
        &mut self,
        batch: &Batch,
        acts: &Self::Acts,
        dlogits: &[f32],
        scale: f32,
    ) -> Result<(), Error>;
    /// Auxiliary (routing) loss of a forward, already weighted (0 for dense models).
    fn aux_loss(_acts: &Self::Acts) -> f64 {
        0.0
    }
    /// Nested sub-models of this model, smallest first, the full model last (empty when
    /// not nested): `[depth, FFN width, heads]` for dense models, `[attention experts, FFN
    /// experts, 0]` for ModuleFormer, `[depth, GAU width, 0]` for SeqBoat.
    fn nested_grid(&self) -> Vec<[usize; 3]> {
        Vec::new()
    }
    /// Run a nested sub-model (`None`: the full model).
    fn set_nested(&mut self, _size: Option<[usize; 3]>) {}
    /// Per router: the expert-usage entropy `H(e)/ln E` (balance) and the mean per-token
    /// routing entropy `H(e|x)/ln E` (sharpness) — empty for dense models.
    fn usage(&self, _acts: &Self::Acts) -> Vec<(f32, f32)> {
        Vec::new()
    }
    /// Per layer: the fraction of (non-pad) tokens that ran the sparsely activated module
    /// (SeqBoat) — empty for models without one.
    fn activation(&self, _acts: &Self::Acts) -> Vec<f32> {
        Vec::new()
    }
}

impl Trainable for DenseModel {
    type Acts = crate::model::dense::Activations;
    fn params_mut(&mut self) -> &mut ParamStore {
        &mut self.params
    }
    fn params(&self) -> &ParamStore {
        &self.params
    }
    fn outputs(&self) -> usize {
        self.cfg.outputs()
    }
    fn set_noise(&mut self, seed: Option<u64>) {
        self.emoe_noise_seed = seed;
    }
    fn nested_grid(&self) -> Vec<[usize; 3]> {
        let g = self.cfg.nested_grid3();
        if g.len() > 1 {
            g
        } else {
            Vec::new()
        }
    }
    fn set_nested(&mut self, size: Option<[usize; 3]>) {
        self.nested = size.map(|[d, f, _]| (d, f));
        self.nested_heads = size.map(|[_, _, h]| h);
    }
    fn forward_batch(&self, batch: &Batch) -> Result<(f64, Self::Acts, Vec<f32>), Error> {
        self.forward(batch.input(), &batch.targets, batch.b, batch.t)
    }
    fn logits(acts: &Self::Acts) -> &[f32] {
        acts.logits()
    }
    fn backward_batch(
        &mut self,
        batch: &Batch,
        acts: &Self::Acts,
        dlogits: &[f32],
        scale: f32,
    ) -> Result<(), Error> {
        self.backward_scaled(batch.input(), acts, dlogits, scale)
    }
    fn aux_loss(acts: &Self::Acts) -> f64 {
        acts.emoe_aux
    }
}

fn mf_tokens(batch: &Batch) -> Result<&[u32], Error> {
    match batch.input() {
        Input::Tokens(t) => Ok(t),
        Input::Features(_) => Err(Error::input(
            "ModuleFormer models take tokens, not feature vectors (images)",
        )),
    }
}

impl Trainable for MfModel {
    type Acts = MfActivations;
    fn params_mut(&mut self) -> &mut ParamStore {
        &mut self.params
    }
    fn params(&self) -> &ParamStore {
        &self.params
    }
    fn outputs(&self) -> usize {
        self.cfg.vocab
    }
    fn forward_batch(&self, batch: &Batch) -> Result<(f64, Self::Acts, Vec<f32>), Error> {
        if batch.targets.len() != batch.b * batch.t {
            return Err(Error::input(
                "ModuleFormer models are language models: one target per position",
            ));
        }
        self.forward(mf_tokens(batch)?, &batch.targets, batch.b, batch.t)
    }
    fn logits(acts: &Self::Acts) -> &[f32] {
        acts.logits()
    }
    fn backward_batch(
        &mut self,
        batch: &Batch,
        acts: &Self::Acts,
        dlogits: &[f32],
        scale: f32,
    ) -> Result<(), Error> {
        self.backward(mf_tokens(batch)?, acts, dlogits, scale)
    }
    fn aux_loss(acts: &Self::Acts) -> f64 {
        acts.aux
    }
    fn nested_grid(&self) -> Vec<[usize; 3]> {
        let l = self.cfg.nested_expert_list();
        if l.len() > 1 {
            l.into_iter().map(|c| [c, c, 0]).collect()
        } else {
            Vec::new()
        }
    }
    fn set_nested(&mut self, size: Option<[usize; 3]>) {
        self.nested = size.map(|[a, f, _]| (a, f));
    }
    fn usage(&self, acts: &Self::Acts) -> Vec<(f32, f32)> {
        let c = self.cfg;
        acts.router_entropies()
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let n = if i % 2 == 0 {
                    c.att_experts
                } else {
                    c.ffn_experts
                };
                if n > 1 {
                    let ln = (n as f64).ln();
                    ((e.marginal / ln) as f32, (e.conditional / ln) as f32)
                } else {
                    (1.0, 0.0)
                }
            })
            .collect()
    }
}

impl Trainable for SbModel {
    type Acts = SbActivations;
    fn params_mut(&mut self) -> &mut ParamStore {
        &mut self.params
    }
    fn params(&self) -> &ParamStore {
        &self.params
    }
    fn outputs(&self) -> usize {
        self.cfg.outputs()
    }
    fn forward_batch(&self, batch: &Batch) -> Result<(f64, Self::Acts, Vec<f32>), Error> {
        self.forward(sb_tokens(batch.input())?, &batch.targets, batch.b, batch.t)
    }
    fn logits(acts: &Self::Acts) -> &[f32] {
        acts.logits()
    }
    fn backward_batch(
        &mut self,
        batch: &Batch,
        acts: &Self::Acts,
        dlogits: &[f32],
        _scale: f32,
    ) -> Result<(), Error> {
        self.backward(sb_tokens(batch.input())?, acts, dlogits)
    }
    fn activation(&self, acts: &Self::Acts) -> Vec<f32> {
        acts.activation_ratio()
    }
    fn nested_grid(&self) -> Vec<[usize; 3]> {
        let l = self.cfg.nested_depth_list();
        if l.len() > 1 {
            l.into_iter().map(|d| [d, self.cfg.e, 0]).collect()
        } else {
            Vec::new()
        }
    }
    fn set_nested(&mut self, size: Option<[usize; 3]>) {
        self.depth = size.map(|[d, _, _]| d);
    }
}

/// Training settings.
#[derive(Clone, Copy, Debug)]
pub struct TrainConfig {
    /// Optimiser steps.
    pub steps: u64,
    /// Sequences per micro-batch.
    pub batch: usize,
    /// Micro-batches per optimiser step (gradient accumulation; the step's gradient is the
    /// mean over them).
    pub accum: usize,
    /// Positions per sequence.
    pub seq: usize,
    /// Peak learning rate.
    pub lr: f32,
    /// Final learning rate.
    pub min_lr: f32,
    /// Warm-up steps.
    pub warmup: u64,
    /// Gradient clipping norm.
    pub clip: f64,
    /// Optimiser.
    pub opt: AdamW,
    /// Seed of the batch sampler.
    pub seed: u64,
    /// SortedNet training of a model with nested sizes: which sub-models train besides the
    /// full one (always trained) on each micro-batch; their gradients are averaged with
    /// the full model's.
    pub sorted: Sorted,
    /// SortedNet with in-place distillation: each sampled sub-model also learns the full
    /// model's output on the same micro-batch (`None`: plain cross-entropy, the base
    /// method).
    pub sorted_distill: Option<Distill>,
}

/// In-place distillation of the nested sub-models from the full model (slimmable
/// networks' "inplace distillation", OFA's KD from the largest): a sub-model's loss is
/// `(1 − α)·CE + α·τ²·KL(p_full^τ ‖ p_sub^τ)` averaged over the counted rows, the full
/// model's logits a fixed target (no gradient through them).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Distill {
    /// Weight α of the distillation term, in (0, 1].
    pub alpha: f32,
    /// Temperature τ > 0.
    pub tau: f32,
}

impl Distill {
    /// `α` or `α:τ` (τ defaults to 1).
    pub fn parse(s: &str) -> Result<Self, Error> {
        let (a, t) = s.split_once(':').unwrap_or((s, "1"));
        let alpha: f32 = a
            .trim()
            .parse()
            .map_err(|_| Error::input(format!("'{s}': use α or α:τ, e.g. 0.5 or 0.5:2")))?;
        let tau: f32 = t
            .trim()
            .parse()
            .map_err(|_| Error::input(format!("'{s}': use α or α:τ, e.g. 0.5 or 0.5:2")))?;
        if !(alpha > 0.0 && alpha <= 1.0) {
            return Err(Error::input(format!("'{s}': α must be in (0, 1]")));
        }
        if !(tau > 0.0 && tau.is_finite()) {
            return Err(Error::input(format!("'{s}': τ must be positive")));
        }
        Ok(Distill { alpha, tau })
    }
}

/// How nested sub-models are picked per micro-batch (spec B2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sorted {
    /// Only the full model trains.
    Off,
    /// SortedNet: `n` sub-models drawn uniformly from the grid (all sizes but the full).
    Uniform(usize),
    /// Every nested size on every micro-batch (Sorted Fine-Tuning's "all depths every
    /// step", over the whole grid).
    All,
    /// MatFormer: one width (FFN width and head count) per micro-batch, drawn uniformly
    /// from the grid's full-depth sizes.
    OneWidth,
}

impl Sorted {
    /// Parse `off`, `uniform:N`, `all` or `matformer`.
    pub fn parse(s: &str) -> Result<Self, Error> {
        match s {
            "off" => Ok(Sorted::Off),
            "all" => Ok(Sorted::All),
            "matformer" => Ok(Sorted::OneWidth),
            _ => match s.strip_prefix("uniform") {
                Some("") => Ok(Sorted::Uniform(1)),
                Some(n) => n
                    .strip_prefix(':')
                    .and_then(|n| n.parse().ok())
                    .filter(|&n: &usize| n > 0)
                    .map(Sorted::Uniform)
                    .ok_or_else(|| Error::input(format!("'{s}': use uniform:N with N >= 1"))),
                None => Err(Error::input(format!(
                    "'{s}': use off, uniform:N, all or matformer"
                ))),
            },
        }
    }

    /// The sub-models to train on one micro-batch besides the full one.
    fn pick(self, grid: &[[usize; 3]], rng: &mut SplitMix64) -> Vec<[usize; 3]> {
        let Some((&full, rest)) = grid.split_last() else {
            return Vec::new();
        };
        if rest.is_empty() {
            return Vec::new();
        }
        let draw =
            |rng: &mut SplitMix64, n: usize| ((rng.next_f32() * n as f32) as usize).min(n - 1);
        match self {
            Sorted::Off => Vec::new(),
            Sorted::All => rest.to_vec(),
            Sorted::Uniform(n) => (0..n).map(|_| rest[draw(rng, rest.len())]).collect(),
            Sorted::OneWidth => {
                let widths: Vec<[usize; 3]> = rest
                    .iter()
                    .copied()
                    .filter(|s| s[0] == full[0] && s[1..] != full[1..])
                    .collect();
                if widths.is_empty() {
                    Vec::new()
                } else {
                    vec![widths[draw(rng, widths.len())]]
                }
            }
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 200,
            batch: 8,
            accum: 1,
            seq: 64,
            lr: 3e-3,
            min_lr: 3e-4,
            warmup: 20,
            clip: 1.0,
            opt: AdamW::default(),
            seed: 1,
            sorted: Sorted::Off,
            sorted_distill: None,
        }
    }
}

/// What one step reports.
#[derive(Clone, Debug)]
pub struct StepInfo {
    /// 1-based step.
    pub step: u64,
    /// Training loss (nats per target, mean over the step's micro-batches).
    pub loss: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate used.
    pub lr: f32,
    /// Input positions processed in this step.
    pub positions: usize,
    /// Weighted auxiliary (routing) loss, mean over micro-batches (0 for dense models).
    pub aux: f64,
    /// Per router, mean over micro-batches: expert-usage entropy `H(e)/ln E` (1 = balanced
    /// load) and per-token routing entropy `H(e|x)/ln E` (0 = every token certain) — empty
    /// for dense models.
    pub usage: Vec<(f32, f32)>,
    /// Per SeqBoat layer, mean over micro-batches: the activation ratio (tokens that ran
    /// the attention unit / non-pad tokens) — empty for other models.
    pub activation: Vec<f32>,
}

/// Where a run is: the last completed step and the batch sampler's state. Together with
/// the parameters and Adam moments this is everything a resumed run needs to continue the
/// identical loss curve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrainState {
    /// Last completed step (0 before training).
    pub step: u64,
    /// Batch sampler.
    pub rng: SplitMix64,
    /// The settings of the run that wrote a checkpoint (`name=value; …`, what a resumed
    /// run must repeat; empty: not recorded, a checkpoint from before they were).
    pub settings: String,
}

impl TrainState {
    /// A fresh run with the sampler seeded by `seed`.
    pub fn new(seed: u64) -> Self {
        TrainState {
            step: 0,
            settings: String::new(),
            rng: SplitMix64(seed),
        }
    }
}

/// Train `model` on `data` for all `cfg.steps`; `on_step` sees every step. Fails on bad
/// data, on a non-finite loss or gradient (nothing is updated in that step) — never
/// silently.
pub fn train_dense(
    model: &mut DenseModel,
    data: &dyn Dataset,
    cfg: &TrainConfig,
    on_step: impl FnMut(&StepInfo),
) -> Result<(), Error> {
    let mut state = TrainState::new(cfg.seed);
    train_dense_from(model, data, cfg, &mut state, cfg.steps, on_step)
}

/// Continue a run from `state` up to step `until` (≤ `cfg.steps`; the schedule is always
/// that of the whole `cfg.steps` run), updating `state`.
pub fn train_dense_from(
    model: &mut DenseModel,
    data: &dyn Dataset,
    cfg: &TrainConfig,
    state: &mut TrainState,
    until: u64,
    on_step: impl FnMut(&StepInfo),
) -> Result<(), Error> {
    train_from(model, data, cfg, state, until, on_step)
}

/// [`train_dense_from`] for any [`Trainable`] model.
pub fn train_from<M: Trainable>(
    model: &mut M,
    data: &dyn Dataset,
    cfg: &TrainConfig,
    state: &mut TrainState,
    until: u64,
    mut on_step: impl FnMut(&StepInfo),
) -> Result<(), Error> {
    if until > cfg.steps {
        return Err(Error::input(format!(
            "cannot train to step {until} of a {}-step run",
            cfg.steps
        )));
    }
    if cfg.batch == 0 || cfg.accum == 0 || cfg.seq == 0 {
        return Err(Error::input(
            "batch, accumulation and sequence length must be at least 1",
        ));
    }
    let inv = 1.0 / cfg.accum as f32;
    // On a GPU: frozen parameters cross once per run, trained ones once per step.
    let _frozen: Vec<ParamsOnDevice> = model
        .frozen_values()
        .into_iter()
        .map(ParamsOnDevice::bind)
        .collect();
    while state.step < until {
        let step = state.step + 1;
        model.params_mut().zero_grads();
        let on_device = ParamsOnDevice::bind(&model.params().values);
        let (mut loss, mut aux, mut usage) = (0.0, 0.0, Vec::<(f32, f32)>::new());
        let mut activation = Vec::<f32>::new();
        for micro in 0..cfg.accum as u64 {
            let batch = data.batch(Split::Train, cfg.batch, cfg.seq, &mut state.rng)?;
            // EMoE routing noise (if enabled) differs per step and micro-batch, and is a
            // function of the step, so a resumed run sees the same noise
            let noise =
                cfg.seed ^ step.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ micro.wrapping_mul(0x9e37);
            // SortedNet: the sub-models of this micro-batch (a function of the step, so a
            // resumed run draws the same ones)
            let mut srng = SplitMix64(noise ^ 0x50f7_ed5e_7000_0001);
            let subs = cfg.sorted.pick(&model.nested_grid(), &mut srng);
            let share = inv / (1 + subs.len()) as f32;
            let full_forward = |model: &mut M| {
                model.set_noise(Some(noise));
                let fwd = model.forward_batch(&batch);
                model.set_noise(None);
                fwd
            };
            // with distillation the full model runs first: its logits are the sub-models'
            // targets (its backward still comes last, as without)
            let distill = cfg.sorted_distill.filter(|_| !subs.is_empty());
            let full = match distill {
                Some(_) => Some(full_forward(model)?),
                None => None,
            };
            for sub in &subs {
                model.set_nested(Some(*sub));
                let r = model.forward_batch(&batch);
                let r = r.and_then(|(l, acts, mut dl)| {
                    if !l.is_finite() {
                        return Err(Error::input(format!(
                            "step {step}: sub-model {sub:?} loss is {l}; lower the learning rate"
                        )));
                    }
                    if let (Some(d), Some((_, full_acts, _))) = (distill, &full) {
                        dl.iter_mut().for_each(|g| *g *= 1.0 - d.alpha);
                        kd_kl(
                            M::logits(&acts),
                            M::logits(full_acts),
                            &batch.targets,
                            model.outputs(),
                            d.tau,
                            KlNorm::PerRow,
                            d.alpha,
                            &mut dl,
                        )
                        .map_err(|e| {
                            Error::input(format!("step {step}: distilling {sub:?}: {e}"))
                        })?;
                    }
                    dl.iter_mut().for_each(|g| *g *= share);
                    model.backward_batch(&batch, &acts, &dl, share)
                });
                model.set_nested(None);
                r?;
            }
            let (l, acts, mut dlogits) = match full {
                Some(f) => f,
                None => full_forward(model)?,
            };
            if !l.is_finite() {
                return Err(Error::input(format!(
                    "step {step}: loss is {l}; lower the learning rate"
                )));
            }
            if share != 1.0 {
                dlogits.iter_mut().for_each(|g| *g *= share);
            }
            model.backward_batch(&batch, &acts, &dlogits, share)?;
            loss += l;
            aux += M::aux_loss(&acts);
            let ar = model.activation(&acts);
            if activation.is_empty() {
                activation = ar;
            } else {
                activation.iter_mut().zip(&ar).for_each(|(a, b)| *a += b);
            }
            let u = model.usage(&acts);
            if usage.is_empty() {
                usage = u;
            } else {
                usage.iter_mut().zip(&u).for_each(|(a, b)| {
                    a.0 += b.0;
                    a.1 += b.1;
                });
            }
        }
        usage.iter_mut().for_each(|u| {
            u.0 *= inv;
            u.1 *= inv;
        });
        activation.iter_mut().for_each(|a| *a *= inv);
        // the values change below: the device copy is stale from here
        drop(on_device);
        model.params_mut().mask_frozen_grads();
        let norm = clip_grad_norm(model.params_mut(), cfg.clip);
        if !norm.is_finite() {
            return Err(Error::input(format!(
                "step {step}: gradient norm is {norm}; lower the learning rate"
            )));
        }
        let lr = lr_at(step, cfg.warmup, cfg.steps, cfg.lr, cfg.min_lr);
        cfg.opt.step(model.params_mut(), step, lr);
        state.step = step;
        on_step(&StepInfo {
            step,
            loss: loss / cfg.accum as f64,
            grad_norm: norm,
            lr,
            positions: cfg.batch * cfg.seq * cfg.accum,
            aux: aux / cfg.accum as f64,
            usage,
            activation,
        });
    }
    Ok(())
}

/// Validation result.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvalResult {
    /// Mean loss per target (nats).
    pub loss: f64,
    /// Fraction of targets whose arg-max prediction is right.
    pub accuracy: f64,
    /// Targets counted.
    pub targets: usize,
}

impl EvalResult {
    /// Loss in bits per target (bits per byte for byte models).
    pub fn bits(&self) -> f64 {
        self.loss / std::f64::consts::LN_2
    }
}

/// Loss and accuracy over the validation batches of `data` (see
/// [`Dataset::eval_batches`]: the whole finite validation set up to `batches·batch`
/// examples, or `batches` random batches drawn from `seed`).
pub fn eval_dense(
    model: &DenseModel,
    data: &dyn Dataset,
    batches: usize,
    batch: usize,
    seq: usize,
    seed: u64,
) -> Result<EvalResult, Error> {
    eval_model(model, data, batches, batch, seq, seed)
}

/// [`eval_dense`] for any [`Trainable`] model (the task loss only, without auxiliary
/// losses).
pub fn eval_model<M: Trainable>(
    model: &M,
    data: &dyn Dataset,
    batches: usize,
    batch: usize,
    seq: usize,
    seed: u64,
) -> Result<EvalResult, Error> {
    eval_model_with(model, data, batches, batch, seq, seed, |_| {})
}

/// [`eval_model`], showing every batch's activations to `on_batch` (e.g. to measure
/// SeqBoat's activation ratio on the same examples).
pub fn eval_model_with<M: Trainable>(
    model: &M,
    data: &dyn Dataset,
    batches: usize,
    batch: usize,
    seq: usize,
    seed: u64,
    mut on_batch: impl FnMut(&M::Acts),
) -> Result<EvalResult, Error> {
    let outs = model.outputs();
    let _on_device: Vec<ParamsOnDevice> = std::iter::once(&model.params().values[..])
        .chain(model.frozen_values())
        .map(ParamsOnDevice::bind)
        .collect();
    let (mut total, mut correct, mut count) = (0.0f64, 0usize, 0usize);
    for b in data.eval_batches(batch, seq, batches, seed)? {
        let (loss, acts, _) = model.forward_batch(&b)?;
        let logits = M::logits(&acts);
        let mut n = 0;
        for (row, &t) in b.targets.iter().enumerate() {
            if t == IGNORE {
                continue;
            }
            n += 1;
            let r = &logits[row * outs..(row + 1) * outs];
            let best = r
                .iter()
                .enumerate()
                .fold(0, |bi, (i, &v)| if v > r[bi] { i } else { bi });
            correct += usize::from(best == t as usize);
        }
        total += loss * n as f64;
        count += n;
        on_batch(&acts);
    }
    if count == 0 {
        return Err(Error::input("the validation data has no targets"));
    }
    Ok(EvalResult {
        loss: total / count as f64,
        accuracy: correct as f64 / count as f64,
        targets: count,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::data::ByteText;
    use crate::model::dense::DenseConfig;

    fn cat_text() -> ByteText {
        let text: Vec<u8> = b"the cat sat on the mat. "
            .iter()
            .cycle()
            .take(4000)
            .copied()
            .collect();
        ByteText::from_bytes(text, 0.1).unwrap()
    }

    #[test]
    fn learns_a_repetitive_text_and_is_deterministic() {
        let data = cat_text();
        let cfg = DenseConfig::lm(256, 32, 1, 2, 64);
        let tc = TrainConfig {
            steps: 60,
            batch: 4,
            seq: 24,
            lr: 1e-2,
            min_lr: 1e-3,
            warmup: 5,
            ..TrainConfig::default()
        };
        let run = || {
            let mut m = DenseModel::new(cfg, 7).unwrap();
            let before = eval_dense(&m, &data, 2, 4, 24, 3).unwrap();
            let mut losses = Vec::new();
            train_dense(&mut m, &data, &tc, |s| losses.push(s.loss)).unwrap();
            (before, eval_dense(&m, &data, 2, 4, 24, 3).unwrap(), losses)
        };
        let (before, after, losses) = run();
        assert!(
            before.loss > 5.0,
            "untrained loss near ln 256 = 5.55, got {before:?}"
        );
        assert!(
            after.loss < 1.5 && after.accuracy > 0.5,
            "validation after 60 steps: {after:?} (before {before:?})"
        );
        let (_, _, again) = run();
        assert_eq!(losses, again, "same seed, same loss curve");
    }

    #[test]
    fn moduleformer_learns_a_repetitive_text_on_any_thread_count() {
        use crate::model::moduleformer::{MfConfig, MfModel};
        use modula_core::kernels::par;
        let data = cat_text();
        let cfg = MfConfig {
            router_hidden: 16,
            ..MfConfig::lm(256, 32, 1, 4, 32)
        };
        let tc = TrainConfig {
            steps: 60,
            batch: 4,
            seq: 24,
            lr: 1e-2,
            min_lr: 1e-3,
            warmup: 5,
            ..TrainConfig::default()
        };
        let mut runs = Vec::new();
        for threads in [1, 2] {
            par::set_threads(threads);
            let mut m = MfModel::new(cfg, 7).unwrap();
            let before = eval_model(&m, &data, 2, 4, 24, 3).unwrap();
            let mut infos = Vec::new();
            let mut st = TrainState::new(tc.seed);
            train_from(&mut m, &data, &tc, &mut st, tc.steps, |s| {
                infos.push(s.clone())
            })
            .unwrap();
            let after = eval_model(&m, &data, 2, 4, 24, 3).unwrap();
            assert!(before.loss > 5.0, "{before:?}");
            assert!(
                after.loss < 1.5 && after.accuracy > 0.5,
                "validation after 60 steps: {after:?} (before {before:?})"
            );
            let last = infos.last().unwrap();
            assert_eq!(last.usage.len(), 2, "one entry per router");
            assert!(last
                .usage
                .iter()
                .all(|u| (0.0..=1.0001).contains(&u.0) && (0.0..=1.0001).contains(&u.1)));
            assert!(
                last.aux.is_finite() && last.aux < 0.0,
                "MI loss below 0 once routing is sharp: {}",
                last.aux
            );
            let losses: Vec<u64> = infos.iter().map(|s| s.loss.to_bits()).collect();
            runs.push((losses, m.params.values.clone()));
        }
        par::set_threads(0);
        assert!(runs[0] == runs[1], "thread count changed training");
    }

    #[test]
    fn sorted_training_makes_nested_submodels_work_and_truncation_does_not() {
        let data = cat_text();
        let cfg = DenseConfig::lm(256, 32, 2, 2, 64)
            .with_nested(&[1], &[16])
            .unwrap();
        assert_eq!(cfg.nested_grid(), vec![(1, 16), (1, 64), (2, 16), (2, 64)]);
        let tc = TrainConfig {
            steps: 60,
            batch: 4,
            seq: 24,
            lr: 1e-2,
            min_lr: 1e-3,
            warmup: 5,
            ..TrainConfig::default()
        };
        let eval_all = |m: &mut DenseModel| -> Vec<f64> {
            cfg.nested_grid()
                .iter()
                .map(|&s| {
                    m.nested = Some(s);
                    let r = eval_dense(m, &data, 2, 4, 24, 3).unwrap().loss;
                    m.nested = None;
                    r
                })
                .collect()
        };
        let mut plain = DenseModel::new(cfg, 7).unwrap();
        train_dense(&mut plain, &data, &tc, |_| {}).unwrap();
        let mut sorted = DenseModel::new(cfg, 7).unwrap();
        let tcs = TrainConfig {
            sorted: Sorted::All,
            ..tc
        };
        train_dense(&mut sorted, &data, &tcs, |_| {}).unwrap();
        let (p, s) = (eval_all(&mut plain), eval_all(&mut sorted));
        // every sorted sub-model learned the text, and each nested size of the sorted model
        // beats the same slice of the plainly trained one (the full model may pay a small
        // "sorting tax")
        assert!(s.iter().all(|&l| l < 1.0), "sorted sub-models: {s:?}");
        for i in 0..s.len() - 1 {
            assert!(s[i] < p[i], "size {i}: truncated {p:?} vs sorted {s:?}");
        }
        for (scheme, want) in [
            ("off", Sorted::Off),
            ("uniform:3", Sorted::Uniform(3)),
            ("all", Sorted::All),
            ("matformer", Sorted::OneWidth),
        ] {
            assert_eq!(Sorted::parse(scheme).unwrap(), want);
        }
        assert!(Sorted::parse("uniform:0").is_err() && Sorted::parse("x").is_err());
        let mut r = SplitMix64(1);
        let grid = cfg.nested_grid3();
        assert_eq!(Sorted::OneWidth.pick(&grid, &mut r), vec![[2, 16, 2]]);
        assert!(Sorted::Uniform(5)
            .pick(&grid, &mut r)
            .iter()
            .all(|s| *s != [2, 64, 2]));
        // with nested heads, MatFormer's widths are (FFN, heads) pairs at full depth
        let grid = cfg.with_nested_heads(&[1]).unwrap().nested_grid3();
        assert_eq!(grid.len(), 8);
        for _ in 0..20 {
            let p = Sorted::OneWidth.pick(&grid, &mut r);
            assert!(p.len() == 1 && p[0][0] == 2 && p[0] != [2, 64, 2], "{p:?}");
        }
    }

    /// In-place distillation pulls each sub-model's output distribution towards the full
    /// model's: after the same training, KL(full ‖ smallest sub-model) on held-out text is
    /// smaller with α = 1 (the sub-models learn only from the full model) than without.
    #[test]
    fn sorted_distillation_pulls_submodels_towards_the_full_model() {
        // a text with real uncertainty (the cat sentence is learnt perfectly by every size)
        let data = ByteText::from_bytes(crate::corpus::generated_text(20_000, 5), 0.1).unwrap();
        let cfg = DenseConfig::lm(256, 32, 2, 2, 64)
            .with_nested(&[1], &[16])
            .unwrap();
        let tc = TrainConfig {
            steps: 40,
            batch: 4,
            seq: 24,
            lr: 1e-2,
            min_lr: 1e-3,
            warmup: 5,
            sorted: Sorted::All,
            ..TrainConfig::default()
        };
        let kl_small = |d: Option<Distill>| {
            let mut m = DenseModel::new(cfg, 7).unwrap();
            let tcd = TrainConfig {
                sorted_distill: d,
                ..tc
            };
            let mut losses = Vec::new();
            train_dense(&mut m, &data, &tcd, |s| losses.push(s.loss)).unwrap();
            let b = data.eval_batches(4, 24, 1, 3).unwrap().remove(0);
            let (_, full, _) = m.forward_batch(&b).unwrap();
            m.nested = Some((1, 16));
            let (_, small, _) = m.forward_batch(&b).unwrap();
            let mut g = vec![0f32; small.logits().len()];
            let kl = kd_kl(
                small.logits(),
                full.logits(),
                &b.targets,
                256,
                1.0,
                KlNorm::PerRow,
                1.0,
                &mut g,
            )
            .unwrap();
            (kl, losses)
        };
        let (plain, lp) = kl_small(None);
        let (distilled, ld) = kl_small(Some(Distill {
            alpha: 1.0,
            tau: 1.0,
        }));
        assert!(
            distilled < plain,
            "KL(full ‖ smallest): distilled {distilled} vs plain {plain}"
        );
        // the full model still learns (its own loss is plain cross-entropy)
        assert!(ld[ld.len() - 1] < 0.7 * ld[0] && lp[lp.len() - 1] < 0.7 * lp[0]);
        // settings
        assert_eq!(
            Distill::parse("0.5:2").unwrap(),
            Distill {
                alpha: 0.5,
                tau: 2.0
            }
        );
        assert_eq!(Distill::parse("1").unwrap().tau, 1.0);
        for bad in ["0", "1.5", "0.5:0", "x", "0.5:-1", "NaN"] {
            assert!(Distill::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn training_is_bit_identical_for_any_thread_count() {
        use modula_core::kernels::par;
        // big enough that the products split over threads (n·k·m >= PAR_MIN_FLOPS) and
        // attention runs one task per (sequence, head)
        let data = cat_text();
        let cfg = DenseConfig {
            max_seq: 40,
            ..DenseConfig::lm(256, 64, 2, 4, 128)
        };
        let tc = TrainConfig {
            steps: 3,
            batch: 6,
            seq: 40,
            ..TrainConfig::default()
        };
        let mut runs = Vec::new();
        for threads in [1, 2, 3] {
            par::set_threads(threads);
            let mut m = DenseModel::new(cfg, 1).unwrap();
            let mut losses = Vec::new();
            train_dense(&mut m, &data, &tc, |s| losses.push(s.loss.to_bits())).unwrap();
            runs.push((losses, m.params.values.clone()));
        }
        par::set_threads(0);
        assert!(
            runs[0] == runs[1] && runs[1] == runs[2],
            "thread count changed training"
        );
    }

    #[test]
    fn accumulation_equals_one_big_batch() {
        // 2 micro-batches of 3 == one batch of 6 drawn from the same sampler state
        // (up to float summation order in the mean).
        let data = cat_text();
        let cfg = DenseConfig::lm(256, 16, 1, 2, 32);
        let base = TrainConfig {
            steps: 1,
            seq: 12,
            ..TrainConfig::default()
        };
        let grads = |batch, accum| {
            let mut m = DenseModel::new(cfg, 2).unwrap();
            let tc = TrainConfig {
                batch,
                accum,
                clip: 1e9,
                ..base
            };
            let mut loss = 0.0;
            train_dense(&mut m, &data, &tc, |s| loss = s.loss).unwrap();
            (loss, m.params.grads.clone())
        };
        let (l1, g1) = grads(6, 1);
        let (l2, g2) = grads(3, 2);
        assert!((l1 - l2).abs() < 1e-6, "{l1} vs {l2}");
        for (a, b) in g1.iter().zip(&g2) {
            assert!((a - b).abs() <= 1e-5 + 1e-4 * a.abs(), "{a} vs {b}");
        }
    }
}
