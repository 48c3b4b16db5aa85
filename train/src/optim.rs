//! AdamW (decoupled weight decay, bias correction), gradient clipping by global norm, and
//! the learning-rate schedule (linear warm-up, cosine decay to a floor).
//!
//! Deterministic: the global norm is summed in f64 in index order, the update is
//! elementwise.

use crate::params::ParamStore;

/// AdamW hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    /// β1
    pub beta1: f32,
    /// β2
    pub beta2: f32,
    /// ε
    pub eps: f32,
    /// Decoupled weight decay (applied as `θ -= lr·wd·θ` to tensors marked `decay`).
    pub weight_decay: f32,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        }
    }
}

/// Global L2 norm of the gradients (f64 accumulation, index order).
pub fn grad_norm(p: &ParamStore) -> f64 {
    p.grads
        .iter()
        .map(|&g| f64::from(g) * f64::from(g))
        .sum::<f64>()
        .sqrt()
}

/// Scale gradients so their global norm is at most `max_norm`; returns the norm before.
/// A non-finite norm is returned unchanged (the caller must skip the step).
pub fn clip_grad_norm(p: &mut ParamStore, max_norm: f64) -> f64 {
    let n = grad_norm(p);
    if n.is_finite() && n > max_norm && max_norm > 0.0 {
        let s = (max_norm / n) as f32;
        p.grads.iter_mut().for_each(|g| *g *= s);
    }
    n
}

impl AdamW {
    /// One update at 1-based `step` with learning rate `lr`.
    pub fn step(&self, p: &mut ParamStore, step: u64, lr: f32) {
        let t = step.max(1) as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2 = 1.0 - self.beta2.powi(t);
        let specs = p.specs().to_vec();
        for s in &specs {
            let wd = if s.decay { self.weight_decay } else { 0.0 };
            for i in p.trainable_in(s.range.clone()).into_iter().flatten() {
                let g = p.grads[i];
                let m = self.beta1 * p.m[i] + (1.0 - self.beta1) * g;
                let v = self.beta2 * p.v[i] + (1.0 - self.beta2) * g * g;
                p.m[i] = m;
                p.v[i] = v;
                let mhat = m / bc1;
                let vhat = v / bc2;
                p.values[i] -= lr * (mhat / (vhat.sqrt() + self.eps) + wd * p.values[i]);
            }
        }
    }
}

/// Linear warm-up over `warmup` steps to `max_lr`, then cosine decay to `min_lr` at
/// `total` steps (constant `min_lr` after). `step` is 1-based.
pub fn lr_at(step: u64, warmup: u64, total: u64, max_lr: f32, min_lr: f32) -> f32 {
    if warmup > 0 && step <= warmup {
        return max_lr * step as f32 / warmup as f32;
    }
    if step >= total || total <= warmup {
        return min_lr;
    }
    let progress = (step - warmup) as f64 / (total - warmup) as f64;
    let cos = 0.5 * (1.0 + (core::f64::consts::PI * progress).cos());
    min_lr + (max_lr - min_lr) * cos as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::ParamTable;

    #[test]
    fn adamw_matches_a_hand_computed_step() {
        let mut t = ParamTable::new();
        t.add("w", &[2], true).unwrap();
        t.add("b", &[1], false).unwrap();
        let mut p = t.build();
        p.values.copy_from_slice(&[1.0, -2.0, 0.5]);
        p.grads.copy_from_slice(&[0.1, 0.2, -0.3]);
        let opt = AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        opt.step(&mut p, 1, 0.01);
        // step 1: mhat = g, vhat = g², update = lr·(sign(g)·|g|/(|g|+eps) + wd·θ)
        let want = [
            1.0 - 0.01 * (1.0 + 0.1),
            -2.0 - 0.01 * (1.0 - 0.2),
            0.5 + 0.01 * 1.0,
        ];
        for (a, b) in p.values.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        // second step with the same gradient: moments as in the formulas
        opt.step(&mut p, 2, 0.01);
        assert!((p.m[0] - (0.9 * 0.01 + 0.1 * 0.1)).abs() < 1e-7);
        assert!((p.v[0] - (0.999 * 1e-5 + 0.001 * 0.01)).abs() < 1e-9);
    }

    #[test]
    fn clipping_and_schedule() {
        let mut t = ParamTable::new();
        t.add("w", &[2], true).unwrap();
        let mut p = t.build();
        p.grads.copy_from_slice(&[3.0, 4.0]);
        assert_eq!(clip_grad_norm(&mut p, 1.0), 5.0);
        assert!((grad_norm(&p) - 1.0).abs() < 1e-6);
        assert_eq!(clip_grad_norm(&mut p, 10.0), grad_norm(&p));
        assert_eq!(lr_at(5, 10, 100, 1.0, 0.1), 0.5);
        assert_eq!(lr_at(10, 10, 100, 1.0, 0.1), 1.0);
        assert!((lr_at(55, 10, 100, 1.0, 0.1) - 0.55).abs() < 1e-6);
        assert_eq!(lr_at(100, 10, 100, 1.0, 0.1), 0.1);
        assert_eq!(lr_at(500, 10, 100, 1.0, 0.1), 0.1);
    }
}
