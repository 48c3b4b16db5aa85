//! The training loop for the dense baseline: random byte windows, forward, backward,
//! global-norm clipping, AdamW with warm-up + cosine schedule; evaluation on the validation
//! split. Deterministic in the seed.

use crate::data::{ByteText, Split};
use crate::model::dense::DenseModel;
use crate::optim::{clip_grad_norm, lr_at, AdamW};
use modula_core::rng::SplitMix64;

/// Training settings.
#[derive(Clone, Copy, Debug)]
pub struct TrainConfig {
    /// Optimiser steps.
    pub steps: u64,
    /// Sequences per step.
    pub batch: usize,
    /// Bytes per sequence.
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
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 200,
            batch: 8,
            seq: 64,
            lr: 3e-3,
            min_lr: 3e-4,
            warmup: 20,
            clip: 1.0,
            opt: AdamW::default(),
            seed: 1,
        }
    }
}

/// What one step reports.
#[derive(Clone, Copy, Debug)]
pub struct StepInfo {
    /// 1-based step.
    pub step: u64,
    /// Training loss (nats per byte).
    pub loss: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate used.
    pub lr: f32,
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
}

impl TrainState {
    /// A fresh run with the sampler seeded by `seed`.
    pub fn new(seed: u64) -> Self {
        TrainState {
            step: 0,
            rng: SplitMix64(seed),
        }
    }
}

/// Train `model` on `data` for all `cfg.steps`; `on_step` sees every step. Fails on bad
/// data, on a non-finite loss or gradient (nothing is updated in that step) — never
/// silently.
pub fn train_dense(
    model: &mut DenseModel,
    data: &ByteText,
    cfg: &TrainConfig,
    on_step: impl FnMut(&StepInfo),
) -> Result<(), String> {
    let mut state = TrainState::new(cfg.seed);
    train_dense_from(model, data, cfg, &mut state, cfg.steps, on_step)
}

/// Continue a run from `state` up to step `until` (≤ `cfg.steps`; the schedule is always
/// that of the whole `cfg.steps` run), updating `state`.
pub fn train_dense_from(
    model: &mut DenseModel,
    data: &ByteText,
    cfg: &TrainConfig,
    state: &mut TrainState,
    until: u64,
    mut on_step: impl FnMut(&StepInfo),
) -> Result<(), String> {
    data.check_window(cfg.seq).map_err(|e| e.to_string())?;
    if until > cfg.steps {
        return Err(format!(
            "cannot train to step {until} of a {}-step run",
            cfg.steps
        ));
    }
    while state.step < until {
        let step = state.step + 1;
        let (x, y) = data
            .batch(Split::Train, cfg.batch, cfg.seq, &mut state.rng)
            .map_err(|e| e.to_string())?;
        let (loss, acts, dlogits) = model.forward(&x, &y, cfg.batch, cfg.seq)?;
        if !loss.is_finite() {
            return Err(format!(
                "step {step}: loss is {loss}; lower the learning rate"
            ));
        }
        model.params.zero_grads();
        model.backward(&x, &acts, &dlogits)?;
        let norm = clip_grad_norm(&mut model.params, cfg.clip);
        if !norm.is_finite() {
            return Err(format!(
                "step {step}: gradient norm is {norm}; lower the learning rate"
            ));
        }
        let lr = lr_at(step, cfg.warmup, cfg.steps, cfg.lr, cfg.min_lr);
        cfg.opt.step(&mut model.params, step, lr);
        state.step = step;
        on_step(&StepInfo {
            step,
            loss,
            grad_norm: norm,
            lr,
        });
    }
    Ok(())
}

/// Mean loss (nats per byte) over `batches` random validation windows (seeded).
pub fn eval_dense(
    model: &DenseModel,
    data: &ByteText,
    batches: usize,
    batch: usize,
    seq: usize,
    seed: u64,
) -> Result<f64, String> {
    let mut rng = SplitMix64(seed);
    let mut total = 0.0;
    for _ in 0..batches.max(1) {
        let (x, y) = data
            .batch(Split::Val, batch, seq, &mut rng)
            .map_err(|e| e.to_string())?;
        total += model.forward(&x, &y, batch, seq)?.0;
    }
    Ok(total / batches.max(1) as f64)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::model::dense::DenseConfig;

    #[test]
    fn learns_a_repetitive_text_and_is_deterministic() {
        let text: Vec<u8> = b"the cat sat on the mat. "
            .iter()
            .cycle()
            .take(4000)
            .copied()
            .collect();
        let data = ByteText::from_bytes(text, 0.1).unwrap();
        let cfg = DenseConfig {
            vocab: 256,
            d: 32,
            layers: 1,
            heads: 2,
            ffn: 64,
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
        let run = || {
            let mut m = DenseModel::new(cfg, 7).unwrap();
            let before = eval_dense(&m, &data, 2, 4, 24, 3).unwrap();
            let mut losses = Vec::new();
            train_dense(&mut m, &data, &tc, |s| losses.push(s.loss)).unwrap();
            (before, eval_dense(&m, &data, 2, 4, 24, 3).unwrap(), losses)
        };
        let (before, after, losses) = run();
        assert!(
            before > 5.0,
            "untrained loss near ln 256 = 5.55, got {before}"
        );
        assert!(
            after < 1.5,
            "validation loss after 60 steps: {after} (before {before})"
        );
        let (_, _, again) = run();
        assert_eq!(losses, again, "same seed, same loss curve");
    }
}
