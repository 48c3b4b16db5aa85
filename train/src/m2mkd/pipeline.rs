//! The whole m2mKD procedure (spec section 1) and the baselines it is compared with,
//! as resumable phases over a working directory:
//!
//! | phase | output | what |
//! |---|---|---|
//! | PT | `meta.gguf` | meta model: one block per module, teacher width, end to end |
//! | MT | `teacher.mt.{i}.gguf` | teacher module i incubated inside the frozen meta model (CE) |
//! | FT | `teacher.gguf` | teacher modules assembled and fine-tuned end to end |
//! | K | `{variant}.s{seed}.k{i}.gguf` | student module i trained in its hybrid |
//! | A | `{variant}.s{seed}.gguf` | student modules assembled (stitches dropped), fine-tuned |
//!
//! A phase whose file exists is loaded, not re-run, so an interrupted run continues from
//! the last finished phase (and, in K and MT, the last finished module); files are written
//! atomically. The module jobs of MT and K are independent and run in parallel (one task
//! per module on the kernel pool; kernels inside a task run on its thread). Results are
//! appended to `results.jsonl` (one line per variant and seed, skipped when present) and
//! the teacher side's health checks to `teacher.json`.
//!
//! Students are paired by seed: every variant of seed s starts from the same initial
//! student (the K-phase modules copy their blocks from it; stitches are fresh) and sees
//! the same batches in phase A.

use super::job::{Job, LossCfg, Teacher};
use super::loss::KlNorm;
use super::net::{Net, StageCfg};
use crate::optim::AdamW;
use crate::tasks::{Dataset, TaskShape};
use crate::trainer::{eval_model, train_from, TrainConfig, TrainState};
use modula_core::kernels::par;
use modula_core::Error;
use std::path::{Path, PathBuf};

/// The shape of one kind of network (meta, teacher or student).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arch {
    /// Width.
    pub d: usize,
    /// Attention heads.
    pub heads: usize,
    /// FFN hidden width (per expert).
    pub ffn: usize,
    /// Blocks per module.
    pub blocks: usize,
    /// Every `moe_every`-th block of the whole network is a mixture of experts (counting
    /// from 1: 1 = every block, 2 = blocks 2, 4, …; 0 = dense).
    pub moe_every: usize,
    /// Experts per MoE block.
    pub experts: usize,
    /// Experts per token.
    pub top_k: usize,
}

/// Training steps of each phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Steps {
    /// PT.
    pub meta: u64,
    /// MT, per module.
    pub incubate: u64,
    /// FT.
    pub teacher_ft: u64,
    /// K, per module.
    pub distill: u64,
    /// A (and the from-scratch baseline; twice this for `scratch2x`).
    pub finetune: u64,
}

/// Everything the procedure needs besides the data.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PipelineCfg {
    /// Modules L.
    pub modules: usize,
    /// Meta model (one block per module; teacher width).
    pub meta: Arch,
    /// Teacher.
    pub teacher: Arch,
    /// Student.
    pub student: Arch,
    /// Steps per phase.
    pub steps: Steps,
    /// Examples per step.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f32,
    /// Final learning rate.
    pub min_lr: f32,
    /// Warm-up as a fraction of each phase's steps.
    pub warmup: f32,
    /// AdamW weight decay.
    pub weight_decay: f32,
    /// Gradient clipping.
    pub clip: f64,
    /// Label smoothing.
    pub smoothing: f32,
    /// m2mKD's teacher weight α.
    pub alpha: f32,
    /// KL temperature.
    pub tau: f32,
    /// KL normalisation of the `m2mkd` variant (`m2mkd-row` always uses rows).
    pub norm: KlNorm,
    /// Seed of the teacher side (meta, MT, FT).
    pub teacher_seed: u64,
    /// The K phase's teacher modules: the incubated ones (MT, still fitted to the meta
    /// model's interface) instead of those split from the fine-tuned teacher (FT, the
    /// released code's choice; spec pitfall 1).
    pub teacher_from_mt: bool,
    /// Validation batches per evaluation (the whole finite test set when large enough).
    pub eval_batches: usize,
}

impl PipelineCfg {
    /// The spec's mini-reproduction shape (section 5.1) on 16-token images: 4 modules, a
    /// meta model of 4 blocks × 48, a teacher of 4 × 2 blocks × 48, a V-MoE-style student
    /// of 4 × 1 MoE block × 24 (4 experts, top-2, expert hidden 48).
    pub fn small() -> Self {
        PipelineCfg {
            modules: 4,
            meta: Arch {
                d: 48,
                heads: 4,
                ffn: 96,
                blocks: 1,
                moe_every: 0,
                experts: 0,
                top_k: 0,
            },
            teacher: Arch {
                d: 48,
                heads: 4,
                ffn: 96,
                blocks: 2,
                moe_every: 0,
                experts: 0,
                top_k: 0,
            },
            student: Arch {
                d: 24,
                heads: 4,
                ffn: 48,
                blocks: 1,
                moe_every: 1,
                experts: 4,
                top_k: 2,
            },
            steps: Steps {
                meta: 1500,
                incubate: 600,
                teacher_ft: 800,
                distill: 300,
                finetune: 600,
            },
            batch: 50,
            lr: 3e-3,
            min_lr: 3e-4,
            warmup: 0.05,
            weight_decay: 0.05,
            clip: 1.0,
            smoothing: 0.1,
            alpha: 0.5,
            tau: 1.0,
            norm: KlNorm::PerLogit,
            teacher_seed: 1,
            teacher_from_mt: false,
            eval_batches: 200,
        }
    }
}

/// A student variant (spec section 5.1's list).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// End to end from scratch, phase-A steps.
    Scratch,
    /// End to end from scratch, twice the phase-A steps.
    Scratch2x,
    /// End to end with plain logit distillation from the whole teacher (α, τ, per-row KL).
    LogitKd,
    /// K phase with α = 0 (CE through the meta model only: incubation), then A.
    Incubation,
    /// m2mKD: K phase with α and the configured KL normalisation, then A.
    M2m,
    /// m2mKD with per-row (batch-mean) KL.
    M2mRow,
    /// m2mKD with the hidden-state MSE between module outputs instead of the KL.
    HiddenMse,
}

impl Variant {
    /// Every variant.
    pub const ALL: [Variant; 7] = [
        Variant::Scratch,
        Variant::Scratch2x,
        Variant::LogitKd,
        Variant::Incubation,
        Variant::M2m,
        Variant::M2mRow,
        Variant::HiddenMse,
    ];

    /// Name on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Scratch => "scratch",
            Variant::Scratch2x => "scratch2x",
            Variant::LogitKd => "logitkd",
            Variant::Incubation => "incubation",
            Variant::M2m => "m2mkd",
            Variant::M2mRow => "m2mkd-row",
            Variant::HiddenMse => "m2mkd-mse",
        }
    }

    /// Parse [`Variant::name`].
    pub fn parse(s: &str) -> Result<Self, Error> {
        Self::ALL
            .iter()
            .copied()
            .find(|v| v.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|v| v.name()).collect();
                Error::input(format!("unknown variant '{s}' ({})", names.join(" | ")))
            })
    }

    /// Whether the variant has a K phase.
    pub fn modular(self) -> bool {
        matches!(
            self,
            Variant::Incubation | Variant::M2m | Variant::M2mRow | Variant::HiddenMse
        )
    }
}

/// The outcome of one student.
#[derive(Clone, Debug, PartialEq)]
pub struct StudentResult {
    /// Variant.
    pub variant: Variant,
    /// Seed.
    pub seed: u64,
    /// Test accuracy.
    pub iid: f64,
    /// Shifted-test accuracy (None without a shifted set).
    pub ood: Option<f64>,
    /// Accuracy of the assembled student before phase A (modular variants).
    pub before: Option<f64>,
    /// Accuracy of each student hybrid after K (modular variants).
    pub hybrids: Vec<f64>,
    /// Test loss.
    pub loss: f64,
}

impl StudentResult {
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "variant": self.variant.name(), "seed": self.seed, "iid": self.iid,
            "ood": self.ood, "before": self.before, "hybrids": self.hybrids, "loss": self.loss,
        })
    }

    fn from_json(v: &serde_json::Value) -> Option<Self> {
        Some(StudentResult {
            variant: Variant::parse(v.get("variant")?.as_str()?).ok()?,
            seed: v.get("seed")?.as_u64()?,
            iid: v.get("iid")?.as_f64()?,
            ood: v.get("ood").and_then(serde_json::Value::as_f64),
            before: v.get("before").and_then(serde_json::Value::as_f64),
            hybrids: v
                .get("hybrids")?
                .as_array()?
                .iter()
                .filter_map(serde_json::Value::as_f64)
                .collect(),
            loss: v.get("loss")?.as_f64()?,
        })
    }
}

/// The procedure over one data set and working directory.
pub struct Pipeline<'a> {
    /// Settings.
    pub cfg: PipelineCfg,
    /// Training data (its validation split is the in-distribution test set).
    pub data: &'a dyn Dataset,
    /// Shifted test set (its validation split), if any.
    pub shifted: Option<&'a dyn Dataset>,
    /// Working directory.
    pub dir: PathBuf,
    /// Progress lines.
    pub log: &'a (dyn Fn(&str) + Sync),
    /// A trained dense teacher to start from (split into modules by
    /// [`Net::from_dense`]): MT incubates its modules instead of random ones. `None`: the
    /// teacher is built by Deep Incubation from scratch (the released code's way).
    pub teacher_init: Option<&'a Net>,
}

/// A data set cut to a fixed sequence length (text takes any length; an m2mKD network has
/// a position table of one length).
pub struct FixedSeq<'a> {
    /// The data.
    pub inner: &'a dyn Dataset,
    /// Positions per sequence.
    pub seq: usize,
}

impl std::fmt::Debug for FixedSeq<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FixedSeq({}, {})", self.inner.describe(), self.seq)
    }
}

impl Dataset for FixedSeq<'_> {
    fn describe(&self) -> String {
        format!("{} in sequences of {}", self.inner.describe(), self.seq)
    }
    fn shape(&self) -> TaskShape {
        TaskShape {
            seq: Some(self.seq),
            ..self.inner.shape()
        }
    }
    fn batch(
        &self,
        split: crate::data::Split,
        b: usize,
        t: usize,
        rng: &mut modula_core::rng::SplitMix64,
    ) -> Result<crate::tasks::Batch, crate::data::DataError> {
        self.inner.batch(split, b, t, rng)
    }
    fn eval_batches(
        &self,
        b: usize,
        t: usize,
        max_batches: usize,
        seed: u64,
    ) -> Result<Vec<crate::tasks::Batch>, crate::data::DataError> {
        self.inner.eval_batches(b, t, max_batches, seed)
    }
}

impl std::fmt::Debug for Pipeline<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("cfg", &self.cfg)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn file_err(p: &Path, e: impl std::fmt::Display) -> Error {
    Error::io(format!("{}: {e}", p.display()))
}

impl Pipeline<'_> {
    fn task(&self) -> Result<TaskShape, Error> {
        let t = self.data.shape();
        match t.seq {
            Some(s) if s > 0 => Ok(t),
            _ => Err(Error::input(
                "m2mKD needs a data set with a fixed sequence length",
            )),
        }
    }

    fn check(&self) -> Result<(), Error> {
        let c = &self.cfg;
        if c.modules == 0 || c.modules > 16 {
            return Err(Error::input(format!("{} modules (1..=16)", c.modules)));
        }
        if c.meta.d != c.teacher.d {
            return Err(Error::input(format!(
                "the meta model's width {} must equal the teacher's {} (teacher modules plug into it)",
                c.meta.d, c.teacher.d
            )));
        }
        if c.meta.blocks != 1 {
            return Err(Error::input("the meta model has one block per module"));
        }
        if c.batch == 0 {
            return Err(Error::input("batch must be at least 1"));
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| file_err(&self.dir, e))?;
        // the phase files of a directory belong to one setting: refuse to mix
        let init = self.teacher_init.map_or("none".into(), |n| {
            let sum: f64 = n.params.values.iter().map(|&v| f64::from(v)).sum();
            format!("{} parameters, sum {sum:.6e}", n.params.values.len())
        });
        let want = format!(
            "{:#?}\ndata: {}\nshifted: {}\nteacher init: {init}\n",
            self.cfg,
            self.data.describe(),
            self.shifted.map_or("none".into(), |d| d.describe())
        );
        let p = self.dir.join("settings.txt");
        match std::fs::read_to_string(&p) {
            Ok(have) if have == want => Ok(()),
            Ok(_) => Err(Error::input(format!(
                "{} holds a run with other settings (see {}); use another directory",
                self.dir.display(),
                p.display()
            ))),
            Err(_) => modula_core::io::atomic_write(&p, |w| w.write_all(want.as_bytes()))
                .map_err(|e| file_err(&p, e)),
        }
    }

    /// Module `i`'s configuration for `arch` inside a network whose hidden stream between
    /// modules has width `io` (stitches when it differs from `arch.d`).
    fn module_cfg(&self, arch: Arch, i: usize, io: usize) -> StageCfg {
        let l = self.cfg.modules;
        let mut moe = 0u64;
        if arch.moe_every > 0 {
            for j in 0..arch.blocks.min(64) {
                let global = i * arch.blocks + j + 1;
                if global.is_multiple_of(arch.moe_every) {
                    moe |= 1 << j;
                }
            }
        }
        StageCfg {
            index: i,
            of: l,
            d: arch.d,
            heads: arch.heads,
            ffn: arch.ffn,
            blocks: arch.blocks,
            moe,
            experts: arch.experts,
            top_k: arch.top_k,
            in_width: io,
            out_width: io,
        }
    }

    fn whole(&self, arch: Arch, seed: u64) -> Result<Net, Error> {
        let cfgs: Vec<StageCfg> = (0..self.cfg.modules)
            .map(|i| self.module_cfg(arch, i, arch.d))
            .collect();
        Net::new(self.task()?, &cfgs, seed)
    }

    fn train_cfg(&self, steps: u64, seed: u64) -> TrainConfig {
        let c = &self.cfg;
        TrainConfig {
            steps,
            batch: c.batch,
            accum: 1,
            seq: self.data.shape().seq.unwrap_or(1),
            lr: c.lr,
            min_lr: c.min_lr,
            warmup: (steps as f32 * c.warmup) as u64,
            clip: c.clip,
            opt: AdamW {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: c.weight_decay,
            },
            seed,
            sorted: crate::trainer::Sorted::Off,
            sorted_distill: None,
        }
    }

    fn loss(&self, alpha: f32) -> LossCfg {
        LossCfg {
            alpha,
            tau: self.cfg.tau,
            norm: self.cfg.norm,
            smoothing: self.cfg.smoothing,
            hidden_mse: false,
        }
    }

    fn run_job(&self, job: &mut Job, steps: u64, seed: u64, what: &str) -> Result<(), Error> {
        let tc = self.train_cfg(steps, seed);
        let mut state = TrainState::new(seed);
        let every = (steps / 4).max(1);
        let t0 = std::time::Instant::now();
        train_from(job, self.data, &tc, &mut state, steps, |s| {
            if s.step % every == 0 || s.step == steps {
                let teacher = if s.aux > 0.0 {
                    format!(" (teacher term {:.4})", s.aux)
                } else {
                    String::new()
                };
                let usage = if s.usage.is_empty() {
                    String::new()
                } else {
                    let b: Vec<String> = s.usage.iter().map(|u| format!("{:.2}", u.0)).collect();
                    format!(" expert balance {}", b.join("/"))
                };
                (self.log)(&format!(
                    "  {what}: step {}/{steps} loss {:.4}{teacher}{usage} lr {:.2e}",
                    s.step, s.loss, s.lr
                ));
            }
        })
        .map_err(|e| Error::input(format!("{what}: {e}")))?;
        let secs = t0.elapsed().as_secs_f64();
        (self.log)(&format!(
            "  {what}: {steps} steps in {secs:.1} s ({:.1} ms/step)",
            1e3 * secs / steps.max(1) as f64
        ));
        Ok(())
    }

    fn eval_on(&self, job: &Job, data: &dyn Dataset) -> Result<(f64, f64), Error> {
        let mut j = job.clone();
        j.eval = true;
        j.teacher = Teacher::None;
        let seq = data.shape().seq.unwrap_or(1);
        let r = eval_model(&j, data, self.cfg.eval_batches, self.cfg.batch, seq, 7)?;
        Ok((r.accuracy, r.loss))
    }

    fn load_or(&self, name: &str, make: impl FnOnce() -> Result<Net, Error>) -> Result<Net, Error> {
        let p = self.dir.join(name);
        if p.exists() {
            return Net::read_gguf(&p);
        }
        let net = make()?;
        net.write_gguf(&p).map_err(|e| file_err(&p, e))?;
        Ok(net)
    }

    /// PT: the meta model.
    pub fn meta(&self) -> Result<Net, Error> {
        self.check()?;
        self.load_or("meta.gguf", || {
            (self.log)("PT: meta model");
            let net = self.whole(self.cfg.meta, self.cfg.teacher_seed ^ 0x3e7a)?;
            let mut job = Job::end_to_end(net, self.loss(0.0));
            self.run_job(&mut job, self.cfg.steps.meta, self.cfg.teacher_seed, "meta")?;
            Ok(job.student)
        })
    }

    fn hybrid(&self, meta: &Net, module: Net, teacher: Teacher, loss: LossCfg) -> Job {
        Job {
            student: module,
            meta: Some(meta.clone()),
            teacher,
            loss,
            eval: false,
        }
    }

    /// MT: the teacher modules incubated in the meta model (in parallel).
    pub fn incubated(&self, meta: &Net) -> Result<Vec<Net>, Error> {
        let c = self.cfg;
        let init = match self.teacher_init {
            Some(t) => {
                let want = self.whole(c.teacher, 0)?;
                if t.task != want.task || t.params.specs() != want.params.specs() {
                    return Err(Error::input(format!(
                        "the dense teacher does not have the teacher's shape ({} modules x {} blocks, width {}, FFN {})",
                        c.modules, c.teacher.blocks, c.teacher.d, c.teacher.ffn
                    )));
                }
                t.clone()
            }
            None => self.whole(c.teacher, c.teacher_seed ^ 0x7eac)?,
        };
        par::map_indexed(c.modules, |i| {
            self.load_or(&format!("teacher.mt.{i}.gguf"), || {
                (self.log)(&format!("MT: teacher module {i}"));
                let mut m = Net::new(
                    self.task()?,
                    &[self.module_cfg(c.teacher, i, c.teacher.d)],
                    0,
                )?;
                m.load_from(&init, true)?;
                let mut job = self.hybrid(meta, m, Teacher::None, self.loss(0.0));
                let seed = c.teacher_seed.wrapping_add(100 + i as u64);
                self.run_job(&mut job, c.steps.incubate, seed, &format!("MT {i}"))?;
                Ok(job.student)
            })
        })
        .into_iter()
        .collect()
    }

    /// FT: the teacher (incubated modules assembled and fine-tuned), with the teacher
    /// side's health checks written to `teacher.json`.
    pub fn teacher(&self) -> Result<Net, Error> {
        let meta = self.meta()?;
        let p = self.dir.join("teacher.gguf");
        if p.exists() {
            return Net::read_gguf(&p);
        }
        let mt = self.incubated(&meta)?;
        let c = self.cfg;
        let mut t = self.whole(c.teacher, 0)?;
        for m in &mt {
            m.load_from_check(&mut t)?;
        }
        let eval_net = |n: &Net| -> Result<(f64, Option<f64>), Error> {
            let j = Job::end_to_end(n.clone(), self.loss(0.0));
            self.measure(&j).map(|(iid, _, ood)| (iid, ood))
        };
        let hybrids = |mods: &[Net]| -> Result<Vec<f64>, Error> {
            mods.iter()
                .map(|m| {
                    let j = self.hybrid(&meta, m.clone(), Teacher::None, self.loss(0.0));
                    self.eval_on(&j, self.data).map(|r| r.0)
                })
                .collect()
        };
        let meta_acc = eval_net(&meta)?;
        let mt_h = hybrids(&mt)?;
        let before = eval_net(&t)?;
        (self.log)("FT: teacher");
        let mut job = Job::end_to_end(t, self.loss(0.0));
        let seed = c.teacher_seed.wrapping_add(200);
        self.run_job(&mut job, c.steps.teacher_ft, seed, "teacher FT")?;
        let t = job.student;
        let after = eval_net(&t)?;
        let ft_mods: Vec<Net> = (0..c.modules)
            .map(|i| self.split(&t, c.teacher, i))
            .collect::<Result<_, _>>()?;
        let ft_h = hybrids(&ft_mods)?;
        let report = serde_json::json!({
            "meta": {"iid": meta_acc.0, "ood": meta_acc.1},
            "teacher_hybrids_mt": mt_h,
            "teacher_assembled_before_ft": {"iid": before.0, "ood": before.1},
            "teacher": {"iid": after.0, "ood": after.1},
            "teacher_hybrids_ft": ft_h,
        });
        (self.log)(&format!("teacher side: {report}"));
        let rp = self.dir.join("teacher.json");
        modula_core::io::atomic_write(&rp, |w| writeln!(w, "{report:#}"))
            .map_err(|e| file_err(&rp, e))?;
        t.write_gguf(&p).map_err(|e| file_err(&p, e))?;
        Ok(t)
    }

    /// Module `i` of a whole network of shape `arch`, as its own network.
    fn split(&self, whole: &Net, arch: Arch, i: usize) -> Result<Net, Error> {
        let mut m = Net::new(self.task()?, &[self.module_cfg(arch, i, arch.d)], 0)?;
        m.load_from(whole, false)?;
        Ok(m)
    }

    /// Test accuracy, test loss and shifted-test accuracy of a whole network (e.g. a
    /// student or teacher file); checks that it fits the data.
    pub fn evaluate(&self, net: &Net) -> Result<(f64, f64, Option<f64>), Error> {
        let t = self.task()?;
        if net.task != t {
            return Err(Error::input(format!(
                "the network was built for {:?}, the data is {:?}",
                net.task, t
            )));
        }
        if net.first_module() != 0 || net.stages.len() != net.stages[0].cfg.of {
            return Err(Error::input(
                "not a whole network (a single module needs its meta model)",
            ));
        }
        self.measure(&Job::end_to_end(net.clone(), self.loss(0.0)))
    }

    /// Test accuracy, test loss and shifted-test accuracy of a job's network.
    fn measure(&self, job: &Job) -> Result<(f64, f64, Option<f64>), Error> {
        let (iid, loss) = self.eval_on(job, self.data)?;
        let ood = match self.shifted {
            Some(s) => Some(self.eval_on(job, s)?.0),
            None => None,
        };
        Ok((iid, loss, ood))
    }

    fn results_path(&self) -> PathBuf {
        self.dir.join("results.jsonl")
    }

    /// Results recorded so far.
    pub fn results(&self) -> Result<Vec<StudentResult>, Error> {
        let p = self.results_path();
        if !p.exists() {
            return Ok(Vec::new());
        }
        let text = std::fs::read_to_string(&p).map_err(|e| file_err(&p, e))?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| StudentResult::from_json(&v))
                    .ok_or_else(|| file_err(&p, format!("unreadable line '{l}'")))
            })
            .collect()
    }

    /// The initial student of `seed` (every variant of the seed starts from it).
    fn init(&self, seed: u64) -> Result<Net, Error> {
        self.whole(
            self.cfg.student,
            seed.wrapping_mul(0x9e37_79b9).wrapping_add(17),
        )
    }

    /// K: every student module of a modular variant trained in its hybrid (in parallel),
    /// or loaded from its file.
    pub fn distill(&self, v: Variant, seed: u64) -> Result<Vec<Net>, Error> {
        self.check()?;
        let meta = self.meta()?;
        self.distill_with(v, seed, &meta, &self.init(seed)?)
    }

    /// [`Pipeline::distill`] with the meta model and the seed's initial student at hand.
    fn distill_with(
        &self,
        v: Variant,
        seed: u64,
        meta: &Net,
        init: &Net,
    ) -> Result<Vec<Net>, Error> {
        if !v.modular() {
            return Err(Error::input(format!(
                "variant '{}' has no K phase",
                v.name()
            )));
        }
        let c = self.cfg;
        let teacher: Option<Vec<Net>> = match v {
            Variant::Incubation => None,
            _ if c.teacher_from_mt => Some(self.incubated(meta)?),
            _ => {
                let t = self.teacher()?;
                Some(
                    (0..c.modules)
                        .map(|i| self.split(&t, c.teacher, i))
                        .collect::<Result<_, _>>()?,
                )
            }
        };
        let loss = match v {
            Variant::Incubation => self.loss(0.0),
            Variant::M2m => self.loss(c.alpha),
            Variant::M2mRow => LossCfg {
                norm: KlNorm::PerRow,
                ..self.loss(c.alpha)
            },
            // the MSE compares the stitched student module's output with the teacher
            // module's: both have the meta width (logits for the last module)
            _ => LossCfg {
                hidden_mse: true,
                ..self.loss(c.alpha)
            },
        };
        let tag = format!("{}.s{seed}", v.name());
        par::map_indexed(c.modules, |i| {
            self.load_or(&format!("{tag}.k{i}.gguf"), || {
                (self.log)(&format!("K ({}): student module {i}", v.name()));
                let mut m = Net::new(
                    self.task()?,
                    &[self.module_cfg(c.student, i, c.meta.d)],
                    seed ^ 0x5717 ^ i as u64,
                )?;
                m.load_from(init, true)?;
                let tm = match &teacher {
                    Some(t) => Teacher::Module(t[i].clone()),
                    None => Teacher::None,
                };
                let mut job = self.hybrid(meta, m, tm, loss);
                let s = seed.wrapping_mul(31).wrapping_add(300 + i as u64);
                self.run_job(&mut job, c.steps.distill, s, &format!("K {i}"))?;
                Ok(job.student)
            })
        })
        .into_iter()
        .collect()
    }

    /// Train (or load the result of) one student variant for one seed.
    pub fn student(&self, variant: Variant, seed: u64) -> Result<StudentResult, Error> {
        self.check()?;
        if let Some(r) = self
            .results()?
            .into_iter()
            .find(|r| r.variant == variant && r.seed == seed)
        {
            return Ok(r);
        }
        let c = self.cfg;
        let init = self.init(seed)?;
        let a_seed = seed.wrapping_add(1000);
        let tag = format!("{}.s{seed}", variant.name());
        let mut before = None;
        let mut hybrids = Vec::new();
        let mut job = match variant {
            Variant::Scratch | Variant::Scratch2x => Job::end_to_end(init, self.loss(0.0)),
            Variant::LogitKd => {
                let t = self.teacher()?;
                let mut j = Job::end_to_end(init, self.loss(c.alpha));
                j.loss.norm = KlNorm::PerRow;
                j.teacher = Teacher::Full(t);
                j
            }
            v => {
                let meta = self.meta()?;
                let mods = self.distill_with(v, seed, &meta, &init)?;
                for m in &mods {
                    let j = self.hybrid(&meta, m.clone(), Teacher::None, self.loss(0.0));
                    hybrids.push(self.eval_on(&j, self.data)?.0);
                }
                let mut s = init;
                for m in &mods {
                    m.load_from_check(&mut s)?;
                }
                let j = Job::end_to_end(s, self.loss(0.0));
                before = Some(self.eval_on(&j, self.data)?.0);
                j
            }
        };
        let steps = if variant == Variant::Scratch2x {
            2 * c.steps.finetune
        } else {
            c.steps.finetune
        };
        let out = self.dir.join(format!("{tag}.gguf"));
        if out.exists() {
            job.student = Net::read_gguf(&out)?;
        } else {
            (self.log)(&format!(
                "A ({}): seed {seed}, {steps} steps",
                variant.name()
            ));
            self.run_job(&mut job, steps, a_seed, &format!("A {}", variant.name()))?;
            job.student
                .write_gguf(&out)
                .map_err(|e| file_err(&out, e))?;
        }
        let (iid, loss, ood) = self.measure(&job)?;
        let r = StudentResult {
            variant,
            seed,
            iid,
            ood,
            before,
            hybrids,
            loss,
        };
        let p = self.results_path();
        let mut lines = std::fs::read_to_string(&p).unwrap_or_default();
        lines.push_str(&r.to_json().to_string());
        lines.push('\n');
        modula_core::io::atomic_write(&p, |w| w.write_all(lines.as_bytes()))
            .map_err(|e| file_err(&p, e))?;
        Ok(r)
    }
}

impl Net {
    /// Assembly: copy this module's tensors into the whole network `dst` (stitches are
    /// the only tensors allowed to be left behind; every block tensor must land).
    pub fn load_from_check(&self, dst: &mut Net) -> Result<(), Error> {
        let dropped = dst.load_from(self, true)?;
        if let Some(n) = dropped.iter().find(|n| !n.contains(".stitch_")) {
            return Err(Error::input(format!(
                "assembly: tensor '{n}' of the module has no place in the network"
            )));
        }
        Ok(())
    }
}

/// Mean, sample standard deviation and median.
pub fn summary(v: &[f64]) -> (f64, f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let sd = if v.len() > 1 {
        (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let med = if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    (mean, sd, med)
}

/// A Markdown table of `results`: per variant mean ± sd (median) of IID and OOD
/// accuracy, and the paired difference to `scratch` (mean, wins) over the seeds both
/// have.
pub fn table(results: &[StudentResult]) -> String {
    let mut out = String::from(
        "| variant | seeds | IID % mean ± sd (median) | OOD % mean ± sd | paired ΔIID vs scratch (wins) | paired ΔOOD | before A % | student hybrids % |\n|---|---|---|---|---|---|---|---|\n",
    );
    let base: Vec<&StudentResult> = results
        .iter()
        .filter(|r| r.variant == Variant::Scratch)
        .collect();
    for v in Variant::ALL {
        let rs: Vec<&StudentResult> = results.iter().filter(|r| r.variant == v).collect();
        if rs.is_empty() {
            continue;
        }
        let iid: Vec<f64> = rs.iter().map(|r| 100.0 * r.iid).collect();
        let ood: Vec<f64> = rs.iter().filter_map(|r| r.ood).map(|x| 100.0 * x).collect();
        let (m, s, med) = summary(&iid);
        let (om, os, _) = summary(&ood);
        let mut d_iid = Vec::new();
        let mut d_ood = Vec::new();
        for r in &rs {
            if let Some(b) = base.iter().find(|b| b.seed == r.seed) {
                d_iid.push(100.0 * (r.iid - b.iid));
                if let (Some(a), Some(c)) = (r.ood, b.ood) {
                    d_ood.push(100.0 * (a - c));
                }
            }
        }
        let paired = if v == Variant::Scratch || d_iid.is_empty() {
            "—".to_string()
        } else {
            let wins = d_iid.iter().filter(|&&x| x > 0.0).count();
            format!("{:+.1} ({wins}/{})", summary(&d_iid).0, d_iid.len())
        };
        let paired_ood = if v == Variant::Scratch || d_ood.is_empty() {
            "—".to_string()
        } else {
            format!("{:+.1}", summary(&d_ood).0)
        };
        let before: Vec<f64> = rs
            .iter()
            .filter_map(|r| r.before)
            .map(|x| 100.0 * x)
            .collect();
        let before = if before.is_empty() {
            "—".into()
        } else {
            format!("{:.1}", summary(&before).0)
        };
        let nh = rs.iter().map(|r| r.hybrids.len()).max().unwrap_or(0);
        let hyb = if nh == 0 {
            "—".into()
        } else {
            (0..nh)
                .map(|i| {
                    let v: Vec<f64> = rs
                        .iter()
                        .filter_map(|r| r.hybrids.get(i))
                        .map(|x| 100.0 * x)
                        .collect();
                    format!("{:.0}", summary(&v).0)
                })
                .collect::<Vec<_>>()
                .join(" / ")
        };
        let ood_s = if ood.is_empty() {
            "—".into()
        } else {
            format!("{om:.1} ± {os:.1}")
        };
        out.push_str(&format!(
            "| {} | {} | {m:.1} ± {s:.1} ({med:.1}) | {ood_s} | {paired} | {paired_ood} | {before} | {hyb} |\n",
            v.name(),
            rs.len()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::tasks::FashionMnist;

    fn data() -> FashionMnist {
        FashionMnist::generated(300, 100, 1, 2).unwrap()
    }

    fn tiny() -> PipelineCfg {
        let arch = |d, blocks, moe_every, experts| Arch {
            d,
            heads: 2,
            ffn: 2 * d,
            blocks,
            moe_every,
            experts,
            top_k: 2,
        };
        PipelineCfg {
            modules: 2,
            meta: arch(8, 1, 0, 0),
            teacher: arch(8, 2, 0, 0),
            student: arch(4, 1, 1, 3),
            steps: Steps {
                meta: 60,
                incubate: 30,
                teacher_ft: 40,
                distill: 20,
                finetune: 30,
            },
            batch: 16,
            lr: 1e-2,
            min_lr: 1e-3,
            warmup: 0.1,
            eval_batches: 10,
            ..PipelineCfg::small()
        }
    }

    #[test]
    fn every_phase_runs_resumes_and_reports() {
        let dir = std::env::temp_dir().join(format!("modula-m2m-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let d = data();
        let shifted = d.shifted(3);
        let log = |_: &str| {};
        let p = Pipeline {
            cfg: tiny(),
            data: &d,
            shifted: Some(&shifted),
            dir: dir.clone(),
            log: &log,
            teacher_init: None,
        };
        let mut first = Vec::new();
        for v in Variant::ALL {
            first.push(p.student(v, 1).unwrap());
        }
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("teacher.json")).unwrap())
                .unwrap();
        let teacher = report["teacher"]["iid"].as_f64().unwrap();
        assert!(
            teacher > 0.6,
            "the teacher learns the easy task (chance 0.25): {teacher}"
        );
        assert_eq!(report["teacher_hybrids_mt"].as_array().unwrap().len(), 2);
        for r in &first {
            assert_eq!(r.before.is_some(), r.variant.modular(), "{r:?}");
            assert_eq!(r.hybrids.len(), if r.variant.modular() { 2 } else { 0 });
            assert!(r.ood.is_some());
        }
        for f in [
            "meta.gguf",
            "teacher.mt.0.gguf",
            "teacher.mt.1.gguf",
            "teacher.gguf",
        ] {
            assert!(dir.join(f).exists(), "{f}");
        }
        assert!(dir.join("m2mkd.s1.k1.gguf").exists());
        assert!(dir.join("m2mkd-mse.s1.gguf").exists());
        // a rerun reads the recorded results; without them it reloads every network
        // from its file and measures the same numbers
        assert_eq!(p.student(Variant::M2m, 1).unwrap(), first[4]);
        std::fs::remove_file(dir.join("results.jsonl")).unwrap();
        let again = p.student(Variant::M2m, 1).unwrap();
        assert_eq!(again, first[4]);
        let t = table(&p.results().unwrap());
        assert!(t.contains("| m2mkd | 1 |"), "{t}");
        // a damaged phase file is an error, not a silent retrain
        std::fs::write(dir.join("teacher.gguf"), b"GGUF").unwrap();
        std::fs::remove_file(dir.join("results.jsonl")).unwrap();
        assert!(p.student(Variant::LogitKd, 1).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_settings_are_refused() {
        let d = data();
        let log = |_: &str| {};
        let dir = std::env::temp_dir().join(format!("modula-m2m-bad-{}", std::process::id()));
        let mut cfg = tiny();
        cfg.meta.d = 12;
        let p = Pipeline {
            cfg,
            data: &d,
            shifted: None,
            dir: dir.clone(),
            log: &log,
            teacher_init: None,
        };
        assert!(p.meta().is_err());
        assert!(Variant::parse("m2m").is_err());
        assert_eq!(Variant::parse("m2mkd-row").unwrap(), Variant::M2mRow);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
