//! Training jobs of m2mKD, each a [`Trainable`] the common training loop runs:
//!
//! * **end to end**: a whole network with cross-entropy (meta pre-training, teacher
//!   fine-tuning, the student's assembly fine-tuning and the from-scratch baselines),
//!   optionally with plain logit distillation from a whole teacher;
//! * **hybrid**: one module inserted in place of module `i` of a frozen meta model —
//!   `M_{>i}(Q_i(S_i(P_i(M_{<i}(x)))))` — trained on `(1−α)·CE + α·KL(teacher hybrid ‖
//!   student hybrid)` (spec 1.2) where the teacher hybrid is `M_{>i}(T_i(M_{<i}(x)))`; the
//!   meta prefix runs once per batch and is shared by both hybrids, the teacher hybrid
//!   runs without activations kept, and the gradient reaches the module through the frozen
//!   suffix without parameter-gradient work (spec 4.4). With `α = 0` this is Deep
//!   Incubation's module training (and the "incubation only" ablation). The hidden-state
//!   variant replaces the KL by `MSE(S_i output, T_i output)` at weight α (spec 4.6).
//!
//! Only the trained network's parameters are in the optimiser; the meta model and the
//! teacher are separate networks the job only reads.

use super::loss::{kd_kl, mse, soft_ce, KlNorm};
use super::net::{Net, StageActs, StageInput};
use crate::params::ParamStore;
use crate::tasks::Batch;
use crate::trainer::Trainable;
use modula_core::Error;

/// The teacher of a job.
#[derive(Clone, Debug)]
pub enum Teacher {
    /// No teacher (α must be 0).
    None,
    /// The teacher's module for the hybrid's slot (m2mKD).
    Module(Net),
    /// A whole teacher network (plain logit distillation, end to end).
    Full(Net),
}

/// Loss settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossCfg {
    /// Weight of the teacher term (the CE term has `1 − α`).
    pub alpha: f32,
    /// Temperature of the KL term.
    pub tau: f32,
    /// KL normalisation.
    pub norm: KlNorm,
    /// Label smoothing of the CE term.
    pub smoothing: f32,
    /// Teacher term = MSE between the module outputs instead of the KL of the hybrids.
    pub hidden_mse: bool,
}

impl Default for LossCfg {
    fn default() -> Self {
        LossCfg {
            alpha: 0.0,
            tau: 1.0,
            norm: KlNorm::PerLogit,
            smoothing: 0.1,
            hidden_mse: false,
        }
    }
}

/// One training job.
#[derive(Clone, Debug)]
pub struct Job {
    /// The network being trained: a whole network (end to end) or one module (hybrid).
    pub student: Net,
    /// The frozen meta model (all modules): set = hybrid training of the student's module
    /// in its slot.
    pub meta: Option<Net>,
    /// The teacher.
    pub teacher: Teacher,
    /// Loss settings.
    pub loss: LossCfg,
    /// Evaluation: plain cross-entropy, no teacher.
    pub eval: bool,
}

/// What a job's forward keeps.
#[derive(Clone, Debug, Default)]
pub struct JobActs {
    /// The meta prefix's output (the module's input; empty for slot 0 and end to end).
    pre: Vec<f32>,
    /// The trained network's activations.
    student: Vec<StageActs>,
    /// The meta suffix's activations (hybrid).
    suffix: Vec<StageActs>,
    /// `∂(teacher term)/∂(module output)` of the hidden-state variant, unscaled.
    d_hidden: Vec<f32>,
    logits: Vec<f32>,
    /// Teacher term (KL or MSE) of this batch.
    pub teacher_loss: f64,
    /// Cross-entropy of this batch.
    pub ce: f64,
    /// The teacher term's weight α of this forward (0 in evaluation).
    alpha: f64,
}

impl JobActs {
    /// Tokens per expert of every MoE block of the trained network (in block order).
    pub fn expert_load(&self) -> Vec<Vec<u32>> {
        self.student
            .iter()
            .flat_map(|s| s.expert_load.iter().cloned())
            .collect()
    }
}

impl Job {
    /// A job that trains `net` end to end with cross-entropy.
    pub fn end_to_end(net: Net, loss: LossCfg) -> Self {
        Job {
            student: net,
            meta: None,
            teacher: Teacher::None,
            loss,
            eval: false,
        }
    }

    fn slot(&self) -> usize {
        self.student.first_module()
    }

    fn check(&self) -> Result<(), Error> {
        let a = self.loss.alpha;
        if !(0.0..=1.0).contains(&a) {
            return Err(Error::input(format!("α = {a} must be in [0, 1]")));
        }
        if a > 0.0 && matches!(self.teacher, Teacher::None) && !self.eval {
            return Err(Error::input("α > 0 needs a teacher"));
        }
        if let Some(meta) = &self.meta {
            if self.student.stages.len() != 1 {
                return Err(Error::input("a hybrid trains exactly one module"));
            }
            if meta.first_module() != 0 || meta.stages.len() != meta.stages[0].cfg.of {
                return Err(Error::input("the meta model must hold every module"));
            }
            if self.student.stages[0].cfg.of != meta.stages.len() {
                return Err(Error::input(format!(
                    "the module belongs to a {}-module network, the meta model has {}",
                    self.student.stages[0].cfg.of,
                    meta.stages.len()
                )));
            }
            if matches!(self.teacher, Teacher::Full(_)) {
                return Err(Error::input(
                    "a hybrid takes the teacher's module, not the whole teacher",
                ));
            }
        } else if matches!(self.teacher, Teacher::Module(_)) {
            return Err(Error::input(
                "a teacher module needs the meta model (hybrid training)",
            ));
        }
        Ok(())
    }

    /// Meta modules `range` forward without keeping activations.
    fn meta_run(
        meta: &Net,
        range: std::ops::Range<usize>,
        batch: &Batch,
        mut h: Vec<f32>,
    ) -> Result<Vec<f32>, Error> {
        for m in range {
            let inp = if m == 0 {
                StageInput::Batch(batch)
            } else {
                StageInput::Hidden(&h)
            };
            h = meta.forward_stage(m, inp, batch.b, batch.t)?.out;
        }
        Ok(h)
    }
}

impl Trainable for Job {
    type Acts = JobActs;

    fn params_mut(&mut self) -> &mut ParamStore {
        &mut self.student.params
    }

    fn params(&self) -> &ParamStore {
        &self.student.params
    }

    fn frozen_values(&self) -> Vec<&[f32]> {
        let teacher = match &self.teacher {
            Teacher::None => None,
            Teacher::Module(t) | Teacher::Full(t) => Some(&t.params.values[..]),
        };
        self.meta
            .iter()
            .map(|m| &m.params.values[..])
            .chain(teacher)
            .collect()
    }

    fn outputs(&self) -> usize {
        self.student.outputs()
    }

    fn forward_batch(&self, batch: &Batch) -> Result<(f64, JobActs, Vec<f32>), Error> {
        self.check()?;
        let (b, t) = (batch.b, batch.t);
        let l = self.loss;
        let alpha = if self.eval { 0.0 } else { l.alpha };
        let mut a = JobActs::default();
        let teacher_logits;
        match &self.meta {
            None => {
                a.student = self.student.forward_all(StageInput::Batch(batch), b, t)?;
                a.logits = a.student.last().map(|s| s.out.clone()).unwrap_or_default();
                teacher_logits = match (&self.teacher, alpha > 0.0) {
                    (Teacher::Full(tn), true) => {
                        let acts = tn.forward_all(StageInput::Batch(batch), b, t)?;
                        acts.last().map(|s| s.out.clone())
                    }
                    _ => None,
                };
            }
            Some(meta) => {
                let i = self.slot();
                let last = meta.stages.len() - 1;
                a.pre = Self::meta_run(meta, 0..i, batch, Vec::new())?;
                let inp = if i == 0 {
                    StageInput::Batch(batch)
                } else {
                    StageInput::Hidden(&a.pre)
                };
                let s = self.student.forward_stage(i, inp, b, t)?;
                let mut h = s.out.clone();
                a.student = vec![s];
                for m in i + 1..=last {
                    let sa = meta.forward_stage(m, StageInput::Hidden(&h), b, t)?;
                    h = sa.out.clone();
                    a.suffix.push(sa);
                }
                a.logits = h;
                teacher_logits = match (&self.teacher, alpha > 0.0) {
                    (Teacher::Module(tn), true) => {
                        let t_out = tn.forward_stage(i, inp, b, t)?.out;
                        if l.hidden_mse {
                            let s_out = &a.student[0].out;
                            let mut g = vec![0f32; s_out.len()];
                            a.teacher_loss = mse(s_out, &t_out, alpha, &mut g).map_err(|e| {
                                Error::input(format!("hidden-state MSE (teacher and student module outputs must have the same width): {e}"))
                            })?;
                            a.d_hidden = g;
                            None
                        } else {
                            Some(Self::meta_run(meta, i + 1..last + 1, batch, t_out)?)
                        }
                    }
                    _ => None,
                };
            }
        }
        let c = self.outputs();
        let mut dl = vec![0f32; a.logits.len()];
        let eps = if self.eval { 0.0 } else { l.smoothing };
        a.ce = soft_ce(&a.logits, &batch.targets, c, eps, 1.0 - alpha, &mut dl)?;
        if let Some(zt) = teacher_logits {
            a.teacher_loss = kd_kl(
                &a.logits,
                &zt,
                &batch.targets,
                c,
                l.tau,
                l.norm,
                alpha,
                &mut dl,
            )?;
        }
        a.alpha = f64::from(alpha);
        let loss = f64::from(1.0 - alpha) * a.ce + f64::from(alpha) * a.teacher_loss;
        let loss = if self.eval { a.ce } else { loss };
        Ok((loss, a, dl))
    }

    fn logits(acts: &JobActs) -> &[f32] {
        &acts.logits
    }

    /// The teacher term (KL or MSE), weighted by α — reported, already in the loss.
    fn aux_loss(acts: &JobActs) -> f64 {
        acts.teacher_loss * acts.alpha
    }

    fn usage(&self, acts: &JobActs) -> Vec<(f32, f32)> {
        acts.student.iter().flat_map(|s| s.router_usage()).collect()
    }

    fn backward_batch(
        &mut self,
        batch: &Batch,
        acts: &JobActs,
        dlogits: &[f32],
        scale: f32,
    ) -> Result<(), Error> {
        match &mut self.meta {
            None => {
                self.student.backward_all(
                    StageInput::Batch(batch),
                    &acts.student,
                    dlogits,
                    true,
                    false,
                )?;
            }
            Some(meta) => {
                let i = self.student.first_module();
                let mut g = dlogits.to_vec();
                for (k, sa) in acts.suffix.iter().enumerate().rev() {
                    let m = i + 1 + k;
                    let inp = if k == 0 {
                        &acts.student[0].out
                    } else {
                        &acts.suffix[k - 1].out
                    };
                    g = meta
                        .backward_stage(m, StageInput::Hidden(inp), sa, &g, false, true)?
                        .ok_or_else(|| Error::input("meta suffix gave no input gradient"))?;
                }
                for (gv, hv) in g.iter_mut().zip(&acts.d_hidden) {
                    *gv += scale * hv;
                }
                let inp = if i == 0 {
                    StageInput::Batch(batch)
                } else {
                    StageInput::Hidden(&acts.pre)
                };
                self.student
                    .backward_stage(i, inp, &acts.student[0], &g, true, false)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::gradcheck::check_grad_steps;
    use crate::m2mkd::net::tests::{batch, cfg, image_task, lm_task};
    use crate::m2mkd::net::StageCfg;
    use modula_core::rng::SplitMix64;

    fn jiggle(net: &mut Net, seed: u64) {
        let mut r = SplitMix64(seed);
        for v in net.params.values.iter_mut() {
            *v += 0.2 * (2.0 * r.next_f32() - 1.0);
        }
    }

    /// The student module's gradients in slot `i` of a 3-module meta model, through the
    /// frozen suffix, with the given loss, against finite differences of the job loss.
    fn check_hybrid(name: &str, task: crate::tasks::TaskShape, i: usize, loss: LossCfg) {
        let of = 3;
        let meta_cfgs: Vec<StageCfg> = (0..of).map(|m| cfg(m, of, 4, 4, 1, 0)).collect();
        let mut meta = Net::new(task, &meta_cfgs, 1).unwrap();
        jiggle(&mut meta, 2);
        let mut teacher = Net::new(task, &[cfg(i, of, 4, 4, 2, 0)], 3).unwrap();
        jiggle(&mut teacher, 4);
        // student: width 6 with stitches to the meta width 4, one MoE block
        let mut student = Net::new(task, &[cfg(i, of, 6, 4, 1, 1)], 5).unwrap();
        jiggle(&mut student, 6);
        let mut job = Job {
            student,
            meta: Some(meta),
            teacher: Teacher::Module(teacher),
            loss,
            eval: false,
        };
        let bt = batch(task, 3, 8);
        let (_, acts, dl) = job.forward_batch(&bt).unwrap();
        if loss.alpha > 0.0 {
            assert!(acts.teacher_loss > 0.0, "{name}: no teacher term");
            assert!((Job::aux_loss(&acts) - 0.5 * acts.teacher_loss).abs() < 1e-12);
        }
        // one MoE block: its load balance and routing entropy, both in [0, 1]
        let u = job.usage(&acts);
        assert_eq!(u.len(), 1, "{name}");
        for (b, s) in u {
            assert!((0.0..=1.0 + 1e-6).contains(&b) && (0.0..=1.0 + 1e-6).contains(&s));
        }
        job.student.forced = acts.student[0]
            .selections()
            .into_iter()
            .map(|(j, s)| ((i, j), s))
            .collect();
        job.student.params.zero_grads();
        job.backward_batch(&bt, &acts, &dl, 1.0).unwrap();
        let grads = job.student.params.grads.clone();
        let mut values = job.student.params.values.clone();
        let probe = job.clone();
        let f = |v: &[f32]| {
            let mut j = probe.clone();
            j.student.params.values.copy_from_slice(v);
            j.forward_batch(&bt).unwrap().0
        };
        check_grad_steps(
            name,
            &mut values,
            &grads,
            f,
            &[1e-2, 1e-3, 3e-4],
            1e-2,
            1e-2,
        )
        .unwrap();
    }

    #[test]
    fn hybrid_gradients_reach_the_module_through_the_frozen_suffix() {
        let kd = LossCfg {
            alpha: 0.5,
            tau: 2.0,
            norm: KlNorm::PerRow,
            smoothing: 0.1,
            hidden_mse: false,
        };
        check_hybrid("kd slot 1", image_task(), 1, kd);
        check_hybrid("kd slot 0", image_task(), 0, kd);
        check_hybrid("kd slot 2", image_task(), 2, kd);
        let mse = LossCfg {
            hidden_mse: true,
            ..kd
        };
        // the MSE variant compares module outputs: the student's width inside differs,
        // its post-stitch maps back to the meta width
        check_hybrid("mse slot 1", image_task(), 1, mse);
        check_hybrid("kd lm", lm_task(), 1, kd);
    }

    #[test]
    fn frozen_parts_do_not_change_and_bad_jobs_are_refused() {
        let task = image_task();
        let meta_cfgs: Vec<StageCfg> = (0..2).map(|m| cfg(m, 2, 4, 4, 1, 0)).collect();
        let meta = Net::new(task, &meta_cfgs, 1).unwrap();
        let module = Net::new(task, &[cfg(1, 2, 4, 4, 1, 0)], 2).unwrap();
        let mut job = Job {
            student: module.clone(),
            meta: Some(meta.clone()),
            teacher: Teacher::None,
            loss: LossCfg {
                alpha: 0.5,
                ..LossCfg::default()
            },
            eval: false,
        };
        let bt = batch(task, 2, 1);
        assert!(job.forward_batch(&bt).is_err()); // α > 0 without a teacher
        job.loss.alpha = 0.0;
        let (_, acts, dl) = job.forward_batch(&bt).unwrap();
        job.backward_batch(&bt, &acts, &dl, 1.0).unwrap();
        assert!(job.student.params.grads.iter().any(|&g| g != 0.0));
        let m = job.meta.as_ref().unwrap();
        assert!(m.params.grads.iter().all(|&g| g == 0.0));
        assert_eq!(m.params.values, meta.params.values);
        // a whole teacher in a hybrid, a module teacher end to end, a module of another
        // network size
        job.teacher = Teacher::Full(meta.clone());
        job.loss.alpha = 0.5;
        assert!(job.forward_batch(&bt).is_err());
        let mut e2e = Job::end_to_end(meta.clone(), LossCfg::default());
        e2e.teacher = Teacher::Module(module);
        e2e.loss.alpha = 0.5;
        assert!(e2e.forward_batch(&bt).is_err());
        let other = Net::new(task, &[cfg(1, 3, 4, 4, 1, 0)], 2).unwrap();
        let j3 = Job {
            student: other,
            meta: Some(meta),
            teacher: Teacher::None,
            loss: LossCfg::default(),
            eval: false,
        };
        assert!(j3.forward_batch(&bt).is_err());
    }
}
